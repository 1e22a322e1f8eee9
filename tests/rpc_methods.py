"""Every RPC the Switchboard servers serve, read from the service descriptors: the protos
under ``switchboard/`` and the standard services every server adds (health, reflection)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

import switchboard
from switchboard_core.reflection import V1_FILE, register_v1_descriptor


@dataclass(frozen=True)
class Rpc:
    service: ServiceDescriptor
    method: MethodDescriptor

    @property
    def path(self) -> str:
        """``/package.Service/Method``, as gRPC names it on the wire."""
        return f"/{self.service.full_name}/{self.method.name}"

    @property
    def server_streaming(self) -> bool:
        return bool(self.method.server_streaming)

    @property
    def client_streaming(self) -> bool:
        return bool(self.method.client_streaming)

    def request(self) -> Message:
        return GetMessageClass(self.method.input_type)()

    def response_class(self) -> type[Message]:
        return GetMessageClass(self.method.output_type)


def _switchboard_modules() -> Iterator[object]:
    """Every generated ``*_pb2`` module under the ``switchboard`` namespace package."""
    for base in map(Path, switchboard.__path__):
        for path in sorted(base.rglob("*_pb2.py")):
            parts = path.relative_to(base).with_suffix("").parts
            yield importlib.import_module(".".join(("switchboard", *parts)))


def all_rpcs() -> list[Rpc]:
    modules: list[Any] = [*_switchboard_modules(), health_pb2, reflection_pb2]
    register_v1_descriptor()  # reflection v1: v1alpha renamed (switchboard_core.reflection)
    files = [module.DESCRIPTOR for module in modules]
    files.append(descriptor_pool.Default().FindFileByName(V1_FILE))
    found: dict[str, Rpc] = {}
    for file in files:
        for service in file.services_by_name.values():
            for method in service.methods:
                rpc = Rpc(service, method)
                found[rpc.path] = rpc
    return sorted(found.values(), key=lambda rpc: rpc.path)


def served_by(service_full_name: str) -> list[Rpc]:
    return [rpc for rpc in all_rpcs() if rpc.service.full_name == service_full_name]
