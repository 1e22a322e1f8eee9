"""Fuzzing every RPC of every server through the real processes, over mutual TLS.

Each RPC is called with its owner's credentials (so requests get past authorization to the
checks and the handler) with: a valid request (``templates``) with up to three fields anywhere
in it changed, or none; a message drawn whole from its request descriptor
(:mod:`tests.proto_strategies`: strings with NUL and control characters, huge and exotic
unicode, integers at their type's extremes, NaN and infinite doubles, unknown enum numbers,
extreme timestamps, nested messages, oneofs); either one's bytes broken; and random bytes.
String fields named like ids, prices, JSON, URLs, page tokens or scopes are mostly drawn from a
dictionary of real and near-real values, so that requests reach past validation: completions
run, catalog writes land and the routers load them, usage is recorded.

Bad input must get a deliberate answer: never UNKNOWN or INTERNAL, UNAVAILABLE only as a
Switchboard error (with its ErrorInfo, not a dropped connection), a unary call never hangs, and
no process dies or logs a traceback (checked after every call). Afterwards every process still
reports SERVING and a completion still works.

The writes this makes stay out of the way of the rest of the run (and of the e2e modules after
it, which share the database): catalog writes name only the fuzz's own provider and models,
and credits, limits, usage and revocations go to a victim account and keys, never to the
tenant key the completions run with (see :class:`Known`).

``SWITCHBOARD_FUZZ_CALLS`` sets the calls per server (2,500; ``make fuzz`` makes 30,000),
shared by its RPCs. Runs are the same every time (seed 0) unless ``SWITCHBOARD_FUZZ_SEED``
picks another sequence.
"""

from __future__ import annotations

import collections
import os
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from switchboard.audit.v1 import audit_pb2
from switchboard.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from switchboard.common.v1 import common_pb2
from switchboard.metering.v1 import metering_pb2, metering_pb2_grpc
from switchboard.router.v1 import account_pb2, router_pb2, router_pb2_grpc
from switchboard_core.budget import MAX_BUDGET_USD
from switchboard_core.paging import encode_token
from switchboard_core.reflection import register_v1_descriptor
from switchboard_core.rpc_owners import FORWARDED_AUTHORIZATION, RPC_OWNERS, Scope
from switchboard_devstack.pki import OPERATOR
from switchboard_devstack.stack import Stack
from tests.e2e.support import auth, ledger_entry
from tests.proto_strategies import (
    Shape,
    any_text,
    edited,
    messages,
    mutated,
    random_bytes,
    weighted,
)
from tests.rpc_methods import Rpc, all_rpcs

pytestmark = [pytest.mark.e2e]

# Calls per server: the default keeps the module near a minute on two cores.
CALLS = int(os.environ.get("SWITCHBOARD_FUZZ_CALLS", "2500"))
SEED = int(os.environ.get("SWITCHBOARD_FUZZ_SEED") or 0)
STACK_ENV = {"SWITCHBOARD_DEMO_TOKEN_DELAY_SECONDS": "0"}

SERVERS = ("router", "catalog", "metering")
SERVED_BY = {
    "switchboard.router.v1.RouterService": ("router",),
    "switchboard.catalog.v1.CatalogService": ("catalog",),
    "switchboard.metering.v1.MeteringService": ("metering",),
    "switchboard.audit.v1.AuditService": ("catalog", "metering"),
    "grpc.health.v1.Health": SERVERS,
    "grpc.reflection.v1alpha.ServerReflection": SERVERS,
    "grpc.reflection.v1.ServerReflection": SERVERS,
}
# The authorization layer's refusals: the owner's credentials must never get one.
REFUSALS = {
    "CREDENTIALS_MISSING",
    "CREDENTIALS_MALFORMED",
    "CREDENTIALS_INVALID",
    "OPERATOR_KEY_INVALID",
    "API_KEY_NOT_ACCEPTED_HERE",
    "PERMISSION_DENIED",
    "RPC_HAS_NO_OWNER",
}
NEVER = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.DATA_LOSS,
}
UNARY_SECONDS = 15.0
# Streams are read for at most two messages (watches: one, they answer at once and then wait
# for changes) and this long (watches may rightly send nothing: a known version at or past
# the catalog's), then cancelled.
STREAM_SECONDS = {
    "/switchboard.catalog.v1.CatalogService/WatchCatalog": 0.3,
    "/grpc.health.v1.Health/Watch": 0.3,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": 1.0,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": 1.0,
}
WATCHES = ("/switchboard.catalog.v1.CatalogService/WatchCatalog", "/grpc.health.v1.Health/Watch")


@dataclass(frozen=True)
class Target:
    """One RPC on one server, called as ``caller``: "operator" (the admin key, every scope),
    "tenant" (an API key), "forwarded" (an API key the router forwards), a service's
    certificate, or "public"."""

    server: str
    rpc: Rpc
    caller: str

    def __str__(self) -> str:
        return f"{self.server}{self.rpc.path}[{self.caller}]"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # how hypothesis shows it
        printer.text(str(self))


def _targets() -> list[Target]:
    out: list[Target] = []
    for rpc in all_rpcs():
        owner = RPC_OWNERS[rpc.path]
        for server in SERVED_BY[rpc.service.full_name]:
            callers: list[str] = []
            if owner.public:
                callers.append("public")
            if owner.tenant and server == "router":
                callers.append("tenant")
            elif owner.tenant:
                callers.append("forwarded")
            if (owner.scope is not None and server != "router") or owner.scope is Scope.COMPLETIONS:
                callers.append("operator")
            if owner.services and not callers:
                callers.append(sorted(owner.services)[0])
            out += [Target(server, rpc, caller) for caller in callers]
    return out


TARGETS = _targets()


# -- what the fuzzer knows: ids of things in the test stack, and values near the real ones ----


@dataclass(frozen=True)
class Known:
    """What the fixtures made. The tenant's key and account are read, never written: the
    completions run with them. Writes go to the victim's (credits, limits, usage), the doomed
    key (revocation) and the fuzz operator key (revocation); the admin key's secret and id are
    never drawn."""

    tenant_secret: str
    tenant_key_id: str
    tenant_account: str
    tenant_generation: str
    victim_secret: str
    victim_key_id: str
    victim_account: str
    victim_generation: metering_pb2.UsageEvent
    doomed_key_id: str
    operator_key_id: str
    operator_secret: str


MODEL_IDS = (
    "switchboard/demo",
    "switchboard/demo:floor",
    "switchboard/demo:nitro",
    "switchboard/demo:bogus",
    "openai/gpt-4o-mini",
    "anthropic/claude-haiku-4.5",
    "fuzz/model",
    "fuzz/other",
    "no/such-model",
    "Switchboard/Demo",
    "a" * 129,
)
# Catalog writes name only the fuzz's own entries: the run's completions need the demo
# provider and model, and the e2e modules after this one share the database (and would route
# a seeded model to a cheaper fuzz endpoint).
WRITE_MODEL_IDS = ("fuzz/model", "fuzz/other", "fuzz/m:free", "fuzz/" + "m" * 124)
WRITE_PROVIDER_IDS = ("fuzz", "fuzz-other", "fuzz-" + "p" * 60)
PROVIDER_IDS = ("switchboard", "openai", "anthropic", "google", "fuzz", "-bad", "a" * 65)
USD = (
    "0",
    "0.15",
    "1",
    "100000",
    str(MAX_BUDGET_USD),
    f"{MAX_BUDGET_USD}.000000000001",
    "999999999999.999999999999",
    "0.000000000001",
    "1e3",
    "-1",
    "NaN",
    "Infinity",
    "1.",
    ".5",
    "\uff11",  # a fullwidth 1
    " 1",
    "1_000",
)
JSON = (
    "{}",
    '{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}',
    '{"type":"object"}',
    "[]",
    "null",
    "1",
    '"text"',
    "{",
    '{"a":1e999}',
    '{"type":"object","description":"\\ud800"}',  # a lone surrogate, escaped
    '{"a":NaN}',
    "[" * 100_000 + "]" * 100_000,
    '{"a":' * 20_000 + "1" + "}" * 20_000,
    '{"a":' * 200 + "1" + "}" * 200,
    '{"a":123456789012345678901234567890}',
)
URLS = (
    "https://127.0.0.1:1/v1",
    "http://127.0.0.1:1/v1",
    "https://example.com/v1",
    "https://example.com/cat.png",
    "data:image/png;base64,iVBORw0KGgo=",
    "data:image/png;base64,@@@",
    "https://169.254.169.254/latest",
    "https://localhost/v1",
    "https://user:pw@example.com/v1",
    "https://[::1]/v1",
    "https://[::ffff:127.0.0.1]/v1",
    "https://2130706433/v1",
    "https://0x7f.1/v1",
    "https://example.com:99999/v1",
    "https://example.com:-1/v1",
    "https://example.com:abc/v1",
    "https://[fe80::1%25eth0]/v1",
    "https://[/v1",
    "https://exa mple.com/v1",
    "ftp://example.com/v1",
    "file:///etc/passwd",
    "https://example.com/v1?x=1#y",
    "https://" + "a" * 64 + ".com/v1",
    "https://.../v1",
    "https://xn--/v1",
)
_CURSOR_TIMES = (
    "2024-01-01T00:00:00+00:00",
    "0001-01-01T00:00:00+00:00",
    "0001-01-01T00:00:00+05:00",  # before year 1 in UTC
    "9999-12-31T23:59:59.999999+00:00",
    "9999-12-31T23:59:59-05:00",  # after year 9999 in UTC
    "2024-01-01T00:00:00",
)
PAGE_TOKENS = (
    encode_token("fuzz/model"),
    encode_token("\x00"),
    encode_token("openai/gpt-4o\x00"),
    *(encode_token(f"{when}|{key}") for when in _CURSOR_TIMES for key in ("key_x", "\x00", "")),
    encode_token("x" * 10_000),
    encode_token("9" * 20),  # an audit event id past a bigint
    encode_token("-1"),
    "AA==",
    "/w==",  # one byte 0xff: not UTF-8
    "%%%",
    "====",
    "a",
)
SCOPES = (*(scope.value for scope in Scope), "*", "service:router", "service:evil", "KEYS:READ")


def _hints(known: Known) -> list[tuple[re.Pattern[str], tuple[str, ...]]]:
    """(pattern on a string field's full name, values to draw it from mostly); first match."""
    rules: list[tuple[str, tuple[str, ...]]] = [
        (r"catalog\.v1\.(Provider\.id|Endpoint\.provider_id)$", WRITE_PROVIDER_IDS),
        (r"catalog\.v1\.(Model\.id|Endpoint\.model_id)$", WRITE_MODEL_IDS),
        (r"catalog\.v1\.Endpoint\.id$", ("", "fuzz:fuzz/model", "openai:openai/gpt-4o-mini")),
        (r"(?<!upstream_)model(_id)?$|fallback_models$|allowed_models$", MODEL_IDS),
        (r"provider(_id)?$|\.(order|only|ignore)$|allowed_providers$|dialect$", PROVIDER_IDS),
        (r"usd(_per_mtok)?$", USD),
        (r"_json$", JSON),
        (r"(base_)?url$", URLS),
        (r"page_token$", PAGE_TOKENS),
        (r"scopes$", SCOPES),
        (
            r"\.(GetApiKeyRequest|GetBalanceRequest|QueryUsageRequest)\.key_id$",
            (known.tenant_key_id, known.victim_key_id, "key_0000000000000000", "opk_x"),
        ),
        (
            r"RevokeOperatorKeyRequest\.key_id$",
            (known.operator_key_id, "opk_0000000000000000", known.victim_key_id),
        ),
        (
            r"key_id$",
            (known.victim_key_id, known.doomed_key_id, "key_0000000000000000", "opk_x"),
        ),
        (
            r"\.(GetBalanceRequest|QueryUsageRequest|ListApiKeysRequest)\.account_id$",
            (known.tenant_account, known.victim_account, "_operators", "a" * 65),
        ),
        (r"account_id$", (known.victim_account, "fuzz-new", "_operators", "a" * 65)),
        (
            r"generation_id$",
            (known.tenant_generation, known.victim_generation.generation_id, "gen-x"),
        ),
        (
            r"\.secret$",
            (
                known.tenant_secret,
                known.victim_secret,
                known.operator_secret,
                "sk-sb-v1-" + "A" * 43,
                "sk-sb-op-" + "A" * 43,
                "sk-sb-v1-",
            ),
        ),
        (r"mime_type$", ("image/png", "image/jpeg", "image/svg+xml", "application/pdf")),
        (r"modalities$", ("text", "image", "audio", "TEXT", "text\n")),
        (
            r"supported_parameters$",
            ("max_tokens", "temperature", "tools", "tool_choice", "response_format", "bogus"),
        ),
        (r"quantization$", ("fp8", "bf16", "FP8")),
        (r"\.(name|upstream_model|display_name)$", ("get_weather", "fuzz", "a" * 65, "x y")),
        (r"\.content$|\.text$", ("hello", "Say hi.", "x" * 600_000, "你好" * 1000)),
        (r"\.(rpc|actor|target|service)$", ("/switchboard.metering.v1.MeteringService/X",)),
    ]
    return [(re.compile(pattern), values) for pattern, values in rules]


def _shape(known: Known) -> Shape:
    hints = _hints(known)
    near = st.sampled_from(("\n", "\x00", " ", "\u200b", "\t", "é"))

    def strings(field_: FieldDescriptor) -> st.SearchStrategy[str]:
        for pattern, values in hints:
            if pattern.search(field_.full_name):
                dictionary = st.sampled_from(values)
                return weighted(
                    (6, dictionary),
                    (1, st.builds(str.__add__, dictionary, near)),
                    (2, any_text()),
                )
        return any_text()

    return Shape(strings=strings)


@dataclass(frozen=True)
class Payload:
    kind: str  # see KINDS
    data: bytes
    message: Message | None  # what was drawn (before its bytes were broken)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # how hypothesis shows it
        shown = text_format.MessageToString(self.message, as_utf8=True) if self.message else ""
        if len(shown) > 3000:
            shown = shown[:3000] + f"... [{len(shown)} characters]"
        head = self.data[:200] + (b"..." if len(self.data) > 200 else b"")
        printer.text(f"Payload({self.kind}, {len(self.data)} bytes: {head!r})\n{shown}")


# A valid request with a few fields changed (or none), a request drawn whole, either one's
# bytes broken, or noise.
KINDS = ("edited",) * 4 + ("drawn",) * 3 + ("broken",) * 2 + ("noise",)


def payloads(rpc: Rpc, shape: Shape, template: Message) -> st.SearchStrategy[Payload]:
    near, whole = edited(template, shape), messages(rpc.method.input_type, shape)

    @st.composite
    def payload(draw: st.DrawFn) -> Payload:
        kind = draw(st.sampled_from(KINDS))
        if kind == "noise":
            return Payload(kind, draw(random_bytes()), None)
        if kind == "broken":
            message = draw(st.one_of(near, whole))
        else:
            message = draw(near if kind == "edited" else whole)
        data = message.SerializeToString()
        if kind == "broken":
            data = draw(mutated(st.just(data)))
        return Payload(kind, data, message)

    return payload()


def _v1_reflection_request() -> Message:
    """A reflection v1 request listing the services (v1's message, from the pool)."""
    register_v1_descriptor()
    pool = descriptor_pool.Default()
    request = GetMessageClass(
        pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest")
    )
    return request(list_services="")


def templates(known: Known) -> dict[str, Message]:
    """A valid request for each RPC (the empty one where none is given)."""
    router, catalog, metering = (
        "/switchboard.router.v1.RouterService/",
        "/switchboard.catalog.v1.CatalogService/",
        "/switchboard.metering.v1.MeteringService/",
    )
    hello = _hello()
    return {
        router + "CreateCompletion": hello,
        router + "StreamCompletion": router_pb2.StreamCompletionRequest.FromString(
            hello.SerializeToString()
        ),
        router + "GetGeneration": account_pb2.GetGenerationRequest(
            generation_id=known.tenant_generation
        ),
        router + "QueryUsage": account_pb2.QueryUsageRequest(
            scope=account_pb2.USAGE_SCOPE_ACCOUNT, bucket=metering_pb2.TIME_BUCKET_HOUR
        ),
        router + "ListModels": account_pb2.ListModelsRequest(page_size=2),
        catalog + "GetModel": catalog_pb2.GetModelRequest(model_id="switchboard/demo"),
        catalog + "ListModels": catalog_pb2.ListModelsRequest(page_size=3),
        catalog + "UpsertProvider": catalog_pb2.UpsertProviderRequest(provider=FUZZ_PROVIDER),
        catalog + "UpsertModel": catalog_pb2.UpsertModelRequest(model=FUZZ_MODEL),
        catalog + "UpsertEndpoint": catalog_pb2.UpsertEndpointRequest(endpoint=FUZZ_ENDPOINT),
        metering + "CreateApiKey": metering_pb2.CreateApiKeyRequest(
            account_id=known.victim_account, name="fuzz", allowed_models=["switchboard/demo"]
        ),
        metering + "ListApiKeys": metering_pb2.ListApiKeysRequest(
            account_id=known.tenant_account, page_size=1
        ),
        metering + "GetApiKey": metering_pb2.GetApiKeyRequest(key_id=known.tenant_key_id),
        metering + "RevokeApiKey": metering_pb2.RevokeApiKeyRequest(key_id=known.doomed_key_id),
        metering + "VerifyApiKey": metering_pb2.VerifyApiKeyRequest(secret=known.tenant_secret),
        metering + "RecordUsage": metering_pb2.RecordUsageRequest(events=[known.victim_generation]),
        metering + "GetGeneration": metering_pb2.GetGenerationRequest(
            generation_id=known.tenant_generation
        ),
        metering + "QueryUsage": metering_pb2.QueryUsageRequest(
            key_id=known.tenant_key_id, bucket=metering_pb2.TIME_BUCKET_HOUR
        ),
        metering + "SetKeyLimits": metering_pb2.SetKeyLimitsRequest(
            key_id=known.victim_key_id,
            limits=metering_pb2.SpendLimits(daily_usd="5"),
            rate_limits=metering_pb2.RateLimits(requests_per_minute=600, max_concurrent=4),
        ),
        metering + "SetAccountLimits": metering_pb2.SetAccountLimitsRequest(
            account_id=known.victim_account,
            rate_limits=metering_pb2.RateLimits(tokens_per_minute=100_000),
        ),
        metering + "AddCredits": metering_pb2.AddCreditsRequest(
            account_id=known.victim_account, amount_usd="1.5", note="fuzz"
        ),
        metering + "GetBalance": metering_pb2.GetBalanceRequest(key_id=known.tenant_key_id),
        metering + "CreateOperatorKey": metering_pb2.CreateOperatorKeyRequest(
            name="fuzz", scopes=["keys:read"]
        ),
        metering + "ListOperatorKeys": metering_pb2.ListOperatorKeysRequest(page_size=1),
        metering + "RevokeOperatorKey": metering_pb2.RevokeOperatorKeyRequest(
            key_id=known.operator_key_id
        ),
        metering + "VerifyOperatorKey": metering_pb2.VerifyOperatorKeyRequest(
            secret=known.operator_secret
        ),
        "/switchboard.audit.v1.AuditService/ListAuditEvents": audit_pb2.ListAuditEventsRequest(
            page_size=2
        ),
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": (
            reflection_pb2.ServerReflectionRequest(list_services="")
        ),
        # v1's request: v1alpha's under another package (switchboard_core.reflection).
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": _v1_reflection_request(),
    }


# -- calling, and watching the processes ------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    reason: str
    details: str
    has_error_info: bool
    replies: int


def _error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        return None
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    return None


class LogWatch:
    """New lines of the processes' logs since the last look."""

    def __init__(self, log_dir: Path) -> None:
        self._dir = log_dir
        self._offsets: dict[Path, int] = {}

    def new_lines(self) -> Iterator[tuple[str, str]]:
        for path in sorted(self._dir.glob("*.log")):
            start = self._offsets.get(path, 0)
            with path.open("rb") as log:
                log.seek(start)
                chunk = log.read()
            end = chunk.rfind(b"\n") + 1  # whole lines only
            self._offsets[path] = start + end
            for line in chunk[:end].decode(errors="replace").splitlines():
                yield path.stem, line


@dataclass
class Fuzzer:
    stack: Stack
    known: Known
    shape: Shape
    templates: dict[str, Message]  # RPC path -> a valid request
    channels: dict[str, grpc.aio.Channel]  # caller@server -> channel
    logs: LogWatch
    calls: collections.Counter[str] = field(default_factory=collections.Counter)
    codes: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # how hypothesis shows it
        printer.text("Fuzzer(...)")

    def metadata(self, target: Target) -> Sequence[tuple[str, str]]:
        if target.caller == "forwarded":
            return ((FORWARDED_AUTHORIZATION, f"Bearer {self.known.tenant_secret}"),)
        return ()

    async def call(self, target: Target, data: bytes) -> Outcome:
        rpc = target.rpc
        channel = self.channels[f"{target.caller}@{target.server}"]
        parse = rpc.response_class().FromString
        metadata = self.metadata(target)
        replies = 0
        self.calls[target.server] += 1
        try:
            if rpc.client_streaming:
                bidi = channel.stream_stream(
                    rpc.path, request_serializer=bytes, response_deserializer=parse
                )(iter([data]), metadata=metadata, timeout=STREAM_SECONDS[rpc.path])
                async for _ in bidi:
                    break
                bidi.cancel()
            elif rpc.server_streaming:
                stream = channel.unary_stream(
                    rpc.path, request_serializer=bytes, response_deserializer=parse
                )(data, metadata=metadata, timeout=STREAM_SECONDS.get(rpc.path, UNARY_SECONDS))
                enough = 1 if rpc.path in WATCHES else 2
                try:
                    async for _ in stream:
                        replies += 1
                        if replies == enough:
                            break
                finally:
                    stream.cancel()
            else:
                await channel.unary_unary(
                    rpc.path, request_serializer=bytes, response_deserializer=parse
                )(data, metadata=metadata, timeout=UNARY_SECONDS)
                replies = 1
        except grpc.aio.AioRpcError as error:
            info = _error_info(error)
            return Outcome(
                error.code(),
                info.reason if info is not None else "",
                error.details() or "",
                info is not None,
                replies,
            )
        return Outcome(grpc.StatusCode.OK, "", "", False, replies)

    def problems(self, target: Target, outcome: Outcome) -> list[str]:
        """What is wrong with this answer, and with the processes since the last call."""
        self.codes[str(target), outcome.code.name] += 1
        out: list[str] = []
        code, path = outcome.code, target.rpc.path
        if code in NEVER:
            out.append(f"answered {code.name}: {outcome.details}")
        if code == grpc.StatusCode.UNAVAILABLE and not outcome.has_error_info:
            out.append(f"UNAVAILABLE without an ErrorInfo (a dropped call?): {outcome.details}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and not target.rpc.server_streaming:
            out.append(f"a unary call hung past {UNARY_SECONDS}s")
        # The Verify RPCs answer UNAUTHENTICATED about the secret they were given; anything
        # else refusing its owner means the fuzz is not reaching the handler.
        verify = path.endswith(("/VerifyApiKey", "/VerifyOperatorKey"))
        if (code == grpc.StatusCode.UNAUTHENTICATED and not verify) or (
            code == grpc.StatusCode.PERMISSION_DENIED and outcome.reason in REFUSALS
        ):
            out.append(f"the owner was refused ({outcome.reason}): {outcome.details}")
        for name, proc in self.stack.processes.items():
            if proc.poll() is not None:
                out.append(f"{name} exited with {proc.returncode}")
        for name, line in self.logs.new_lines():
            if "Traceback" in line or '"level": "error"' in line:
                out.append(f"{name} logged: {line[:3000]}")
        return out


# The fuzz's own catalog entries, made before the run (so endpoint writes find their provider
# and model) and the templates of the catalog writes.
FUZZ_PROVIDER = catalog_pb2.Provider(
    id="fuzz",
    display_name="Fuzz",
    api_format=catalog_pb2.API_FORMAT_OPENAI_CHAT,
    base_url="https://127.0.0.1:1/v1",  # nothing listens: attempts fail at once
)
FUZZ_MODEL = catalog_pb2.Model(
    id="fuzz/model",
    display_name="Fuzz model",
    context_length=8192,
    input_modalities=["text"],
    output_modalities=["text"],
)
FUZZ_ENDPOINT = catalog_pb2.Endpoint(
    model_id="fuzz/model",
    provider_id="fuzz",
    upstream_model="fuzz-1",
    pricing=common_pb2.Pricing(prompt_usd_per_mtok="0.1", completion_usd_per_mtok="0.2"),
    context_length=8192,
    max_completion_tokens=1024,
    supported_parameters=["max_tokens", "temperature"],
)


@pytest.fixture(scope="module")
async def known(
    metering: metering_pb2_grpc.MeteringServiceAsyncStub,
    router: router_pb2_grpc.RouterServiceAsyncStub,
    catalog: catalog_pb2_grpc.CatalogServiceAsyncStub,
) -> Known:
    await catalog.UpsertProvider(catalog_pb2.UpsertProviderRequest(provider=FUZZ_PROVIDER))
    await catalog.UpsertModel(catalog_pb2.UpsertModelRequest(model=FUZZ_MODEL))
    await catalog.UpsertEndpoint(catalog_pb2.UpsertEndpointRequest(endpoint=FUZZ_ENDPOINT))
    keys = [
        await metering.CreateApiKey(metering_pb2.CreateApiKeyRequest(account_id=account))
        for account in ("fuzz-tenant", "fuzz-victim", "fuzz-victim")
    ]
    tenant, victim, doomed = keys
    # The highest limit there is: completions go through budget admission, with absurd
    # worst cases, and keep going.
    await metering.SetKeyLimits(
        metering_pb2.SetKeyLimitsRequest(
            key_id=tenant.api_key.id,
            limits=metering_pb2.SpendLimits(total_usd=str(MAX_BUDGET_USD)),
        )
    )
    operator = await metering.CreateOperatorKey(
        metering_pb2.CreateOperatorKeyRequest(name="fuzz", scopes=["keys:read"])
    )
    generations = []
    for key in (tenant, victim):
        reply = await router.CreateCompletion(_hello(), metadata=auth(key), timeout=30)
        generations.append(await ledger_entry(metering, reply.generation_id))
    return Known(
        tenant_secret=tenant.secret,
        tenant_key_id=tenant.api_key.id,
        tenant_account=tenant.api_key.account_id,
        tenant_generation=generations[0].generation_id,
        victim_secret=victim.secret,
        victim_key_id=victim.api_key.id,
        victim_account=victim.api_key.account_id,
        victim_generation=generations[1],
        doomed_key_id=doomed.api_key.id,
        operator_key_id=operator.operator_key.id,
        operator_secret=operator.secret,
    )


def _hello() -> router_pb2.CreateCompletionRequest:
    return router_pb2.CreateCompletionRequest(
        model="switchboard/demo",
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="Say hi.")],
        max_tokens=5,
    )


@pytest.fixture(scope="module")
async def fuzzer(stack: Stack, known: Known) -> AsyncIterator[Fuzzer]:
    channels: dict[str, grpc.aio.Channel] = {}
    for target in TARGETS:
        name = f"{target.caller}@{target.server}"
        if name in channels:
            continue
        if target.caller == "operator":
            channels[name] = stack.channel(target.server)
        elif target.caller == "tenant":
            channels[name] = stack.channel(target.server, bearer=known.tenant_secret)
        elif target.caller == "public":
            channels[name] = stack.channel(target.server, bearer="", as_=OPERATOR)
        elif target.caller == "forwarded":
            channels[name] = stack.channel(target.server, bearer="", as_="router")
        else:
            channels[name] = stack.channel(target.server, bearer="", as_=target.caller)
    assert stack.log_dir is not None
    logs = LogWatch(stack.log_dir)
    list(logs.new_lines())  # start from here
    yield Fuzzer(stack, known, _shape(known), templates(known), channels, logs)
    for channel in channels.values():
        await channel.close(None)


async def fuzz_once(target: Target, fuzzer: Fuzzer, data: st.DataObject) -> None:
    # Hypothesis seeds a test, not each of its parameters: drawing as many bytes as the
    # target's place in TARGETS first moves each target to a sequence of its own (so that,
    # say, StreamCompletion and CreateCompletion are not sent the very same requests).
    place = TARGETS.index(target)
    data.draw(st.binary(min_size=place, max_size=place), label="shift")
    template = fuzzer.templates.get(target.rpc.path) or target.rpc.request()
    payload = data.draw(payloads(target.rpc, fuzzer.shape, template), label="payload")
    outcome = await fuzzer.call(target, payload.data)
    problems = fuzzer.problems(target, outcome)
    assert not problems, f"{target}: " + "\n".join(problems)


def fuzzing(name: str, targets: list[Target], examples: int) -> Any:
    """The test ``name``, calling each of ``targets`` ``examples`` times."""

    async def test(target: Target, fuzzer: Fuzzer, data: st.DataObject) -> None:
        await fuzz_once(target, fuzzer, data)

    test.__name__ = test.__qualname__ = name  # as pytest and hypothesis report it
    checked = settings(
        max_examples=max(examples, 1),
        deadline=None,
        database=None,
        print_blob=False,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],  # no example database, no explain
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )(seed(SEED)(given(data=st.data())(test)))
    return pytest.mark.parametrize("target", targets, ids=str)(checked)


STANDARD = {rpc.path for rpc in all_rpcs() if rpc.service.full_name.startswith("grpc.")}


def _server_test(server: str) -> Any:
    """``server``'s own RPCs share nine tenths of its CALLS (the standard services, five RPCs
    on each server, the last tenth)."""
    own = [t for t in TARGETS if t.server == server and t.rpc.path not in STANDARD]
    name = f"test_the_{server}_answers_bad_input_deliberately"
    return fuzzing(name, own, CALLS * 9 // 10 // len(own))


test_the_standard_services_answer_bad_input_deliberately = fuzzing(
    "test_the_standard_services_answer_bad_input_deliberately",
    [t for t in TARGETS if t.rpc.path in STANDARD],
    CALLS // 10 // 5,
)
# The catalog first: the completions then route through whatever its writes left (the fuzz
# endpoints' prices, context windows and statuses).
test_the_catalog_answers_bad_input_deliberately = _server_test("catalog")
test_the_metering_answers_bad_input_deliberately = _server_test("metering")
test_the_router_answers_bad_input_deliberately = _server_test("router")


async def test_after_the_fuzz_every_process_serves_and_completes(
    stack: Stack, fuzzer: Fuzzer, router: router_pb2_grpc.RouterServiceAsyncStub
) -> None:
    for name in SERVERS:
        assert stack.processes[name].poll() is None, f"{name} is gone"
        async with stack.channel(name, bearer="", as_=OPERATOR) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
    tenant = metering_pb2.CreateApiKeyResponse(secret=fuzzer.known.tenant_secret)
    reply = await router.CreateCompletion(_hello(), metadata=auth(tenant), timeout=30)
    assert reply.text and reply.usage.completion_tokens > 0
    summary = ", ".join(f"{server} {count}" for server, count in sorted(fuzzer.calls.items()))
    print(f"\nfuzz calls per server: {summary}")
    for (target, code), count in sorted(fuzzer.codes.items()):
        print(f"  {target} {code} {count}")
