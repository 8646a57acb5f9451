"""Message size limits and bad peers: an oversize message or garbage ends only its own call or
connection, and the server keeps serving everyone else. Real loopback sockets."""

from __future__ import annotations

import pytest
import trio
from grpc_transport_helpers import (
    STREAM,
    UNARY,
    EchoState,
    RawCodec,
    echo_server,
    grpc_frame,
    raw_h2_call,
)

from fluvial.core.errors import UsageError
from fluvial.grpc import (
    ChannelSettings,
    GrpcResourceExhausted,
    MessageTooLarge,
    ServerSettings,
)
from fluvial.grpc._channel import open_channel

SMALL_SERVER = ServerSettings(max_receive_message_size=1000, max_send_message_size=100_000)


async def test_an_oversize_message_ends_its_call_resource_exhausted_and_others_go_on() -> None:
    async with (
        echo_server(settings=SMALL_SERVER) as port,
        open_channel("127.0.0.1", port, codec=RawCodec()) as ch,
        ch.open_stream(STREAM, bytes, bytes) as neighbour,
    ):
        await neighbour.send(b"before")
        assert await neighbour.receive() == b"before"
        assert await ch.unary(UNARY, b"x" * 1000, bytes) == b"x" * 1000  # at the limit
        with pytest.raises(GrpcResourceExhausted, match=r"1001 bytes.*1000 bytes"):
            await ch.unary(UNARY, b"x" * 1001, bytes)
        await neighbour.send(b"after")  # the other stream on the connection is untouched
        assert await neighbour.receive() == b"after"
        assert await ch.unary(UNARY, b"y", bytes) == b"y"


async def test_the_length_prefix_is_checked_before_the_body_is_waited_for() -> None:
    # A peer announces 1 GiB and sends 3 bytes: the answer comes at once, not after 1 GiB.
    state = EchoState()
    async with echo_server(settings=SMALL_SERVER, state=state) as port:
        with trio.fail_after(5):
            answer = await raw_h2_call(port, UNARY, grpc_frame(b"abc", announced=2**30))
        assert answer["grpc-status"] == "8"  # RESOURCE_EXHAUSTED
        assert "1073741824 bytes" in answer["grpc-message"]
        async with open_channel("127.0.0.1", port, codec=RawCodec()) as ch:
            assert await ch.unary(UNARY, b"ok", bytes) == b"ok"


async def test_a_stream_that_ends_inside_a_message_is_invalid_argument() -> None:
    async with echo_server() as port:
        with trio.fail_after(5):
            answer = await raw_h2_call(
                port, UNARY, grpc_frame(b"abc", announced=10), end_stream=True
            )
        assert answer["grpc-status"] == "3"
        assert "middle of a message" in answer["grpc-message"]


async def test_a_compressed_message_is_refused_by_name() -> None:
    async with echo_server() as port:
        with trio.fail_after(5):
            answer = await raw_h2_call(port, UNARY, b"\x01" + grpc_frame(b"abc")[1:])
        assert answer["grpc-status"] == "12"
        assert "compressed" in answer["grpc-message"]


async def test_the_client_refuses_a_reply_over_its_receive_limit() -> None:
    settings = ChannelSettings(max_receive_message_size=100)
    async with (
        echo_server() as port,
        open_channel("127.0.0.1", port, settings=settings, codec=RawCodec()) as ch,
    ):
        async with ch.open_stream(STREAM, bytes, bytes) as stream:
            await stream.send(b"z" * 101)  # the server echoes it back: too large for us
            with pytest.raises(GrpcResourceExhausted, match="101 bytes"):
                await stream.receive()
        assert await ch.unary(UNARY, b"z" * 100, bytes) == b"z" * 100


async def test_sending_over_the_send_limit_raises_and_sends_nothing() -> None:
    settings = ChannelSettings(max_send_message_size=10)
    async with (
        echo_server() as port,
        open_channel("127.0.0.1", port, settings=settings, codec=RawCodec()) as ch,
    ):
        with pytest.raises(MessageTooLarge) as raised:
            await ch.unary(UNARY, b"q" * 11, bytes)
        assert (raised.value.size, raised.value.limit) == (11, 10)
        assert isinstance(raised.value, UsageError)
        assert await ch.unary(UNARY, b"q" * 10, bytes) == b"q" * 10


def test_limits_must_be_positive_byte_counts() -> None:
    with pytest.raises(UsageError, match="max_receive_message_size"):
        ServerSettings(max_receive_message_size=0)
    with pytest.raises(UsageError, match="max_send_message_size"):
        ChannelSettings(max_send_message_size=-1)


async def _serving_during(port: int, bad_peer: trio.Event) -> list[bytes]:
    """Echo on an open stream and unary calls while `bad_peer` is not set; then once more."""
    replies: list[bytes] = []
    async with (
        open_channel("127.0.0.1", port, codec=RawCodec()) as ch,
        ch.open_stream(STREAM, bytes, bytes) as stream,
    ):
        n = 0
        while not bad_peer.is_set() and n < 200:
            await stream.send(b"%d" % n)
            replies.append(await stream.receive() or b"")
            replies.append(await ch.unary(UNARY, b"u%d" % n, bytes))
            n += 1
            await trio.sleep(0.005)
        await stream.send(b"last")
        replies.append(await stream.receive() or b"")
        replies.append(await ch.unary(UNARY, b"last unary", bytes))
    return replies


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"\x16\x03\x01\x02\x00" + bytes(range(256)) * 8, id="tls-hello-to-plaintext"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http1"),
        pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 64, id="preface-then-junk"),
        pytest.param(b"PRI * HTTP/2.0\r\n", id="half-preface-left-open"),
        pytest.param(bytes(4096), id="zeros"),
    ],
)
async def test_a_peer_sending_garbage_does_not_disturb_the_other_calls(garbage: bytes) -> None:
    async with echo_server() as port:
        done = trio.Event()
        results: list[list[bytes]] = []

        async def good_client() -> None:
            results.append(await _serving_during(port, done))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(good_client)
            with trio.fail_after(10):
                for _ in range(5):  # several bad connections, some left open
                    bad = await trio.open_tcp_stream("127.0.0.1", port)
                    await bad.send_all(garbage)
                    with trio.move_on_after(0.05):
                        await bad.receive_some(65536)
                    if garbage.startswith(b"PRI") and len(garbage) < 24:
                        nursery.start_soon(_hold_open, bad)
                    else:
                        await bad.aclose()
            done.set()
        replies = results[0]
        assert replies[-2:] == [b"last", b"last unary"]
        assert all(r != b"" for r in replies)


async def _hold_open(stream: trio.SocketStream) -> None:
    with trio.move_on_after(0.5):
        await stream.receive_some(65536)
    await stream.aclose()
