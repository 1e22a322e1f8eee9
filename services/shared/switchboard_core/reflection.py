"""Server reflection, both versions: ``grpc.reflection.v1`` and ``grpc.reflection.v1alpha``.

grpcio-reflection ships only v1alpha, while current tools (grpcurl, Postman, grpc-java and
grpc-go's clients) ask for v1 first. The two versions are the same protocol: v1 is v1alpha's
``reflection.proto`` under a new package, every message and field number unchanged, so the
bytes on the wire are identical. So one servicer answers both paths, and v1's descriptor
(v1alpha's, renamed) joins the default pool so that reflection describes itself in either
version.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1ALPHA_SERVICE_NAME = reflection.SERVICE_NAME  # grpc.reflection.v1alpha.ServerReflection
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"  # its path in grpc's repository


def _v1_file() -> descriptor_pb2.FileDescriptorProto:
    """v1alpha's file descriptor with v1's name and package."""
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old = proto.package
    proto.name, proto.package = V1_FILE, V1_PACKAGE
    proto.options.Clear()  # v1alpha's language options name its own packages
    for message in proto.message_type:
        for message_field in message.field:
            if message_field.type_name:  # a message field (setting "" would mark it one)
                renamed = message_field.type_name.replace(f".{old}.", f".{V1_PACKAGE}.")
                message_field.type_name = renamed
    for method in proto.service[0].method:
        method.input_type = method.input_type.replace(f".{old}.", f".{V1_PACKAGE}.")
        method.output_type = method.output_type.replace(f".{old}.", f".{V1_PACKAGE}.")
    return proto


def register_v1_descriptor(pool: descriptor_pool.DescriptorPool | None = None) -> None:
    """Add v1's ``reflection.proto`` to ``pool`` (the default one), once."""
    pool = pool or descriptor_pool.Default()
    try:
        pool.FindFileByName(V1_FILE)
    except KeyError:
        pool.Add(_v1_file())


def enable_reflection(service_names: Sequence[str], server: grpc.aio.Server) -> None:
    """Serve reflection v1 and v1alpha on ``server``, listing ``service_names`` and both
    reflection services."""
    register_v1_descriptor()
    servicer = reflection.aio.ReflectionServicer(  # type: ignore[attr-defined]  # stubs lack it
        [*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME]
    )
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.method_handlers_generic_handler(
        V1_SERVICE_NAME,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1,))
