"""The offset store's management API on a running projection: offsets and backlog,
`set_offset`, `skip_event`, `reset`."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
import trio
import trio.testing

from fluvial.core.ids import SliceRange, slice_for
from fluvial.core.offsets import TimestampOffset
from fluvial.journal.sqlite._journal import SqliteJournal
from fluvial.journal.sqlite._offset_store import SqliteOffsetStore
from fluvial.projection._handlers import (
    AtLeastOnce,
    Backoff,
    ExactlyOnce,
)
from fluvial.projection._runner import Projection
from projection.projection_helpers import (
    ENTITY_TYPE,
    NAME,
    QUIET,
    Added,
    Appender,
    Envelope,
    Recorder,
    apply_to_model,
    projection,
    read_model,
    run_until_failed,
    start,
    stored_seq_nr,
    wait_for_model,
)


async def run_until_handled(journal: SqliteJournal, p: Projection[Added, Any], size: int) -> None:
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, p)
        await wait_for_model(journal, size)
        nursery.cancel_scope.cancel()


async def test_offsets_and_backlog_show_where_a_projection_is(journal: SqliteJournal) -> None:
    store = SqliteOffsetStore(journal.database)
    appender = Appender(journal)
    stored = [r for i in range(6) for r in await appender.append(f"e{i}", i, i)]
    everything = SliceRange.all()
    await store.register(NAME, ENTITY_TYPE)  # before its first run
    assert await store.offsets(NAME) == {}
    assert await store.backlog(NAME, ENTITY_TYPE, everything) == 12

    await run_until_handled(journal, projection(ExactlyOnce(apply_to_model)), 12)
    last = {r.slice: r for r in stored}  # each entity is alone in its slice here
    assert len(last) == 6
    assert await store.offsets(NAME) == {
        s: TimestampOffset(r.timestamp, {r.persistence_id: r.seq_nr}) for s, r in last.items()
    }
    first = min(last)
    assert await store.offsets(NAME, SliceRange(first, first)) == {
        first: TimestampOffset(last[first].timestamp, {last[first].persistence_id: 2})
    }
    assert await store.backlog(NAME, ENTITY_TYPE, everything) == 0

    await appender.append("e0", 7)
    await appender.append("new", 1, 2)
    assert await store.backlog(NAME, ENTITY_TYPE, everything) == 3
    e0 = slice_for("Counter|e0")
    assert await store.backlog(NAME, ENTITY_TYPE, SliceRange(e0, e0)) == 1


async def test_set_offset_resumes_from_there_and_takes_the_next_events_as_the_first(
    journal: SqliteJournal,
) -> None:
    store = SqliteOffsetStore(journal.database)
    appender = Appender(journal)
    for i in range(4):
        await appender.append(f"e{i}", 1, 2)
    [middle] = await appender.append("e0", 3)
    await appender.append("e1", 3)
    await appender.append("e9", 1)
    # After `middle`, which is seen.
    offset = TimestampOffset(middle.timestamp, {middle.persistence_id: middle.seq_nr})
    await store.register(NAME, ENTITY_TYPE)  # not run yet: placed before its first run
    await store.set_offset(NAME, SliceRange.all(), offset)
    assert await store.offsets(NAME) == {s: offset for s in SliceRange.all()}
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, projection(ExactlyOnce(apply_to_model)))
        await wait_for_model(journal, 2)
        # New events of entities whose earlier events precede the offset: live and query
        # both deliver them, and neither replays what precedes the offset.
        await appender.append("e2", 3)
        await appender.append("e0", 4)
        await wait_for_model(journal, 4)
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert set(await read_model(journal)) == {
        ("Counter|e1", 3),
        ("Counter|e9", 1),
        ("Counter|e2", 3),
        ("Counter|e0", 4),
    }


async def test_skip_event_gets_a_projection_past_a_poison_event(
    journal: SqliteJournal, virtual_clock: trio.testing.MockClock
) -> None:
    def handle(conn: sqlite3.Connection, envelope: Envelope) -> None:
        if envelope.event.amount < 0:
            raise ValueError("poison")
        apply_to_model(conn, envelope)

    appender = Appender(journal)
    p = projection(ExactlyOnce(handle), backoff=Backoff(max_restarts=0), source=QUIET)

    async def meanwhile() -> None:
        await appender.append("a", 1, 2)
        await wait_for_model(journal, 2)
        await appender.append("a", -3, 4)
        await appender.append("b", 5)

    await run_until_failed(journal, p, meanwhile)
    assert set(await read_model(journal)) == {("Counter|a", 1), ("Counter|a", 2)}

    store = SqliteOffsetStore(journal.database)
    with pytest.raises(LookupError):
        await store.skip_event(NAME, "Counter|a", 9)
    await store.skip_event(NAME, "Counter|a", 3)
    await store.skip_event(NAME, "Counter|a", 1)  # never moves an entity back
    await run_until_handled(journal, p, 4)
    assert set(await read_model(journal)) == {
        ("Counter|a", 1),
        ("Counter|a", 2),
        ("Counter|a", 4),
        ("Counter|b", 1),
    }
    assert await stored_seq_nr(journal, "Counter|a") == 4


async def test_reset_starts_a_projection_again_from_the_first_event(
    journal: SqliteJournal,
) -> None:
    recorder = Recorder()
    appender = Appender(journal)
    await appender.append("a", 1, 2)
    await appender.append("b", 3)
    p = projection(AtLeastOnce(recorder.handle, save_every=1))
    other = projection(ExactlyOnce(apply_to_model), name="other")
    await run_until_handled(journal, other, 3)
    for _ in range(2):
        async with trio.open_nursery() as nursery:
            await start(nursery, journal, p)
            await recorder.wait_until(lambda: len(recorder.calls) >= 3)
            nursery.cancel_scope.cancel()
    assert len(recorder.calls) == 3  # resumed from the saved offsets: nothing again

    store = SqliteOffsetStore(journal.database)
    await store.reset(NAME)
    assert await store.offsets(NAME) == {}
    assert await store.backlog(NAME, ENTITY_TYPE, SliceRange.all()) == 3
    assert await store.offsets("other") != {}  # only the named projection
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, p)
        await recorder.wait_until(lambda: len(recorder.calls) == 6)
        nursery.cancel_scope.cancel()
    assert sorted(c[:2] for c in recorder.calls) == sorted(
        2 * [("Counter|a", 1), ("Counter|a", 2), ("Counter|b", 1)]
    )
