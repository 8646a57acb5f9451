"""The in-stream replays of one producer stream, run as the stream core says, without gRPC.

The stream core (`ProducerStream`) decides which replays run (at most 3 at once, the rest
queued up to a bound, a newer request of an entity replacing its older one) and answers
`ReplaysChanged`;
`StreamReplays.apply` carries that out: it starts a task per replay in the caller's nursery,
cancels the superseded ones, and sends each replay's events (their public form, in seq nr
order) to a bounded channel as `ReplayBatch`es, the last one marked, or a `ReplaySuperseded`
for a request a newer one replaced, or a `ReplayRefused` for one the full queue did not admit,
or a `ReplayFailed` for one whose journal read failed (logged; the stream goes on, and the
consumer asks again by the unary call). When a replay has
sent its last batch, or failed, it tells the core, and starts what the core answers (the next
queued replay).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from fluvial.core.records import EventRecord
from fluvial.core.replication_stream import ProducerStream
from fluvial.core.replication_stream_messages import Replay, ReplaysChanged
from fluvial.core.serialization import SerializerRegistry
from fluvial.grpc._producer_lookups import replay_batches
from fluvial.grpc._producer_source import EventProducerSource
from fluvial.journal.api import Journal

log = logging.getLogger("fluvial.grpc.producer")


@attrs.frozen(kw_only=True)
class ReplayBatch:
    """Events of the in-stream replay `correlation_id` of `persistence_id`, in seq nr order;
    `last` on its final batch (which may be empty: the journal had no more)."""

    correlation_id: int
    persistence_id: str
    records: Sequence[EventRecord]
    last: bool


@attrs.frozen(kw_only=True)
class ReplaySuperseded:
    """The replay `correlation_id` was replaced by a newer request of its entity: nothing
    more of it comes (what it sent before stays valid: events are events)."""

    correlation_id: int


@attrs.frozen(kw_only=True)
class ReplayRefused:
    """The replay `correlation_id` was not admitted: `max_queued` replays of the stream
    waited already. Nothing of it comes."""

    correlation_id: int
    max_queued: int


@attrs.frozen(kw_only=True)
class ReplayFailed:
    """Reading the journal for the replay `correlation_id` failed (`message` says how):
    nothing more of it comes (what it sent before stays valid)."""

    correlation_id: int
    message: str


ReplayAnswer = ReplayBatch | ReplaySuperseded | ReplayRefused | ReplayFailed


class StreamReplays:
    """Runs the replays of one stream in `nursery` (see the module docstring)."""

    def __init__(
        self,
        nursery: trio.Nursery,
        stream: ProducerStream[Any, Any],
        journal: Journal,
        source: EventProducerSource[Any, Any],
        serializers: SerializerRegistry,
        send: trio.MemorySendChannel[ReplayAnswer],
        *,
        batch_size: int = 500,
    ) -> None:
        self._nursery = nursery
        self._stream = stream
        self._journal = journal
        self._source = source
        self._serializers = serializers
        self._send = send
        self._batch_size = batch_size
        self._scopes: dict[int, trio.CancelScope] = {}  # of the running replays

    async def apply(self, change: ReplaysChanged) -> None:
        """Cancel, answer as superseded or refused, and start what `change` names."""
        for replay in change.cancel:
            self._scopes.pop(replay.correlation_id).cancel()
        for replay in change.superseded:
            await self._send.send(ReplaySuperseded(correlation_id=replay.correlation_id))
        max_queued = self._stream.replays.max_queued
        for replay in change.refused:
            await self._send.send(
                ReplayRefused(correlation_id=replay.correlation_id, max_queued=max_queued)
            )
        for replay in change.start:
            scope = self._scopes[replay.correlation_id] = trio.CancelScope()
            self._nursery.start_soon(self._run, replay, scope)

    async def _run(self, replay: Replay, scope: trio.CancelScope) -> None:
        init = self._stream.init
        assert init is not None, "replays start only on an open stream"
        with scope:
            answer, pid = replay.correlation_id, replay.persistence_id
            pending: list[EventRecord] | None = None
            try:
                # Each batch goes once the next is read, so the final one can carry `last`.
                async for batch in replay_batches(
                    self._journal,
                    self._source,
                    self._serializers,
                    replay.persistence_id,
                    replay.from_seq_nr,
                    replay.to_seq_nr,
                    batch_size=self._batch_size,
                    slices=init.slices,
                ):
                    if pending is not None:
                        await self._send.send(
                            ReplayBatch(
                                correlation_id=answer,
                                persistence_id=pid,
                                records=pending,
                                last=False,
                            )
                        )
                    pending = batch
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise  # the call is ending: not the journal's failure
            except Exception as error:
                log.warning("replay of %s (correlation id %d) failed: %r", pid, answer, error)
                await self._send.send(ReplayFailed(correlation_id=answer, message=repr(error)))
            else:
                await self._send.send(
                    ReplayBatch(
                        correlation_id=answer, persistence_id=pid, records=pending or [], last=True
                    )
                )
            if self._scopes.get(answer) is not scope:
                # Cancelled once the consumer had taken the last batch (the send had
                # completed): the core has let this replay go already.
                return
            del self._scopes[answer]
            await self.apply(self._stream.replay_finished(answer))
