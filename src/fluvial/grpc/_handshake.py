"""The HTTP/2 handshake a server waits for, and how long: a connection is closed unless the
client's connection preface (the 24-byte magic, then a SETTINGS frame) has fully arrived
within `ServerSettings.handshake_timeout` of the connection being made.

Without it, a peer that sends half a preface (or nothing) holds a socket and its buffers
until it closes them itself. h2 checks what the preface says; this only counts that it is
all there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

log = logging.getLogger("fluvial.grpc.server")

_MAGIC: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_FRAME_HEADER: Final = 9  # length (3 bytes), type, flags, stream id (4 bytes)


class PrefaceCounter:
    """Counts the bytes of a client's connection preface as they arrive."""

    def __init__(self) -> None:
        self._head = b""  # the magic and the SETTINGS frame's header, as far as received
        self._needed: int | None = None  # the preface's length, once its frame header is in
        self._received = 0

    def feed(self, data: bytes) -> bool:
        """Whether the whole preface has arrived, with `data` (the bytes that came next)."""
        self._received += len(data)
        if self._needed is None:
            self._head += data[: len(_MAGIC) + _FRAME_HEADER - len(self._head)]
            if len(self._head) < len(_MAGIC) + _FRAME_HEADER:
                return False
            length = int.from_bytes(self._head[len(_MAGIC) : len(_MAGIC) + 3], "big")
            self._needed = len(_MAGIC) + _FRAME_HEADER + length
        return self._received >= self._needed


def watch_handshake(
    data_received: Callable[[bytes], None],
    close: Callable[[], None],
    timeout: float,
    peer: object,
) -> tuple[Callable[[bytes], None], Callable[[], None]]:
    """Start the handshake timer of one connection: `close()` runs after `timeout` seconds
    unless the preface has arrived by then. Returns the `data_received` to install in the
    protocol's place (it counts the preface, then passes the bytes on) and a function that
    stops the timer (for a connection lost before)."""
    counter = PrefaceCounter()

    def expire() -> None:
        log.info("closing the connection of %s: no HTTP/2 preface within %s s", peer, timeout)
        close()

    timer = asyncio.get_running_loop().call_later(timeout, expire)

    def counting(data: bytes) -> None:
        if not timer.cancelled() and counter.feed(data):
            timer.cancel()
        data_received(data)

    return counting, timer.cancel
