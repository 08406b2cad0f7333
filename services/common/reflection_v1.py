"""Server reflection under its stable name, ``grpc.reflection.v1.ServerReflection``.

grpcio-reflection serves only ``grpc.reflection.v1alpha``, the name gRPC deprecated when
v1 came out; a client that asks for v1 (buf curl and grpcurl ask for it first, other
tools only for it) got UNIMPLEMENTED. The two protos are the same messages with the same
field numbers under another package, so the one servicer answers both, its v1alpha
messages serving as v1's on the wire. The v1 file is added to the default descriptor
pool, so reflection describes ``grpc.reflection.v1.ServerReflection`` as it lists it.
"""

from __future__ import annotations

from typing import Any, Protocol

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2

SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
METHOD = "ServerReflectionInfo"
_FILE = "grpc/reflection/v1/reflection.proto"
_ALPHA_PACKAGE = reflection_pb2.DESCRIPTOR.package  # grpc.reflection.v1alpha
_PACKAGE = "grpc.reflection.v1"


class _Registry(Protocol):
    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None: ...

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None: ...


def v1_file() -> descriptor_pb2.FileDescriptorProto:
    """v1alpha's file under v1's name and package (its messages' references too)."""
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = _FILE
    proto.package = _PACKAGE
    proto.ClearField("options")  # v1alpha's java_package and the like
    alpha, v1 = f".{_ALPHA_PACKAGE}.", f".{_PACKAGE}."
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(alpha):
                field.type_name = v1 + field.type_name[len(alpha) :]
    for service in proto.service:
        for method in service.method:
            method.input_type = v1 + method.input_type[len(alpha) :]
            method.output_type = v1 + method.output_type[len(alpha) :]
    return proto


def describe() -> None:
    """Adds the v1 file to the default pool, once (a pool that has it already is left)."""
    pool = descriptor_pool.Default()
    try:
        pool.FindServiceByName(SERVICE_NAME)
    except KeyError:
        pool.AddSerializedFile(v1_file().SerializeToString())
    _V1Request.DESCRIPTOR = pool.FindMessageTypeByName(f"{_PACKAGE}.ServerReflectionRequest")


class _V1Request:
    """v1's request, parsed as v1alpha's message (the same wire) for the v1alpha servicer,
    but named as v1's: a request that does not parse is refused naming the message type
    the client sent (``request_parse.tolerant`` reads ``DESCRIPTOR`` of the class the
    deserializer is bound to), not v1alpha's, which a v1 client never heard of."""

    DESCRIPTOR: Any = None  # set by ``describe``

    @classmethod
    def FromString(cls, data: bytes) -> reflection_pb2.ServerReflectionRequest:
        return reflection_pb2.ServerReflectionRequest.FromString(data)


def add_to_server(servicer: Any, server: _Registry) -> None:
    """Serves ``servicer`` (a v1alpha ReflectionServicer) as v1 on ``server`` (or what
    stands in for it, as the generated ``add_*_to_server`` functions register)."""
    describe()
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=_V1Request.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    # Both, as the generated function does: grpc.aio matches a registered method first.
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, {METHOD: handler}),)
    )
    server.add_registered_method_handlers(SERVICE_NAME, {METHOD: handler})
