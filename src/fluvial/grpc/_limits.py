"""Message size limits, which grpclib does not have.

Receiving: grpclib reads a message's 5-byte prefix (compressed flag, length) and then buffers
the whole announced length before decoding, however large. `limit_received_messages` puts a
proxy in front of the HTTP/2 stream of a grpclib `Stream` that checks each prefix and ends the
call with RESOURCE_EXHAUSTED before a byte of an oversize body is waited for, so that a peer's
4 GiB length costs nothing. It relies on two facts of grpclib 0.4 (pinned below 0.5 in
pyproject.toml; tests/grpc/test_transport_limits.py fails if they change): a grpclib `Stream`
keeps its HTTP/2 stream in `_stream`, and receives a message as `recv_data(5)` then
`recv_data(length)`.

Sending: `SizeLimitedCodec` wraps the codec and refuses to encode a message larger than the
limit (`MessageTooLarge`: nothing is sent).
"""

from __future__ import annotations

from typing import Any

from grpclib.const import Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError

from ._errors import MessageTooLarge

_PREFIX_SIZE = 5


class _LimitedReceive:
    """Stands for grpclib's `protocol.Stream`; only `recv_data` is its own."""

    def __init__(self, inner: Any, limit: int, method: str) -> None:
        self._inner = inner
        self._limit = limit
        self._method = method
        self._next_is_prefix = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def recv_data(self, size: int) -> bytes:
        try:
            data: bytes = await self._inner.recv_data(size)
        except AssertionError:
            # grpclib's way of saying that the stream ended inside a message.
            raise GRPCError(
                Status.INVALID_ARGUMENT, "the stream ended in the middle of a message"
            ) from None
        if not self._next_is_prefix:
            self._next_is_prefix = True
            return data
        if len(data) < _PREFIX_SIZE:
            return data  # the end of the stream: grpclib reads no body after it
        self._next_is_prefix = False
        if data[0] != 0:
            raise GRPCError(
                Status.UNIMPLEMENTED, "compressed messages are not supported (grpc-encoding)"
            )
        length = int.from_bytes(data[1:_PREFIX_SIZE], "big")
        if length > self._limit:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"a message of {length} bytes is larger than this side's "
                f"max_receive_message_size of {self._limit} bytes ({self._method})",
            )
        return data


def limit_received_messages(stream: Any, limit: int, method: str) -> None:
    """Make the grpclib server or client `stream` refuse received messages over `limit` bytes
    (a client stream once its request is sent: its HTTP/2 stream exists only then)."""
    inner = stream._stream
    if not isinstance(inner, _LimitedReceive):
        stream._stream = _LimitedReceive(inner, limit, method)


class SizeLimitedCodec(CodecBase):
    """A codec that encodes with `inner` and refuses messages over `max_send` bytes."""

    def __init__(self, inner: CodecBase, *, max_send: int) -> None:
        self._inner = inner
        self._max_send = max_send

    @property
    def __content_subtype__(self) -> str:
        return self._inner.__content_subtype__

    def encode(self, message: Any, message_type: Any) -> bytes:
        data = self._inner.encode(message, message_type)
        if len(data) > self._max_send:
            raise MessageTooLarge(
                size=len(data),
                limit=self._max_send,
                message_type=getattr(message_type, "__name__", repr(message_type)),
            )
        return data

    def decode(self, data: bytes, message_type: Any) -> Any:
        return self._inner.decode(data, message_type)
