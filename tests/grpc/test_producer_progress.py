"""The producer's sender sends each followed event once (`_producer_progress.SentOnce`): what
went LIVE is left out of the query's batches and a QueryProgress of the query's position falls
due; what the query sent first is left out of the LIVE batch; a copy that differs is sent."""

from __future__ import annotations

import msgspec
import trio
import trio.testing
from consumer_fakes import record

from fluvial.core.offsets import TimestampOffset
from fluvial.grpc._producer_progress import SentOnce
from fluvial.grpc._proto.fluvial import v1 as pb


async def test_the_query_leaves_out_what_went_live_and_a_progress_falls_due(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a1, b1, c1 = record("a", 1, 100), record("b", 1, 100), record("c", 1, 200)
    sent = SentOnce(TimestampOffset.start(), delay=0.1)
    assert sent.live([a1, c1]) == [a1, c1]
    assert sent.query([a1, b1]) == [b1]  # b1 did not come by LIVE (dropped from its buffer)
    assert sent.due == 0.1
    await trio.sleep(0.05)
    assert sent.query([c1]) == []
    assert sent.due == 0.1  # the first left out sets it
    progress = pb.StreamEventsResponse.parse(sent.progress().data).query_progress
    assert progress is not None
    assert (progress.timestamp, progress.seen) == (200, {c1.persistence_id: 1})
    assert sent.due == float("inf")
    assert sent.query([record("d", 1, 300)]) == [record("d", 1, 300)]
    assert sent.due == float("inf")  # nothing left out: no progress needed


async def test_the_live_path_leaves_out_what_the_query_sent_first() -> None:
    a1, a2 = record("a", 1, 100), record("a", 2, 200)
    sent = SentOnce(TimestampOffset.start(), delay=0.1)
    assert sent.query([a1, a2]) == [a1, a2]  # read before the LIVE copies arrived
    assert sent.live([a1, a2]) == []
    assert sent.due == float("inf")  # the QUERY batches moved the consumer already


async def test_a_copy_that_differs_from_the_one_sent_is_sent() -> None:
    a1 = record("a", 1, 100)
    placeholder = msgspec.structs.replace(a1, payload=None)
    sent = SentOnce(TimestampOffset.start(), delay=0.1)
    assert sent.live([placeholder]) == [placeholder]
    assert sent.query([a1]) == [a1]
    assert sent.due == float("inf")


async def test_events_the_consumers_filter_excluded_move_the_progress_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A consumer whose filter leaves out a whole QUERY batch still learns where the query
    has come: its runner moves the offsets of the slices without events there."""
    a1, x1, x2 = record("a", 1, 100), record("x", 1, 200), record("x", 2, 300)
    sent = SentOnce(TimestampOffset.start(), delay=0.1)
    assert sent.query([a1], read=[a1, x1]) == [a1]
    assert sent.due == 0.1  # x1 excluded: the batch sent does not say the query read it
    assert sent.query([], read=[x2]) == []
    progress = pb.StreamEventsResponse.parse(sent.progress().data).query_progress
    assert progress is not None
    assert (progress.timestamp, progress.seen) == (300, {x2.persistence_id: 2})
    assert sent.query([], read=[]) == []
    assert sent.due == float("inf")
