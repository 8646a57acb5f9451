"""The bound on a stream's queued replays: a consumer's request that would wait while
`max_queued` wait already is refused, that request alone (the stream goes on, and the queue
as it was); a replacement of a queued or running entity takes no new place; the stream's own
replays (a filter update included entities) take places but are never refused."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from core_criteria import CoreCriteria
from fluvial.core.errors import UsageError
from fluvial.core.filters import Filter
from fluvial.core.filters_criteria import FilterCriterion, IncludeEntityIds
from fluvial.core.ids import SliceRange, slice_for
from fluvial.core.replication_stream import ProducerStream
from fluvial.core.replication_stream_messages import (
    FilterChanged,
    FilterUpdate,
    Init,
    Replay,
    ReplayRequest,
    ReplaysChanged,
)
from fluvial.core.replication_stream_replays import MAX_QUEUED_REPLAYS, ReplayQueue

SLICES = SliceRange(0, 511)


def replay(correlation_id: int, pid: str, first: int = 1) -> Replay:
    return Replay(correlation_id=correlation_id, persistence_id=pid, from_seq_nr=first, to_seq_nr=9)


def ids(count: int) -> list[str]:
    return [i for i in (str(n) for n in range(10_000)) if slice_for(f"Cart|{i}") in SLICES][:count]


def test_a_request_that_would_wait_beyond_the_bound_is_refused_alone() -> None:
    queue = ReplayQueue(max_running=1, max_queued=2)
    a, b, c, d, e = (f"Cart|{i}" for i in "abcde")
    assert queue.request(replay(1, a)) == ReplaysChanged(start=(replay(1, a),))
    assert queue.request(replay(2, b)) == ReplaysChanged()
    assert queue.request(replay(3, c)) == ReplaysChanged()
    # The queue is full: the next entity's request is refused, and nothing else changes.
    assert queue.request(replay(4, d)) == ReplaysChanged(refused=(replay(4, d),))
    assert (queue.running, queue.queued) == ((replay(1, a),), (replay(2, b), replay(3, c)))
    assert not queue.uses(4)  # never admitted: its id is free again
    # Replacements take no new place: a queued entity's in its place, a running one's slot.
    assert queue.request(replay(5, c, first=3)) == ReplaysChanged(superseded=(replay(3, c),))
    assert queue.queued == (replay(2, b), replay(5, c, first=3))
    assert queue.request(replay(6, a, first=2)) == ReplaysChanged(
        start=(replay(6, a, first=2),), cancel=(replay(1, a),), superseded=(replay(1, a),)
    )
    assert queue.request(replay(7, e)) == ReplaysChanged(refused=(replay(7, e),))
    # A place freed is a place to wait in again.
    assert queue.finished(6) == ReplaysChanged(start=(replay(2, b),))
    assert queue.request(replay(8, d)) == ReplaysChanged()
    assert queue.queued == (replay(5, c, first=3), replay(8, d))


def test_a_queue_of_no_places_runs_what_has_a_slot_and_refuses_the_rest() -> None:
    queue = ReplayQueue(max_running=2, max_queued=0)
    a, b, c = (f"Cart|{i}" for i in "abc")
    assert queue.request(replay(1, a)).start == (replay(1, a),)
    assert queue.request(replay(2, b)).start == (replay(2, b),)
    assert queue.request(replay(3, c)) == ReplaysChanged(refused=(replay(3, c),))
    assert queue.request(replay(4, a, first=5)).start == (replay(4, a, first=5),)


def test_own_replays_take_places_but_are_never_refused() -> None:
    queue = ReplayQueue(max_running=1, max_queued=1)
    a, b, c, d, e = (f"Cart|{i}" for i in "abcde")
    queue.request(replay(1, a))
    for n, pid in enumerate((b, c, d), start=1):
        assert queue.request(replay(-n, pid), own=True) == ReplaysChanged()
    assert len(queue.queued) == 3  # beyond the bound: the producer's own work
    # The queue is full of them: a consumer's request of another entity is refused ...
    assert queue.request(replay(2, e)) == ReplaysChanged(refused=(replay(2, e),))
    # ... and one of a queued entity replaces it in its place, as ever.
    assert queue.request(replay(3, c, first=4)) == ReplaysChanged(superseded=(replay(-2, c),))
    assert queue.queued == (replay(-1, b), replay(3, c, first=4), replay(-3, d))


def test_the_queue_bound_is_an_int_of_at_least_0() -> None:
    assert ReplayQueue().max_queued == MAX_QUEUED_REPLAYS
    for bad in (-1, 1.5, True):
        with pytest.raises(UsageError, match="replays that may wait"):
            ReplayQueue(max_queued=bad)  # type: ignore[arg-type]


def test_a_stream_refuses_the_request_beyond_its_bound_and_goes_on() -> None:
    stream: ProducerStream[Filter, Sequence[FilterCriterion]] = ProducerStream(
        {"carts": "Cart"}, CoreCriteria(), max_replays=1, max_queued_replays=1
    )
    stream.receive(Init(stream_id="carts", slice_min=SLICES.min, slice_max=SLICES.max, criteria=()))
    # A filter update including 3 entities: 1 runs, 2 wait (one more than the bound).
    included = stream.receive(
        FilterUpdate(correlation_id=1, criteria=[IncludeEntityIds(set(ids(3)), seq_nr=1)])
    )
    assert isinstance(included, FilterChanged)
    assert (len(included.replays.start), len(stream.replays.queued)) == (1, 2)
    assert not included.replays.refused
    [other] = (f"Cart|{i}" for i in ids(4)[3:])
    request = ReplayRequest(correlation_id=7, persistence_id=other, from_seq_nr=1, to_seq_nr=5)
    refused = Replay(correlation_id=7, persistence_id=other, from_seq_nr=1, to_seq_nr=5)
    assert stream.receive(request) == ReplaysChanged(refused=(refused,))
    assert stream.state.name == "STREAMING"
    # The stream takes the same correlation id again once the queue has room.
    stream.replay_finished(included.replays.start[0].correlation_id)
    stream.replay_finished(stream.replays.running[0].correlation_id)
    assert stream.receive(request) == ReplaysChanged()
    assert stream.replays.queued[-1].correlation_id == 7
