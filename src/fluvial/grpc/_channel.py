"""fluvial's gRPC client: `open_channel` and the calls made through it, all trio-facing.

A channel is one HTTP/2 connection to a server, made on the first call and made again by the
next call after it broke, shared by every call through it (several projections of a consumer
share one channel). Its calls raise `GrpcError`s (converted in `grpc_errors_converted`, the one
boundary), honour the caller's cancel scopes, and tell the server the caller's deadline: the
trio deadline in force, sent as the call's gRPC timeout (a little later than trio's, so that
the caller's cancel scope, not grpclib's timer, ends the call on this side).
"""

from __future__ import annotations

import contextlib
import math
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

import grpclib.client
import trio
from grpclib.const import Cardinality
from grpclib.encoding.base import CodecBase
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import StreamTerminatedError

from ._asyncio_bridge import AsyncioReader, open_asyncio_bridge, run_asyncio
from ._errors import GrpcUnavailable, grpc_errors_converted
from ._limits import SizeLimitedCodec, limit_received_messages
from ._settings import ChannelSettings, grpclib_configuration
from ._tls import client_ssl_context

_Request = TypeVar("_Request")
_Reply = TypeVar("_Reply")
_T = TypeVar("_T")

Metadata = Sequence[tuple[str, str | bytes]]

# The server's deadline is the caller's plus this, so that this side's cancel comes first.
_DEADLINE_GRACE = 0.5


def _grpc_timeout() -> float | None:
    deadline = trio.current_effective_deadline()
    if math.isinf(deadline):
        return None
    return max(deadline - trio.current_time(), 0.0) + _DEADLINE_GRACE


async def _make_channel(
    host: str, port: int, settings: ChannelSettings, context: ssl.SSLContext | None, codec: Any
) -> grpclib.client.Channel:
    # In the asyncio task: grpclib's Channel looks up its loop when it is made.
    return grpclib.client.Channel(
        host,
        port,
        ssl=context,
        codec=codec,
        config=grpclib_configuration(
            settings.keepalive, server_name=settings.tls.server_name if settings.tls else None
        ),
    )


async def _close_channel(channel: grpclib.client.Channel) -> None:
    channel.close()


@asynccontextmanager
async def open_channel(
    host: str,
    port: int,
    *,
    settings: ChannelSettings | None = None,
    codec: CodecBase | None = None,
) -> AsyncIterator[GrpcChannel]:
    """A channel to the gRPC server at `host`:`port`, closed when the block ends.

    Nothing is connected until the first call. A TLS file that cannot be used raises
    `TlsConfigurationError` here. `codec` is grpclib's codec for the messages (protobuf by
    default). The block's exceptions come out as themselves.
    """
    settings = settings or ChannelSettings()
    context = client_ssl_context(settings.tls) if settings.tls is not None else None
    limited = SizeLimitedCodec(codec or ProtoCodec(), max_send=settings.max_send_message_size)
    async with open_asyncio_bridge():
        channel = await run_asyncio(_make_channel, host, port, settings, context, limited)
        try:
            yield GrpcChannel(channel, settings)
        finally:
            with trio.CancelScope(shield=True):
                await run_asyncio(_close_channel, channel)


class GrpcChannel:
    """Calls to one server over one connection (see `open_channel`)."""

    def __init__(self, channel: grpclib.client.Channel, settings: ChannelSettings) -> None:
        self._channel = channel
        self._settings = settings

    async def drop_connection(self) -> None:
        """Close the connection now: its calls fail with `GrpcUnavailable`, and the next call
        connects again. For a connection found dead by other means than the keep-alive pings
        (a consumer's stream silent past its heartbeat timeout)."""
        await run_asyncio(_close_channel, self._channel)

    async def unary(
        self,
        method: str,
        request: _Request,
        reply_type: type[_Reply],
        *,
        metadata: Metadata = (),
    ) -> _Reply:
        """Send `request` to the unary `method` ("/pkg.Service/Method"); return its reply.

        Raises a `GrpcError` for a status other than OK or a broken connection; a cancel of
        the caller resets the call on the wire.
        """
        timeout = _grpc_timeout()
        with grpc_errors_converted(method):
            return await run_asyncio(
                self._unary, method, request, reply_type, list(metadata), timeout
            )

    async def _unary(
        self,
        method: str,
        request: Any,
        reply_type: type[_Reply],
        metadata: list[tuple[str, str | bytes]],
        grpc_timeout: float | None,
    ) -> _Reply:
        stream = self._channel.request(
            method,
            Cardinality.UNARY_UNARY,
            type(request),
            reply_type,
            timeout=grpc_timeout,
            metadata=metadata,
        )
        async with stream:
            await stream.send_request()
            limit_received_messages(stream, self._settings.max_receive_message_size, method)
            await stream.send_message(request, end=True)
            reply = await stream.recv_message()
        if reply is None:
            raise GrpcUnavailable("the server ended the call without a reply", method=method)
        return reply

    @asynccontextmanager
    async def open_stream(
        self,
        method: str,
        request_type: type[_Request],
        reply_type: type[_Reply],
        *,
        metadata: Metadata = (),
    ) -> AsyncIterator[ClientStream[_Request, _Reply]]:
        """A bidirectional (or server-streaming) call of `method`, for the block's duration.

        The request headers are sent when the block starts (connecting if needed: a server that
        cannot be reached raises `GrpcUnavailable` here). Leaving the block before the server
        ended the call cancels it (RST_STREAM); the block's exceptions come out as themselves.
        """
        timeout = _grpc_timeout()
        stream = self._channel.request(
            method,
            Cardinality.STREAM_STREAM,
            request_type,
            reply_type,
            timeout=timeout,
            metadata=list(metadata),
        )
        with grpc_errors_converted(method):
            await run_asyncio(self._open, stream, method)
        call = ClientStream(stream, method)
        try:
            yield call
        finally:
            with trio.CancelScope(shield=True):
                await run_asyncio(call._finish)

    async def _open(self, stream: grpclib.client.Stream[Any, Any], method: str) -> None:
        await stream.__aenter__()
        try:
            await stream.send_request()
        except BaseException as error:
            await stream.__aexit__(type(error), error, error.__traceback__)
            raise
        limit_received_messages(stream, self._settings.max_receive_message_size, method)


class ClientStream(Generic[_Request, _Reply]):
    """The trio side of one streaming call: send requests, receive replies.

    `receive()` returns the server's next message, or None once it ended the call OK; an
    error status raises its `GrpcError`. Iterating the stream does the same. One asyncio task
    reads the messages, up to two ahead of what `receive` has taken (`AsyncioReader`).
    """

    def __init__(self, stream: grpclib.client.Stream[_Request, _Reply], method: str) -> None:
        self._stream = stream
        self._exited = False
        self.method = method
        self._messages = AsyncioReader(self._next_message, lambda message: message is None)

    async def send(self, message: _Request) -> None:
        """Send one message (waits while HTTP/2 flow control says so)."""
        with grpc_errors_converted(self.method):
            await run_asyncio(self._guarded, self._stream.send_message, message)

    async def end(self) -> None:
        """End this side of the stream; the server's replies keep coming."""
        with grpc_errors_converted(self.method):
            await run_asyncio(self._guarded, self._stream.end)

    async def receive(self) -> _Reply | None:
        """The server's next message, or None once it ended the call with OK (and again at
        every later call, as its error is). Cancelled, it took no message: the next call
        returns it. With a message arrived already it is no schedule point."""
        with grpc_errors_converted(self.method):
            return await self._messages.receive()

    def __aiter__(self) -> ClientStream[_Request, _Reply]:
        return self

    async def __anext__(self) -> _Reply:
        message = await self.receive()
        if message is None:
            raise StopAsyncIteration
        return message

    async def _next_message(self) -> _Reply | None:
        return await self._guarded(self._receive)

    async def _receive(self) -> _Reply | None:
        message = await self._stream.recv_message()
        if message is None and self._stream.trailing_metadata is None:
            await self._stream.recv_trailing_metadata()  # raises the call's status if not OK
        return message

    async def _guarded(self, operation: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        try:
            return await operation(*args)
        except StreamTerminatedError as error:
            # A server that ends a call with an error status resets the stream right after
            # its trailers: grpclib's exit turns the reset back into that status (GRPCError).
            if not self._exited:
                self._exited = True
                await self._stream.__aexit__(type(error), error, error.__traceback__)
            raise

    async def _finish(self) -> None:
        # Errors here are not the block's: a connection already gone has nothing left to
        # cancel, and the call's outcome was reported by receive() (or not wanted by the block).
        await self._messages.stop()
        if self._exited:
            return
        self._exited = True
        with contextlib.suppress(Exception):
            if self._stream.trailing_metadata is None:
                await self._stream.cancel()
        with contextlib.suppress(Exception):
            await self._stream.__aexit__(None, None, None)
