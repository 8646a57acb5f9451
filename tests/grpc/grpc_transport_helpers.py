"""A tiny gRPC service of raw bytes for the transport tests, served by fluvial's server.

Messages are `bytes` (the codec passes them through), so the tests see exactly what travels.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
from grpclib.const import Cardinality
from grpclib.encoding.base import CodecBase

from fluvial.grpc import GrpcInvalidArgument, ServerSettings
from fluvial.grpc._auth import AuthHook
from fluvial.grpc._server import ServerCall, serve_grpc, trio_method, trio_service

UNARY = "/test.Echo/Unary"
STREAM = "/test.Echo/Stream"
SLOW = "/test.Echo/Slow"
REFUSE = "/test.Echo/Refuse"
BUG = "/test.Echo/Bug"


class RawCodec(CodecBase):
    """Messages are bytes, sent as they are (content type application/grpc+proto)."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        assert isinstance(message, bytes)
        return message

    def decode(self, data: bytes, message_type: Any) -> bytes:
        return bytes(data)


@attrs.define
class EchoState:
    """What the service saw: calls begun and ended by cancellation, per method."""

    started: list[str] = attrs.field(factory=list)
    cancelled: list[str] = attrs.field(factory=list)
    slow_started: trio.Event = attrs.field(factory=trio.Event)


def echo_service(state: EchoState) -> Any:
    async def unary(call: ServerCall[bytes, bytes]) -> None:
        state.started.append(UNARY)
        request = await call.receive()
        assert request is not None
        await call.send(request)

    async def stream(call: ServerCall[bytes, bytes]) -> None:
        state.started.append(STREAM)
        async for message in call:
            await call.send(message)

    async def slow(call: ServerCall[bytes, bytes]) -> None:
        state.started.append(SLOW)
        await call.receive()
        state.slow_started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            state.cancelled.append(SLOW)
            raise

    async def refuse(call: ServerCall[bytes, bytes]) -> None:
        request = await call.receive()
        raise GrpcInvalidArgument(f"cannot take {request!r}")

    async def bug(call: ServerCall[bytes, bytes]) -> None:
        raise ValueError("a bug in the handler")

    def method(handler: Any, name: str, cardinality: Cardinality) -> Any:
        return trio_method(handler, cardinality, bytes, bytes, method=name)

    return trio_service(
        {
            UNARY: method(unary, UNARY, Cardinality.UNARY_UNARY),
            STREAM: method(stream, STREAM, Cardinality.STREAM_STREAM),
            SLOW: method(slow, SLOW, Cardinality.UNARY_UNARY),
            REFUSE: method(refuse, REFUSE, Cardinality.UNARY_UNARY),
            BUG: method(bug, BUG, Cardinality.UNARY_UNARY),
        }
    )


@asynccontextmanager
async def echo_server(
    *,
    settings: ServerSettings | None = None,
    auth: AuthHook | None = None,
    state: EchoState | None = None,
) -> AsyncIterator[int]:
    """Serve the echo service on a free loopback port (yielded) for the block's duration."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status=trio.TASK_STATUS_IGNORED: serve_grpc(
                [echo_service(state or EchoState())],
                settings=settings,
                auth=auth,
                codec=RawCodec(),
                task_status=task_status,
            )
        )
        yield port
        nursery.cancel_scope.cancel()
