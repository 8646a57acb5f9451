"""The replays a producer's stream starts itself: a filter update that includes entities by id
with a seq nr n >= 1 replays each from n (up to its latest event) through the stream's replay
queue (at most 3 at once, the rest queued), under ids below 0 (correlation id 0 on the wire),
only for the entities of the stream's slices, and only once."""

from __future__ import annotations

from collections.abc import Sequence

from core_criteria import CoreCriteria
from fluvial.core.filters import Filter
from fluvial.core.filters_criteria import FilterCriterion, IncludeEntityIds
from fluvial.core.ids import SliceRange, slice_for
from fluvial.core.records import MAX_SEQ_NR
from fluvial.core.replication_stream import ProducerStream
from fluvial.core.replication_stream_messages import (
    FilterChanged,
    FilterUpdate,
    Init,
    ReplaysChanged,
)

SLICES = SliceRange(0, 511)


def ids_in(slices: SliceRange, count: int) -> list[str]:
    found = (str(i) for i in range(10_000) if slice_for(f"Cart|{i}") in slices)
    return [next(found) for _ in range(count)]


def streaming() -> ProducerStream[Filter, Sequence[FilterCriterion]]:
    stream: ProducerStream[Filter, Sequence[FilterCriterion]] = ProducerStream(
        {"carts": "Cart"}, CoreCriteria()
    )
    stream.receive(Init(stream_id="carts", slice_min=SLICES.min, slice_max=SLICES.max, criteria=()))
    return stream


def update(
    correlation_id: int, *criteria: FilterCriterion
) -> FilterUpdate[Sequence[FilterCriterion]]:
    return FilterUpdate(correlation_id=correlation_id, criteria=criteria)


def test_an_update_including_entities_replays_them_through_the_queue() -> None:
    stream = streaming()
    mine = ids_in(SLICES, 4)
    other = ids_in(SliceRange(512, 1023), 1)
    answer = stream.receive(update(1, IncludeEntityIds({*mine, *other}, seq_nr=2)))
    assert isinstance(answer, FilterChanged)
    started = answer.replays.start
    assert len(started) == 3 and len(stream.replays.queued) == 1  # the bound: 3 at once
    replays = [*started, *stream.replays.queued]
    assert sorted(r.persistence_id for r in replays) == sorted(f"Cart|{i}" for i in mine)
    assert {(r.from_seq_nr, r.to_seq_nr) for r in replays} == {(2, MAX_SEQ_NR)}
    ids = [r.correlation_id for r in replays]
    assert all(i < 0 for i in ids) and len(set(ids)) == 4
    # The queued one starts when a running one finishes.
    queued = stream.replays.queued
    assert stream.replay_finished(started[0].correlation_id) == ReplaysChanged(start=queued)
    assert not stream.replays.queued


def test_the_same_update_again_and_seq_nr_0_replay_nothing() -> None:
    stream = streaming()
    [entity] = ids_in(SLICES, 1)
    first = stream.receive(update(1, IncludeEntityIds({entity}, seq_nr=1)))
    assert isinstance(first, FilterChanged) and len(first.replays.start) == 1
    again = stream.receive(update(2, IncludeEntityIds({entity}, seq_nr=1)))
    assert again == FilterChanged(correlation_id=2, filter=first.filter)
    [later] = ids_in(SliceRange(100, 511), 1)
    lazy = stream.receive(update(3, IncludeEntityIds({later}, seq_nr=0)))
    assert isinstance(lazy, FilterChanged) and lazy.replays == ReplaysChanged()


def test_a_newer_include_of_an_entity_replaces_its_running_replay() -> None:
    stream = streaming()
    [entity] = ids_in(SLICES, 1)
    first = stream.receive(update(1, IncludeEntityIds({entity}, seq_nr=1)))
    assert isinstance(first, FilterChanged)
    second = stream.receive(update(2, IncludeEntityIds({entity}, seq_nr=5)))
    assert isinstance(second, FilterChanged)
    assert second.replays.cancel == first.replays.start
    assert [r.from_seq_nr for r in second.replays.start] == [5]
