"""One streamed completion, one whole completion and one refused request against Switchboard's
router, with the switchboard-client wheel (docs/CLIENTS.md).

    source .devstack/env   # with `make run` going: the API key, CA and router address
    python clients/python/example/complete.py

Prints one JSON object a line. Needs only the wheel's dependencies (grpcio, protobuf,
googleapis-common-protos): the error details are read from ``grpc-status-details-bin``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import cast

import grpc
from google.rpc import error_details_pb2, status_pb2

from switchboard.common.v1 import common_pb2
from switchboard.router.v1 import router_pb2, router_pb2_grpc

CALL_TIMEOUT_SECONDS = 30.0
MODEL = os.environ.get("SWITCHBOARD_MODEL", "switchboard/demo")


def emit(line: dict[str, object]) -> None:
    print(json.dumps(line), flush=True)


def details(error: grpc.RpcError) -> dict[str, object]:
    """The call's google.rpc.Status details: ErrorInfo's reason, BadRequest's violations."""
    found: dict[str, object] = {"reason": "", "domain": "", "violations": []}
    # A failed call's exception is also its grpc.Call: the trailers carry the details.
    trailers = cast(grpc.Call, error).trailing_metadata() or ()
    for key, value in trailers:
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        for detail in status_pb2.Status.FromString(value).details:
            info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
            if detail.Unpack(info):
                found.update(reason=info.reason, domain=info.domain)
            elif detail.Unpack(bad):
                found["violations"] = [
                    {"field": v.field, "description": v.description} for v in bad.field_violations
                ]
    return found


def main() -> int:
    ca = Path(os.environ["SWITCHBOARD_TLS_CA"]).read_bytes()
    metadata = (("authorization", f"Bearer {os.environ['SWITCHBOARD_API_KEY']}"),)
    messages = [common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="Say hello")]
    credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    with grpc.secure_channel(os.environ["SWITCHBOARD_ROUTER_ADDR"], credentials) as channel:
        router = router_pb2_grpc.RouterServiceStub(channel)
        text, generation_id = "", ""
        request = router_pb2.StreamCompletionRequest(model=MODEL, messages=messages, max_tokens=8)
        for event in router.StreamCompletion(
            request, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS
        ):
            if event.HasField("start"):
                generation_id = event.start.generation_id
            elif event.HasField("delta"):
                text += event.delta.text
            elif event.HasField("end"):
                emit(
                    {
                        "call": "StreamCompletion",
                        "generationId": generation_id,
                        "text": text,
                        "completionTokens": event.end.usage.completion_tokens,
                        "costUsd": event.end.cost_usd,
                    }
                )
        whole = router.CreateCompletion(
            router_pb2.CreateCompletionRequest(model=MODEL, messages=messages, max_tokens=8),
            metadata=metadata,
            timeout=CALL_TIMEOUT_SECONDS,
        )
        emit(
            {
                "call": "CreateCompletion",
                "generationId": whole.generation_id,
                "text": whole.text,
                "completionTokens": whole.usage.completion_tokens,
            }
        )
        try:
            router.CreateCompletion(
                router_pb2.CreateCompletionRequest(model=MODEL),
                metadata=metadata,
                timeout=CALL_TIMEOUT_SECONDS,
            )
        except grpc.RpcError as error:
            refused = {"code": error.code().name, **details(error)}
            emit({"call": "CreateCompletion(no messages)", **refused})
            return 0
        emit({"call": "CreateCompletion(no messages)", "unexpected": "it succeeded"})
        return 1


if __name__ == "__main__":
    sys.exit(main())
