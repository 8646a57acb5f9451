"""fluvial's gRPC server: grpclib on the asyncio bridge, started with `nursery.start`.

`serve_grpc` serves grpclib services (anything with `__mapping__()`, such as a betterproto2
service base subclass, or `trio_service` of trio handlers) on one host and port, with the
transport's promises around every call:

- TLS / mutual TLS, keep-alive pings, message size limits and the handshake timeout (a
  connection that has not sent its HTTP/2 preface in time is closed: `_handshake.py`) from
  `ServerSettings`;
- the auth hook, asked before any handler code runs (`fluvial.grpc._auth`);
- a handler that raises a `GrpcError` (`GrpcInvalidArgument("...")`) ends its call with that
  status and message; any other exception ends it with UNKNOWN and is logged, and the server
  goes on serving every other call;
- on cancel (the caller's nursery), it stops listening, ends each call in flight with
  UNAVAILABLE ("the server is shutting down": a consumer reconnects elsewhere or later),
  closes every connection, and returns once they are closed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, Generic, NoReturn, TypeVar

import attrs
import grpclib.const
import grpclib.server
import h2.exceptions
import trio
from grpclib.const import Cardinality, Status
from grpclib.encoding.base import CodecBase
from grpclib.encoding.proto import ProtoCodec
from grpclib.events import RecvRequest, listen
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from grpclib.protocol import H2Protocol

from ._asyncio_bridge import (
    iterate_asyncio,
    open_asyncio_bridge,
    run_asyncio,
    run_asyncio_eagerly,
    run_trio,
)
from ._auth import AuthHook, CallInfo, auth_listener, call_info
from ._errors import GrpcError, MessageTooLarge, status_of
from ._handshake import watch_handshake
from ._limits import SizeLimitedCodec, limit_received_messages
from ._settings import ServerSettings, grpclib_configuration
from ._tls import server_ssl_context

log = logging.getLogger(__name__)

_Request = TypeVar("_Request")
_Reply = TypeVar("_Reply")

# How long a shutting-down server waits for its handlers to end, then for its connections to
# close, before it leaves them to the closing loop.
_SHUTDOWN_GRACE = 5.0


class _Server(grpclib.server.Server):
    """grpclib's server, remembering its open connections so that shutdown can close them
    (grpclib's `close()` stops listening and cancels handlers, but leaves connections open)."""

    def __init__(
        self, *args: Any, shutdown: _Shutdown, handshake_timeout: float, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        # grpclib answers a method it does not serve before its codec is known, without a
        # content-type, which a grpclib client reads as UNKNOWN "Missing content-type header":
        # its lookup (`mapping.get` in `request_handler`) finds one that says UNIMPLEMENTED.
        self._mapping = _MethodsOrUnimplemented(self._mapping)
        self.open_connections: dict[H2Protocol, asyncio.Event] = {}
        self.shutdown = shutdown
        self.handshake_timeout = handshake_timeout

    def _protocol_factory(self) -> H2Protocol:
        protocol = super()._protocol_factory()
        # Registered once the connection is made (after the TLS handshake): a handshake that
        # fails never makes the connection, and must leave nothing behind.
        connection_made, connection_lost = protocol.connection_made, protocol.connection_lost
        lost = asyncio.Event()
        stop_watching: Callable[[], None] = lambda: None  # noqa: E731 (replaced when made)

        def on_connection_made(transport: asyncio.BaseTransport) -> None:
            nonlocal stop_watching
            connection_made(transport)
            self.open_connections[protocol] = lost
            counting, stop_watching = watch_handshake(
                protocol.data_received,
                lambda: protocol.processor.close("no HTTP/2 preface in time"),
                self.handshake_timeout,
                transport.get_extra_info("peername"),
            )
            protocol.data_received = counting  # type: ignore[method-assign, assignment]

        def on_connection_lost(error: BaseException | None) -> None:
            try:
                stop_watching()
                connection_lost(error)
            finally:
                lost.set()
                self.open_connections.pop(protocol, None)

        protocol.connection_made = on_connection_made  # type: ignore[method-assign]
        protocol.connection_lost = on_connection_lost  # type: ignore[method-assign, assignment]
        return protocol


class _MethodsOrUnimplemented(dict[str, grpclib.const.Handler]):
    """The server's methods by path; `get` of any other path gives a handler that ends the
    call UNIMPLEMENTED naming it (after the auth hook, like any call)."""

    def get(self, path: str, default: Any = None) -> grpclib.const.Handler:
        handler = super().get(path)
        if handler is not None:
            return handler

        async def unimplemented(stream: grpclib.server.Stream[Any, Any]) -> None:
            raise GRPCError(Status.UNIMPLEMENTED, f"this server does not serve the method {path}")

        # Streaming both ways: the call ends without reading or sending a message.
        return grpclib.const.Handler(unimplemented, Cardinality.STREAM_STREAM, None, None)


@attrs.define(eq=False)
class _Shutdown:
    """Whether the server is shutting down (then a cancelled handler answers UNAVAILABLE)."""

    begun: bool = False


_Handle = Callable[[grpclib.server.Stream[Any, Any]], Awaitable[None]]


def _guarded(
    handle: _Handle, method: str, shutdown: _Shutdown, settings: ServerSettings
) -> _Handle:
    """`handle` with the server's limits, its errors' statuses and its shutdown answer."""

    async def guarded(stream: grpclib.server.Stream[Any, Any]) -> None:
        limit_received_messages(stream, settings.max_receive_message_size, method)
        try:
            await handle(stream)
        except GrpcError as error:
            raise GRPCError(status_of(error), error.details) from error
        except MessageTooLarge as error:
            log.error("%s: a reply was too large to send: %s", method, error)
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED, f"the server's reply is too large: {error}"
            ) from error
        except asyncio.CancelledError:
            if shutdown.begun:
                await _answer_shutdown(stream)
            raise
        except Exception as error:
            if not _cancel_requested():
                raise  # grpclib answers UNKNOWN and logs it
            # Cancelled (its call cut, or the server shutting down), it ends as cancelled; a
            # real error still shows, once, as itself (grpclib would log it as "Failed to
            # handle cancellation").
            if isinstance(error, _CUT_STREAM_ERRORS):
                log.debug("%s: the call was cut as its handler ended with %r", method, error)
            else:
                log.error(
                    "%s: the handler failed as its call was cancelled", method, exc_info=error
                )
            if shutdown.begun:
                await _answer_shutdown(stream)
            raise asyncio.CancelledError from error
        else:
            if _cancel_requested() and not shutdown.begun:
                raise asyncio.CancelledError  # it finished as its call was cut: nothing lost

    return guarded


# What a handler's grpclib calls raise when the peer reset the stream or the connection is
# gone (`_cancel_requested`), at the moment that cancels the handler.
_CUT_STREAM_ERRORS = (
    StreamTerminatedError,
    ProtocolError,
    h2.exceptions.ProtocolError,  # StreamClosedError: a send on a stream the peer reset
    ConnectionError,
)


def _cancel_requested() -> bool:
    """Whether grpclib has cancelled the running handler: the peer reset its stream or the
    connection was lost (grpclib's `Wrapper` cancels the task), or the server is closing.

    A trio handler's task (`run_trio`) does not end cancelled at once: trio-asyncio marks it
    cancelled only if the trio task ends by that cancel. A trio handler that returned after
    its last checkpoint, or whose grpclib call failed on the cut stream first, would end its
    task otherwise, which grpclib logs as an error with a traceback, "Failed to handle
    cancellation". The guard turns those ends into the cancel they are."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _answer_shutdown(stream: grpclib.server.Stream[Any, Any]) -> None:
    try:
        await stream.send_trailing_metadata(
            status=Status.UNAVAILABLE, status_message="the server is shutting down"
        )
    except Exception:  # the call had ended, or its connection had
        log.debug("could not answer a call at shutdown", exc_info=True)


@attrs.define(eq=False)
class _Services:
    """The `__mapping__` grpclib's server reads: every method of every service, guarded."""

    mapping: dict[str, grpclib.const.Handler]

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return self.mapping


def _bound_socket(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def _start(
    services: Iterable[Any],
    sock: socket.socket,
    settings: ServerSettings,
    auth: AuthHook | None,
    codec: CodecBase,
) -> _Server:
    # In the asyncio task: grpclib's Server looks up its loop when it is made.
    shutdown = _Shutdown()
    guarded: dict[str, grpclib.const.Handler] = {}
    for service in services:
        for name, handler in service.__mapping__().items():
            guarded[name] = handler._replace(func=_guarded(handler.func, name, shutdown, settings))
    server = _Server(
        [_Services(guarded)],
        shutdown=shutdown,
        handshake_timeout=settings.handshake_timeout,
        codec=SizeLimitedCodec(codec, max_send=settings.max_send_message_size),
        config=grpclib_configuration(settings.keepalive),
    )
    if auth is not None:
        listen(server, RecvRequest, auth_listener(auth))
    ssl_context = server_ssl_context(settings.tls) if settings.tls is not None else None
    await server.start(sock=sock, ssl=ssl_context)
    return server


async def _stop(server: _Server) -> None:
    server.shutdown.begun = True
    server.close()  # stops listening; cancels every handler (each answers UNAVAILABLE)
    try:
        async with asyncio.timeout(_SHUTDOWN_GRACE):
            await server.wait_closed()
    except TimeoutError:
        log.warning("gRPC handlers still running %.0f s after shutdown began", _SHUTDOWN_GRACE)
    waits = [lost.wait() for lost in server.open_connections.values()]
    for protocol in list(server.open_connections):
        protocol.processor.close("the server shut down")
    try:
        async with asyncio.timeout(_SHUTDOWN_GRACE):
            await asyncio.gather(*waits)
    except TimeoutError:
        log.warning("gRPC connections still open %.0f s after shutdown", _SHUTDOWN_GRACE)


async def serve_grpc(
    services: Iterable[Any],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    settings: ServerSettings | None = None,
    auth: AuthHook | None = None,
    codec: CodecBase | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve `services` on `host`:`port` until cancelled; `nursery.start` returns the port.

    `port=0` picks a free port. `services` are grpclib servables (objects whose `__mapping__()`
    returns `{"/pkg.Service/Method": grpclib.const.Handler}`); `codec` is grpclib's codec for
    their messages (protobuf by default). Binding fails with the socket's `OSError` (address
    in use) and a TLS file with `TlsConfigurationError`, before `nursery.start` returns. On
    cancel it shuts down as the module says, then raises Cancelled.
    """
    settings = settings or ServerSettings()
    sock = _bound_socket(host, port)
    bound_port = int(sock.getsockname()[1])
    # Closed on every way out, the bridge failing to open or cancelled while it opens included
    # (once the server is stopped, it has closed the socket and this close does nothing).
    with sock:
        async with open_asyncio_bridge():
            server = await run_asyncio(
                _start, services, sock, settings, auth, codec or ProtoCodec()
            )
            try:
                task_status.started(bound_port)
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await run_asyncio(_stop, server)


class ServerCall(Generic[_Request, _Reply]):
    """The trio side of one call a `trio_service` handler serves.

    `receive()` returns the client's next message, None once it has ended its side; iterating
    the call does the same. `send(message)` sends one reply (a unary method sends one). The
    call ends OK when the handler returns; a `GrpcError` it raises ends it with that status.
    """

    def __init__(self, stream: grpclib.server.Stream[_Request, _Reply], method: str) -> None:
        self._stream = stream
        self.method = method

    @property
    def info(self) -> CallInfo:
        """The method, metadata and peer of the call (as the auth hook saw them)."""
        return call_info(self.method, self._stream.metadata, self._stream.peer)

    async def receive(self) -> _Request | None:
        """The client's next message, or None when it has ended its side of the stream."""
        return await run_asyncio(self._stream.recv_message)

    def __aiter__(self) -> AsyncIterator[_Request]:
        return iterate_asyncio(self._stream)

    async def send(self, message: _Reply) -> None:
        """Send one message to the client (waits while HTTP/2 flow control says so). A send
        that need not wait completes in this task, without a schedule point."""
        await run_asyncio_eagerly(self._stream.send_message, message)


@attrs.frozen
class TrioMethod(Generic[_Request, _Reply]):
    """One method of a `trio_service`: the trio function `handler(call)` runs for each call."""

    handler: Callable[[ServerCall[_Request, _Reply]], Awaitable[None]]
    cardinality: Cardinality
    request_type: type[_Request]
    reply_type: type[_Reply]


def trio_service(methods: Mapping[str, TrioMethod[Any, Any]]) -> Any:
    """A grpclib servable of `{"/pkg.Service/Method": TrioMethod(...)}`: each call runs its
    handler in a trio task, cancelled when the call is (the peer resets it, the server shuts
    down)."""

    def grpclib_handler(path: str, method: TrioMethod[Any, Any]) -> grpclib.const.Handler:
        async def handle(stream: grpclib.server.Stream[Any, Any]) -> None:
            await run_trio(method.handler, ServerCall(stream, path))

        return grpclib.const.Handler(
            handle, method.cardinality, method.request_type, method.reply_type
        )

    return _Services({path: grpclib_handler(path, method) for path, method in methods.items()})
