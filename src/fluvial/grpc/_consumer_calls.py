"""The consumer's unary calls to a producer, each under its deadline, retried while unavailable.

`UnaryCalls.call` makes one call (`Replay`, `LoadEvent`, `EventTimestamp`,
`LatestEventTimestamp`) within `ConsumerSettings.call_timeout`: a `GrpcUnavailable` (the
connection refused, reset or closed: a producer restarting, a proxy dropping the connection)
is tried again after the `reconnect` backoff for as long as the deadline leaves time for it,
and raised when it does not; the channel connects again on the next call. An answer that does
not come by the deadline raises `GrpcDeadlineExceeded`; any other error (NOT_FOUND,
INVALID_ARGUMENT, a TLS handshake that fails, ...) is raised at once, as itself. Retrying is
safe: each of these calls only reads.

`UnaryCalls.replay` is a replay by the unary `Replay`, asked again from the seq nr after the
last event of an answer that is not complete (the producer bounds each answer).
"""

from __future__ import annotations

import logging
import random
from typing import Any, Protocol, TypeVar

import trio

from fluvial.core.ids import SliceRange
from fluvial.core.records import EventRecord

from ._batch_codec import decode_events
from ._channel import Metadata
from ._consumer_settings import ConsumerSettings
from ._consumer_wire import REPLAY, ProducerProtocolError, check_replayed, check_slices
from ._errors import GrpcDeadlineExceeded, GrpcUnavailable, TlsHandshakeFailed
from ._proto.fluvial import v1 as pb

log = logging.getLogger("fluvial.grpc.consumer")

_Reply = TypeVar("_Reply")


class UnaryChannel(Protocol):
    """What the unary calls need of a channel (`fluvial.grpc._channel.GrpcChannel`)."""

    async def unary(
        self, method: str, request: Any, reply_type: type[_Reply], *, metadata: Metadata = ()
    ) -> _Reply: ...


class UnaryCalls:
    """The unary calls of one consumer's sources of `stream_id` in `slices` (see the module
    docstring)."""

    def __init__(
        self, channel: UnaryChannel, settings: ConsumerSettings, stream_id: str, slices: SliceRange
    ) -> None:
        self.channel = channel
        self.settings = settings
        self.stream_id = stream_id
        self.slices = slices

    async def call(self, method: str, request: Any, reply_type: type[_Reply]) -> _Reply:
        """`method`'s answer to `request`, retried while unavailable (module docstring)."""
        timeout = self.settings.call_timeout
        deadline = trio.current_time() + timeout
        attempt = 0
        with trio.move_on_at(deadline):
            while True:
                try:
                    return await self.channel.unary(
                        method, request, reply_type, metadata=self.settings.metadata
                    )
                except GrpcUnavailable as error:
                    if isinstance(error, TlsHandshakeFailed):
                        raise  # a certificate waiting does not cure
                    delay = self.settings.reconnect.delay(attempt, random.random())
                    if trio.current_time() + delay >= deadline:
                        raise  # no time left for another attempt: the last error says why
                    log.info("%s unavailable, trying again in %.2fs: %s", method, delay, error)
                    attempt += 1
                    await trio.sleep(delay)
        raise GrpcDeadlineExceeded(
            f"no answer within {timeout}s (ConsumerSettings.call_timeout)", method=method
        )

    async def replay(self, persistence_id: str, first: int, last: int) -> list[EventRecord]:
        """`persistence_id`'s events `first..last` by the unary `Replay`, asked again after
        the last event of an answer that is not complete; checked like every answer
        (`ProducerProtocolError`)."""
        replayed: list[EventRecord] = []
        while first <= last:
            request = pb.ReplayRequest(
                stream_id=self.stream_id,
                persistence_id=persistence_id,
                from_seq_nr=first,
                to_seq_nr=last,
            )
            reply = await self.call(REPLAY, request, pb.ReplayResponse)
            if reply.batch is None:
                raise ProducerProtocolError(f"a replay of {persistence_id} answered no batch")
            records = decode_events(reply.batch.events, encoding=int(reply.batch.encoding))
            check_slices(records, self.slices)
            check_replayed(records, persistence_id, first, last)
            replayed.extend(records)
            if reply.batch.replay is not None and reply.batch.replay.complete:
                break
            if not records:
                raise ProducerProtocolError(
                    f"a replay of {persistence_id} from seq nr {first} answered no event and "
                    "is not complete"
                )
            first = records[-1].seq_nr + 1
        return replayed
