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
from grpclib.exceptions import StreamTerminatedError

from fluvial.grpc import GrpcInvalidArgument, ServerSettings
from fluvial.grpc._auth import AuthHook
from fluvial.grpc._server import ServerCall, TrioMethod, serve_grpc, trio_service
from fluvial.nursery_errors import open_service_nursery

UNARY = "/test.Echo/Unary"
STREAM = "/test.Echo/Stream"
SLOW = "/test.Echo/Slow"
REFUSE = "/test.Echo/Refuse"
BUG = "/test.Echo/Bug"
FLOOD = "/test.Echo/Flood"
CUT = "/test.Echo/Cut"


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
    slow_cancelled: trio.Event = attrs.field(factory=trio.Event)
    stream_cancelled: trio.Event = attrs.field(factory=trio.Event)
    flood_ended: trio.Event = attrs.field(factory=trio.Event)
    flood_errors: list[BaseException] = attrs.field(factory=list)
    cut_ended: trio.Event = attrs.field(factory=trio.Event)


def echo_service(state: EchoState) -> Any:
    async def unary(call: ServerCall[bytes, bytes]) -> None:
        state.started.append(UNARY)
        request = await call.receive()
        assert request is not None
        await call.send(request)

    async def stream(call: ServerCall[bytes, bytes]) -> None:
        state.started.append(STREAM)
        try:
            async for message in call:
                await call.send(message)
        except trio.Cancelled:
            state.cancelled.append(STREAM)
            state.stream_cancelled.set()
            raise

    async def slow(call: ServerCall[bytes, bytes]) -> None:
        state.started.append(SLOW)
        await call.receive()
        state.slow_started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            state.cancelled.append(SLOW)
            state.slow_cancelled.set()
            raise

    async def flood(call: ServerCall[bytes, bytes]) -> None:
        # Sends the first message back until the call ends: a peer that goes away finds it
        # sending (or waiting for HTTP/2 flow control), not receiving.
        request = await call.receive()
        assert request is not None
        try:
            while True:
                await call.send(request)
        except BaseException as error:
            state.flood_errors.append(error)
            raise
        finally:
            state.flood_ended.set()

    async def cut(call: ServerCall[bytes, bytes]) -> None:
        # Answers its first message, then waits; cancelled (its call cut), it ends as that
        # message says, as a handler does when the cancel meets it at the wrong moment:
        # b"return" (it had passed its last checkpoint), b"stream-error" (its grpclib call
        # failed on the cut stream first), b"bug" (a real error).
        how = await call.receive()
        await call.send(b"ok")
        try:
            await call.receive()
        except trio.Cancelled:
            if how == b"stream-error":
                raise StreamTerminatedError("Connection lost") from None
            if how == b"bug":
                raise ValueError("a bug in the handler's cleanup") from None
            if how != b"return":
                raise
        finally:
            state.cut_ended.set()

    async def refuse(call: ServerCall[bytes, bytes]) -> None:
        request = await call.receive()
        raise GrpcInvalidArgument(f"cannot take {request!r}")

    async def bug(call: ServerCall[bytes, bytes]) -> None:
        raise ValueError("a bug in the handler")

    def unary_method(handler: Any) -> TrioMethod[bytes, bytes]:
        return TrioMethod(handler, Cardinality.UNARY_UNARY, bytes, bytes)

    return trio_service(
        {
            UNARY: unary_method(unary),
            STREAM: TrioMethod(stream, Cardinality.STREAM_STREAM, bytes, bytes),
            SLOW: unary_method(slow),
            REFUSE: unary_method(refuse),
            BUG: unary_method(bug),
            FLOOD: TrioMethod(flood, Cardinality.UNARY_STREAM, bytes, bytes),
            CUT: TrioMethod(cut, Cardinality.STREAM_STREAM, bytes, bytes),
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
    async with open_service_nursery() as nursery:
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


async def raw_h2_call(
    port: int, method: str, body: bytes, *, end_stream: bool = False
) -> dict[str, str]:
    """One gRPC call made by hand with h2 over a trio socket: the request headers, `body` as
    the DATA (a hand-made length prefix may lie), then the response's headers and trailers,
    merged (grpc-status and grpc-message among them)."""
    import h2.config
    import h2.connection
    import h2.events

    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    received: dict[str, str] = {}
    async with await trio.open_tcp_stream("127.0.0.1", port) as sock:
        stream_id = connection.get_next_available_stream_id()
        connection.send_headers(
            stream_id,
            request_headers(port, method),
        )
        connection.send_data(stream_id, body, end_stream=end_stream)
        await sock.send_all(connection.data_to_send())
        while True:
            data = await sock.receive_some(65536)
            if not data:
                return received
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    received.update(
                        (
                            k.decode() if isinstance(k, bytes) else k,
                            v.decode() if isinstance(v, bytes) else v,
                        )
                        for k, v in event.headers
                    )
                if isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    return received
            await sock.send_all(connection.data_to_send())


def request_headers(port: int, method: str) -> list[tuple[str, str]]:
    """The HTTP/2 headers of a gRPC call of `method` to the server at `port` on loopback."""
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", method),
        (":authority", f"127.0.0.1:{port}"),
        ("content-type", "application/grpc+proto"),
        ("te", "trailers"),
    ]


def grpc_frame(message: bytes, *, announced: int | None = None) -> bytes:
    """`message` with gRPC's 5-byte prefix, announcing `announced` bytes (default: its own)."""
    length = len(message) if announced is None else announced
    return b"\x00" + length.to_bytes(4, "big") + message


@attrs.define(eq=False)
class StallingProxy:
    """A TCP proxy on loopback that forwards both ways until `stall()`: then it keeps the
    connections open and forwards nothing (a dead peer behind a NAT, as the client sees it)."""

    target_port: int
    stalled: bool = False
    port: int = 0
    forwarded: int = 0  # bytes, both ways

    def stall(self) -> None:
        self.stalled = True

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        async with (
            client,
            await trio.open_tcp_stream("127.0.0.1", self.target_port) as server,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(self._pump, client, server, nursery.cancel_scope)
            nursery.start_soon(self._pump, server, client, nursery.cancel_scope)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while data := await source.receive_some(65536):
                if self.stalled:
                    await trio.sleep_forever()
                await sink.send_all(data)
                self.forwarded += len(data)
        except trio.BrokenResourceError:
            pass
        scope.cancel()
