"""What the server does with peers that misbehave at the connection level: a connection
dropped or a stream reset in the middle of a call (the handler is cancelled, however it ends,
and nothing is logged as an error but a real error), a peer that stops answering the server's
keep-alive pings (closed, its handler cancelled), a connection that never finishes its
HTTP/2 preface (closed after the handshake timeout), and a call to a method the server does
not serve (UNIMPLEMENTED naming it, after the auth hook)."""

from __future__ import annotations

import logging

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
import trio
from grpc_transport_helpers import (
    CUT,
    FLOOD,
    STREAM,
    UNARY,
    EchoState,
    RawCodec,
    echo_server,
    grpc_frame,
    request_headers,
)

from fluvial.core.errors import UsageError
from fluvial.grpc import (
    CallInfo,
    Deny,
    GrpcUnauthenticated,
    GrpcUnimplemented,
    KeepAlive,
    ServerSettings,
)
from fluvial.grpc._channel import open_channel

TIMEOUT = 10.0


async def _open_stream(
    port: int, method: str = STREAM, *, window: int = 65535, first: bytes = b"hello"
) -> tuple[trio.SocketStream, h2.connection.H2Connection, int]:
    """A raw HTTP/2 connection with one stream of `method` open, its `first` message
    answered; the server may send `window` bytes on the stream before the client opens it
    further."""
    connection = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    connection.initiate_connection()
    connection.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
    sock = await trio.open_tcp_stream("127.0.0.1", port)
    stream_id = connection.get_next_available_stream_id()
    connection.send_headers(
        stream_id,
        request_headers(port, method),
    )
    connection.send_data(stream_id, grpc_frame(first))
    await sock.send_all(connection.data_to_send())
    answered = False
    while not answered:
        data = await sock.receive_some(65536)
        assert data, "the server closed the connection"
        for event in connection.receive_data(data):
            answered |= isinstance(event, h2.events.DataReceived)
        await sock.send_all(connection.data_to_send())
    return sock, connection, stream_id


async def _receive_until_blocked(
    sock: trio.SocketStream, connection: h2.connection.H2Connection, window: int
) -> None:
    """Read (acknowledging nothing) until the server has filled the stream's `window`."""
    # Nothing is acknowledged: what the connection's window lost is what was received.
    while 65535 - connection.inbound_flow_control_window < window:
        data = await sock.receive_some(65536)
        assert data, "the server closed the connection"
        connection.receive_data(data)
        await sock.send_all(connection.data_to_send())


async def test_a_connection_dropped_mid_stream_cancels_the_handler_and_logs_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = EchoState()
    caplog.set_level(logging.INFO)
    with trio.fail_after(TIMEOUT):
        async with echo_server(state=state) as port:
            for _ in range(3):
                state.stream_cancelled = trio.Event()
                sock, _, _ = await _open_stream(port)
                await sock.aclose()  # no RST_STREAM, no GOAWAY: the peer is gone
                await state.stream_cancelled.wait()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    assert state.cancelled == [STREAM] * 3


@pytest.mark.parametrize("how", [b"return", b"stream-error"])
async def test_a_handler_that_ends_otherwise_as_its_connection_drops_logs_no_error(
    how: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # grpclib cancels the handler's task for the lost connection, and logs "Failed to handle
    # cancellation" (an ERROR with a traceback) unless the task ends cancelled; a trio
    # handler's ends as the trio task does, which the cancel may meet after its last
    # checkpoint, or after a grpclib call failed on the cut stream.
    state = EchoState()
    caplog.set_level(logging.INFO)
    with trio.fail_after(TIMEOUT):
        async with echo_server(state=state) as port:
            for _ in range(3):
                state.cut_ended = trio.Event()
                sock, _, _ = await _open_stream(port, CUT, first=how)
                await sock.aclose()
                await state.cut_ended.wait()
            # The server goes on serving.
            async with open_channel("127.0.0.1", port, codec=RawCodec()) as channel:
                assert await channel.unary(UNARY, b"still here", bytes) == b"still here"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [(r.getMessage(), r.exc_info) for r in errors]
    cancelled = [r for r in caplog.records if r.getMessage().startswith("Request was cancelled")]
    assert len(cancelled) == 3  # grpclib's INFO: it saw each end as the cancel it was


async def test_a_real_error_of_a_handler_whose_connection_dropped_is_still_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = EchoState()
    with trio.fail_after(TIMEOUT):
        async with echo_server(state=state) as port:
            sock, _, _ = await _open_stream(port, CUT, first=b"bug")
            await sock.aclose()
            await state.cut_ended.wait()
    (error,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert error.getMessage() == f"{CUT}: the handler failed as its call was cancelled"
    assert error.exc_info is not None
    assert repr(error.exc_info[1]) == repr(ValueError("a bug in the handler's cleanup"))


async def test_a_stream_reset_as_flow_control_opens_cancels_the_sending_handler_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The peer's last bytes open the window of a handler blocked on flow control and reset
    # its stream: the handler's send wakes on the closed stream as its call is cancelled.
    state = EchoState()
    caplog.set_level(logging.INFO)
    with trio.fail_after(TIMEOUT):
        async with echo_server(state=state) as port:
            for _ in range(5):
                state.flood_ended = trio.Event()
                sock, connection, stream_id = await _open_stream(port, FLOOD, window=100)
                await _receive_until_blocked(sock, connection, 100)
                connection.increment_flow_control_window(65535, stream_id=stream_id)
                connection.reset_stream(stream_id)
                await sock.send_all(connection.data_to_send())
                await state.flood_ended.wait()
                await sock.aclose()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [(r.getMessage(), r.exc_info) for r in errors]


async def test_a_connection_dropped_while_the_handler_sends_logs_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = EchoState()
    caplog.set_level(logging.INFO)
    with trio.fail_after(TIMEOUT):
        async with echo_server(state=state) as port:
            for _ in range(5):
                state.flood_ended = trio.Event()
                sock, _, _ = await _open_stream(port, FLOOD)
                await sock.aclose()
                await state.flood_ended.wait()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [(r.getMessage(), r.exc_info) for r in errors]


async def test_a_peer_that_stops_answering_pings_is_closed_by_the_servers_keep_alive() -> None:
    # A consumer that hung (or whose NAT forgot it) with a stream open: without the server's
    # pings its handler would wait for it forever.
    state = EchoState()
    keepalive = KeepAlive(interval=0.2, timeout=0.3)
    with trio.fail_after(TIMEOUT):
        async with echo_server(settings=ServerSettings(keepalive=keepalive), state=state) as port:
            connecting = trio.current_time()  # before the server's accept, which starts its timer
            sock, connection, _ = await _open_stream(port)
            # From now on the peer is dead: what comes is read, nothing is answered (h2 queues
            # each PING's ACK; it is never sent).
            pings = 0
            bound = keepalive.interval + keepalive.timeout + 2
            with trio.move_on_after(bound) as waiting:
                while data := await sock.receive_some(65536):
                    events = connection.receive_data(data)
                    pings += sum(isinstance(e, h2.events.PingReceived) for e in events)
            closed_after = trio.current_time() - connecting
            await sock.aclose()
            assert not waiting.cancelled_caught, f"still open after {closed_after:.1f}s"
            assert pings >= 1
            assert closed_after >= keepalive.interval + keepalive.timeout
            await state.stream_cancelled.wait()
            assert state.cancelled == [STREAM]
            # The server goes on serving.
            async with open_channel("127.0.0.1", port, codec=RawCodec()) as channel:
                assert await channel.unary(UNARY, b"still here", bytes) == b"still here"


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
HANDSHAKE = ServerSettings(handshake_timeout=0.5)


async def _closed_after(sock: trio.SocketStream, start: float | None = None) -> float:
    """Seconds from `start` (now) until the server closes `sock` (what it sends is read and
    dropped)."""
    start = trio.current_time() if start is None else start
    while await sock.receive_some(65536):
        pass
    return trio.current_time() - start


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(b"", id="nothing"),
        pytest.param(PREFACE[:12], id="half-the-magic"),
        pytest.param(PREFACE + EMPTY_SETTINGS[:5], id="magic-and-half-a-settings-frame"),
    ],
)
async def test_a_connection_without_a_whole_preface_is_closed_after_the_handshake_timeout(
    sent: bytes,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with echo_server(settings=HANDSHAKE) as port:
            # From before the connection: the server's timeout runs from its accept, later.
            # (Measured from after the send, a busy machine's delay in between made it short.)
            connecting = trio.current_time()
            async with await trio.open_tcp_stream("127.0.0.1", port) as sock:
                await sock.send_all(sent)
                assert await _closed_after(sock, connecting) >= 0.5
            # The server goes on serving.
            async with open_channel("127.0.0.1", port, codec=RawCodec()) as channel:
                assert await channel.unary(UNARY, b"still here", bytes) == b"still here"


async def test_a_connection_whose_preface_came_in_parts_stays_open() -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            echo_server(settings=HANDSHAKE) as port,
            await trio.open_tcp_stream("127.0.0.1", port) as sock,
        ):
            for part in (PREFACE[:10], PREFACE[10:], EMPTY_SETTINGS[:4], EMPTY_SETTINGS[4:]):
                await sock.send_all(part)
                await trio.sleep(0.1)
            with trio.move_on_after(1.5) as idle:  # three handshake timeouts
                await _closed_after(sock)
            assert idle.cancelled_caught  # not closed


def test_the_handshake_timeout_must_be_positive() -> None:
    with pytest.raises(UsageError, match="handshake_timeout"):
        ServerSettings(handshake_timeout=0)


async def test_a_call_to_a_method_the_server_does_not_serve_is_unimplemented_naming_it() -> None:
    async with (
        echo_server() as port,
        open_channel("127.0.0.1", port, codec=RawCodec()) as channel,
    ):
        with trio.fail_after(TIMEOUT):
            with pytest.raises(GrpcUnimplemented) as unary:
                await channel.unary("/test.Echo/Nope", b"x", bytes)
            with pytest.raises(GrpcUnimplemented) as streaming:
                async with channel.open_stream("/other.Service/Stream", bytes, bytes) as stream:
                    await stream.send(b"x")
                    await stream.receive()
            assert await channel.unary(UNARY, b"still here", bytes) == b"still here"
    assert unary.value.details == "this server does not serve the method /test.Echo/Nope"
    assert streaming.value.details == "this server does not serve the method /other.Service/Stream"
    assert streaming.value.code == 12


async def test_an_unknown_method_is_asked_of_the_auth_hook_first() -> None:
    asked: list[str] = []

    def deny(info: CallInfo) -> Deny:
        asked.append(info.method)
        return Deny.unauthenticated("no token")

    async with (
        echo_server(auth=deny) as port,
        open_channel("127.0.0.1", port, codec=RawCodec()) as channel,
    ):
        with trio.fail_after(TIMEOUT), pytest.raises(GrpcUnauthenticated):
            await channel.unary("/test.Echo/Nope", b"x", bytes)
    assert asked == ["/test.Echo/Nope"]
