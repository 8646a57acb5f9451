"""fluvial's gRPC server and channel over real loopback sockets: lifecycles, errors, cancels,
keep-alive."""

from __future__ import annotations

import gc
import socket
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from grpc_transport_helpers import (
    BUG,
    REFUSE,
    SLOW,
    STREAM,
    UNARY,
    EchoState,
    RawCodec,
    StallingProxy,
    echo_server,
    echo_service,
)

import fluvial.grpc._server
from fluvial.grpc import (
    ChannelSettings,
    GrpcCallFailed,
    GrpcInvalidArgument,
    GrpcUnavailable,
    GrpcUnimplemented,
    KeepAlive,
    ServerSettings,
)
from fluvial.grpc._asyncio_bridge import asyncio_bridge_is_open
from fluvial.grpc._channel import _grpc_timeout, open_channel
from fluvial.grpc._server import serve_grpc
from fluvial.grpc._settings import grpclib_configuration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_server_reports_its_port_and_serves_unary_and_streaming_calls() -> None:
    async with echo_server() as port, open_channel("127.0.0.1", port, codec=RawCodec()) as ch:
        assert port > 0
        assert await ch.unary(UNARY, b"hello", bytes) == b"hello"
        async with ch.open_stream(STREAM, bytes, bytes) as stream:
            replies = []
            for n in range(3):
                await stream.send(b"m%d" % n)
                replies.append(await stream.receive())
            await stream.end()
            assert await stream.receive() is None  # ended OK
        assert replies == [b"m0", b"m1", b"m2"]
    assert not asyncio_bridge_is_open()


async def test_concurrent_calls_share_one_channel() -> None:
    results: dict[int, bytes] = {}
    async with echo_server() as port, open_channel("127.0.0.1", port, codec=RawCodec()) as ch:

        async def call(n: int) -> None:
            results[n] = await ch.unary(UNARY, b"%d" % n, bytes)

        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(call, n)
    assert results == {n: b"%d" % n for n in range(20)}


async def test_a_handlers_grpc_error_reaches_the_client_typed_and_a_bug_does_not_stop_it() -> None:
    async with echo_server() as port, open_channel("127.0.0.1", port, codec=RawCodec()) as ch:
        with pytest.raises(GrpcInvalidArgument) as refused:
            await ch.unary(REFUSE, b"x", bytes)
        assert refused.value.details == "cannot take b'x'"
        assert refused.value.method == REFUSE and refused.value.code == 3
        with pytest.raises(GrpcCallFailed) as bug:
            await ch.unary(BUG, b"x", bytes)
        assert (bug.value.status, bug.value.code) == ("UNKNOWN", 2)
        with pytest.raises(GrpcUnimplemented) as unknown:
            await ch.unary("/test.Echo/Nope", b"x", bytes)
        assert unknown.value.details == "this server does not serve the method /test.Echo/Nope"
        assert await ch.unary(UNARY, b"still serving", bytes) == b"still serving"


async def test_a_server_that_is_not_there_is_unavailable() -> None:
    async with open_channel("127.0.0.1", _free_port(), codec=RawCodec()) as ch:
        with pytest.raises(GrpcUnavailable, match="connection refused"):
            await ch.unary(UNARY, b"x", bytes)
        with pytest.raises(GrpcUnavailable):
            async with ch.open_stream(STREAM, bytes, bytes):
                pass  # pragma: no cover


async def test_a_busy_port_fails_before_start_returns() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with trio.open_nursery() as nursery:
            with pytest.raises(OSError):
                await nursery.start(
                    lambda task_status: serve_grpc([], port=port, task_status=task_status)
                )


async def test_a_server_whose_asyncio_bridge_fails_to_open_closes_its_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The bind comes before the bridge: a bridge that fails to open (here: raises on entry)
    # must not leave the socket listening until the garbage collector finds it.
    @asynccontextmanager
    async def failing_bridge() -> AsyncIterator[None]:
        await trio.lowlevel.checkpoint()
        raise RuntimeError("no asyncio loop")
        yield  # pragma: no cover

    monkeypatch.setattr(fluvial.grpc._server, "open_asyncio_bridge", failing_bridge)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(RuntimeError, match="no asyncio loop"):
            await serve_grpc([])
        gc.collect()
    leaked = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaked == [], [str(w.message) for w in leaked]


async def test_cancelling_the_server_ends_calls_in_flight_unavailable_and_closes_the_port() -> None:
    state = EchoState()
    async with trio.open_nursery() as outer:
        server_scope = trio.CancelScope()

        async def server(task_status: trio.TaskStatus[int]) -> None:
            with server_scope:
                await serve_grpc(
                    [echo_service(state)],
                    codec=RawCodec(),
                    task_status=task_status,
                )

        port = await outer.start(server)
        async with open_channel("127.0.0.1", port, codec=RawCodec()) as ch:
            errors: list[BaseException] = []
            failed = trio.Event()

            async def slow_call() -> None:
                try:
                    await ch.unary(SLOW, b"x", bytes)
                except GrpcUnavailable as error:
                    errors.append(error)
                    failed.set()

            outer.start_soon(slow_call)
            await state.slow_started.wait()
            with trio.fail_after(10):
                server_scope.cancel()
                await failed.wait()
            assert "shutting down" in str(errors[0])
            assert state.cancelled == [SLOW]
            with pytest.raises(GrpcUnavailable):
                await ch.unary(UNARY, b"x", bytes)  # nothing listens any more


async def test_a_client_cancel_cancels_the_servers_handler() -> None:
    state = EchoState()
    async with (
        echo_server(state=state) as port,
        open_channel("127.0.0.1", port, codec=RawCodec()) as ch,
    ):
        with trio.move_on_after(0.3) as scope:
            await ch.unary(SLOW, b"x", bytes)
        assert scope.cancelled_caught
        with trio.fail_after(5):
            await state.slow_cancelled.wait()
        assert state.cancelled == [SLOW]
        assert await ch.unary(UNARY, b"after", bytes) == b"after"


async def test_leaving_a_stream_block_early_cancels_the_call_on_the_server() -> None:
    state = EchoState()
    async with (
        echo_server(state=state) as port,
        open_channel("127.0.0.1", port, codec=RawCodec()) as ch,
    ):
        async with ch.open_stream(STREAM, bytes, bytes) as stream:
            await stream.send(b"one")
            assert await stream.receive() == b"one"
        with trio.fail_after(5):
            await state.stream_cancelled.wait()
        assert state.cancelled == [STREAM]
        async with ch.open_stream(STREAM, bytes, bytes) as stream:  # the channel goes on
            await stream.send(b"two")
            assert await stream.receive() == b"two"


async def test_the_callers_trio_deadline_becomes_the_calls_grpc_timeout() -> None:
    assert _grpc_timeout() is None
    with trio.move_on_after(10):
        await trio.lowlevel.checkpoint()
        timeout = _grpc_timeout()
        assert timeout is not None and 10 < timeout <= 10.5  # later than the caller's cancel


def test_keep_alive_is_on_by_default_on_the_client_and_pings_without_a_cap() -> None:
    client = grpclib_configuration(ChannelSettings().keepalive).__for_client__()
    assert (client._keepalive_time, client._keepalive_timeout) == (10.0, 5.0)
    assert client._http2_max_pings_without_data == 0
    assert client._http2_min_sent_ping_interval_without_data <= 10.0
    server = grpclib_configuration(ServerSettings().keepalive).__for_server__()
    assert (server._keepalive_time, server._keepalive_timeout) == (30.0, 10.0)
    assert grpclib_configuration(None).__for_server__()._keepalive_time is None


async def test_a_stalled_connection_is_found_dead_by_keep_alive_pings() -> None:
    settings = ChannelSettings(keepalive=KeepAlive(interval=0.2, timeout=0.3))
    async with echo_server() as port, trio.open_nursery() as nursery:
        proxy = StallingProxy(port)
        proxy_port = await nursery.start(proxy.serve)
        async with (
            open_channel("127.0.0.1", proxy_port, settings=settings, codec=RawCodec()) as ch,
            ch.open_stream(STREAM, bytes, bytes) as stream,
        ):
            await stream.send(b"before")
            assert await stream.receive() == b"before"
            proxy.stall()
            with trio.fail_after(5), pytest.raises(GrpcUnavailable):
                await stream.receive()  # nothing comes: only the unanswered ping ends it
        nursery.cancel_scope.cancel()


async def test_an_idle_stream_whose_peers_answer_pings_stays_open() -> None:
    # Both sides ping every 0.1 s and the server's handshake timeout is 0.3 s: over 2 s idle
    # (20 ping intervals) the pings and their answers flow, and nothing closes the connection
    # (an answer has 1 s: a busy machine's late one is no false alarm here).
    keepalive = KeepAlive(interval=0.1, timeout=1.0)
    server = ServerSettings(keepalive=keepalive, handshake_timeout=0.3)
    async with echo_server(settings=server) as port, trio.open_nursery() as nursery:
        proxy = StallingProxy(port)
        proxy_port = await nursery.start(proxy.serve)
        async with (
            open_channel(
                "127.0.0.1",
                proxy_port,
                settings=ChannelSettings(keepalive=keepalive),
                codec=RawCodec(),
            ) as ch,
            ch.open_stream(STREAM, bytes, bytes) as stream,
        ):
            await stream.send(b"before")
            assert await stream.receive() == b"before"
            before = proxy.forwarded
            await trio.sleep(2.0)
            # PING frames are 17 bytes; each side's, and each answer, at least every 0.2 s.
            assert proxy.forwarded - before >= 4 * 17 * 5
            with trio.fail_after(5):
                await stream.send(b"after")
                assert await stream.receive() == b"after"
        nursery.cancel_scope.cancel()


async def test_without_keep_alive_a_stalled_connection_is_not_noticed() -> None:
    settings = ChannelSettings(keepalive=None)
    async with echo_server() as port, trio.open_nursery() as nursery:
        proxy = StallingProxy(port)
        proxy_port = await nursery.start(proxy.serve)
        async with (
            open_channel("127.0.0.1", proxy_port, settings=settings, codec=RawCodec()) as ch,
            ch.open_stream(STREAM, bytes, bytes) as stream,
        ):
            await stream.send(b"before")
            assert await stream.receive() == b"before"
            proxy.stall()
            with trio.move_on_after(1.0) as scope:  # twice what the pings take above
                await stream.receive()
            assert scope.cancelled_caught
        nursery.cancel_scope.cancel()


async def test_a_channel_reconnects_on_the_next_call_after_the_server_came_back() -> None:
    async with open_channel("127.0.0.1", port := _free_port(), codec=RawCodec()) as ch:
        for attempt in range(2):  # the same port, twice: the channel's connection is remade
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    lambda task_status: serve_grpc(
                        [echo_service(EchoState())],
                        port=port,
                        codec=RawCodec(),
                        task_status=task_status,
                    )
                )
                assert await ch.unary(UNARY, b"%d" % attempt, bytes) == b"%d" % attempt
                nursery.cancel_scope.cancel()
            with pytest.raises(GrpcUnavailable):
                await ch.unary(UNARY, b"down", bytes)
