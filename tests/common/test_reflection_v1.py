"""Server reflection answers under grpc.reflection.v1 as under v1alpha.

A client that asks the stable name first (buf curl, grpcurl) or only (newer tools) got
UNIMPLEMENTED: grpcio-reflection serves v1alpha alone. A real grpc.aio server of the
chassis and a real channel calling the v1 path; the messages are v1alpha's classes, which
are v1's on the wire (same fields, same numbers), as a generic client's would be.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2

from services.common.server import GrpcServer
from services.common.settings import CommonSettings
from tests.support.rpc import error_info

V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


async def _ask(
    channel: grpc.aio.Channel, *requests: reflection_pb2.ServerReflectionRequest, **kw: object
) -> list[reflection_pb2.ServerReflectionResponse]:
    call = channel.stream_stream(
        V1,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )

    async def sent() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        for request in requests:
            yield request

    return [reply async for reply in call(sent(), timeout=10, **kw)]


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = GrpcServer(CommonSettings(max_metadata_bytes=8192), port=0)  # type: ignore[call-arg]
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    await server.stop(0)


async def test_v1_lists_the_services_and_names_itself(channel: grpc.aio.Channel) -> None:
    (reply,) = await _ask(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in reply.list_services_response.service}
    assert {
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.health.v1.Health",
    } <= names


async def test_v1_describes_every_service_it_lists(channel: grpc.aio.Channel) -> None:
    """As grpcurl's `describe` and buf curl's `--list-methods` do: each listed service's
    file, which must build in a pool of its own (v1's own file included)."""
    (listing,) = await _ask(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = [s.name for s in listing.list_services_response.service]
    replies = await _ask(
        channel,
        *(reflection_pb2.ServerReflectionRequest(file_containing_symbol=n) for n in names),
    )
    pool = descriptor_pool.DescriptorPool()
    for name, reply in zip(names, replies, strict=True):
        assert reply.HasField("file_descriptor_response"), (name, reply.error_response)
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in reply.file_descriptor_response.file_descriptor_proto
        ]
        for file in reversed(files):  # the file asked for first, then its imports
            try:
                pool.FindFileByName(file.name)
            except KeyError:
                pool.Add(file)
        assert pool.FindServiceByName(name).methods
    method = pool.FindMethodByName("grpc.reflection.v1.ServerReflection.ServerReflectionInfo")
    assert method.input_type.full_name == "grpc.reflection.v1.ServerReflectionRequest"
    assert method.client_streaming and method.server_streaming
    assert method.containing_service.file.name == "grpc/reflection/v1/reflection.proto"


async def test_v1_refuses_large_metadata_as_v1alpha_does(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _ask(
            channel,
            reflection_pb2.ServerReflectionRequest(list_services=""),
            metadata=(("x-padding", "k" * 9000),),
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(caught.value).reason == "METADATA_TOO_LARGE"
