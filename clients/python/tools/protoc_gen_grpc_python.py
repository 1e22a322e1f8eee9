"""``protoc-gen-grpc_python`` for ``buf generate``: grpcio-tools' gRPC Python generator.

grpcio-tools builds its gRPC generator into its own protoc (``--grpc_python_out``) and
ships no plugin program, so this one answers buf's CodeGeneratorRequest by running
``python -m grpc_tools.protoc`` on the request's descriptors and handing back the files it
wrote. Options (``opt:``) pass through as ``--grpc_python_opt``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2

PROTOC_TIMEOUT_SECONDS = 120


def generate(request: plugin_pb2.CodeGeneratorRequest) -> plugin_pb2.CodeGeneratorResponse:
    response = plugin_pb2.CodeGeneratorResponse()
    with tempfile.TemporaryDirectory(prefix="grpc-python-") as work:
        descriptors = Path(work, "descriptors.binpb")
        out = Path(work, "out")
        out.mkdir()
        files = descriptor_pb2.FileDescriptorSet(file=request.proto_file)
        descriptors.write_bytes(files.SerializeToString())
        command = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--descriptor_set_in={descriptors}",
            f"--grpc_python_out={out}",
            *([f"--grpc_python_opt={request.parameter}"] if request.parameter else []),
            *request.file_to_generate,
        ]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=PROTOC_TIMEOUT_SECONDS, check=False
        )
        if done.returncode != 0:
            response.error = done.stderr.strip() or f"grpc_tools.protoc exited {done.returncode}"
            return response
        for path in sorted(out.rglob("*.py")):
            generated = response.file.add()
            generated.name = path.relative_to(out).as_posix()
            generated.content = path.read_text()
    response.supported_features = plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    return response


def main() -> None:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    sys.stdout.buffer.write(generate(request).SerializeToString())


if __name__ == "__main__":
    main()
