"""The handler kinds over a real SQLite journal file: grouped exactly-once groups by size and
wait, at-least-once saves offsets by count and time, grouped at-least-once by size and time."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import pytest
import trio
import trio.testing

from fluvial.journal.sqlite._journal import SqliteJournal
from fluvial.projection._handlers import (
    AtLeastOnce,
    GroupedAtLeastOnce,
    GroupedExactlyOnce,
)
from projection.projection_helpers import (
    QUIET,
    Appender,
    Envelope,
    Recorder,
    SaveLog,
    apply_group_to_model,
    assert_model_is_the_fold,
    exactly,
    projection,
    start,
    stored_seq_nr,
    wait_for_model,
)


async def test_grouped_exactly_once_hands_over_groups_of_at_most_max_size(
    journal: SqliteJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    groups: list[int] = []

    def handle(conn: sqlite3.Connection, envelopes: Sequence[Envelope]) -> None:
        groups.append(len(envelopes))
        apply_group_to_model(conn, envelopes)

    appender = Appender(journal)
    for i in range(25):
        await appender.append(f"e{i % 3}", i)
    handler = GroupedExactlyOnce(handle, max_size=10, max_wait=0.05)
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, projection(handler))
        await wait_for_model(journal, 25)
        nursery.cancel_scope.cancel()
    assert groups and max(groups) <= 10
    assert sum(groups) == 25
    await assert_model_is_the_fold(journal)


async def test_grouped_exactly_once_waits_max_wait_for_a_group_to_fill(
    journal: SqliteJournal, virtual_clock: trio.testing.MockClock
) -> None:
    token = trio.lowlevel.current_trio_token()
    groups: list[tuple[float, list[int]]] = []

    def handle(conn: sqlite3.Connection, envelopes: Sequence[Envelope]) -> None:
        # Runs in the writer thread: ask the trio loop for the (virtual) time.
        now = trio.from_thread.run_sync(trio.current_time, trio_token=token)
        groups.append((now, [e.event.amount for e in envelopes]))
        apply_group_to_model(conn, envelopes)

    appender = Appender(journal)
    handler = GroupedExactlyOnce(handle, max_size=3, max_wait=2.0)
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, projection(handler, source=QUIET))
        t0 = trio.current_time()
        await appender.append("a", 1)
        await trio.sleep(0.5)
        await appender.append("b", 2)
        await wait_for_model(journal, 2)
        # Full groups go at once.
        await appender.append("a", 3)
        await appender.append("b", 4)
        await appender.append("c", 5)
        await wait_for_model(journal, 5)
        t1 = trio.current_time()
        nursery.cancel_scope.cancel()
    assert groups == [
        (exactly(t0 + 2.0), [1, 2]),
        (exactly(t1), [3, 4, 5]),
    ]
    await assert_model_is_the_fold(journal)


async def test_at_least_once_saves_offsets_after_save_every_envelopes(
    journal: SqliteJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = trio.Event()
    recorder = Recorder()

    async def handle(envelope: Envelope) -> None:
        await recorder.handle(envelope)
        if envelope.seq_nr == 6:
            await gate.wait()

    saves = SaveLog(monkeypatch)
    appender = Appender(journal)
    await appender.append("a", *range(1, 13))  # one catch-up page
    handler = AtLeastOnce(handle, save_every=5, save_after=1000.0)
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, projection(handler, source=QUIET))
        await recorder.wait_for(("Counter|a", 6))
        # Handling #6: what #1..#5 did is saved, nothing after it.
        assert await stored_seq_nr(journal, "Counter|a") == 5
        gate.set()
        await recorder.wait_for(("Counter|a", 12))
        nursery.cancel_scope.cancel()
    # The last save is the clean stop's.
    assert [s for _, s in saves.saves] == [{"Counter|a": 5}, {"Counter|a": 10}, {"Counter|a": 12}]


async def test_at_least_once_saves_offsets_save_after_seconds_after_a_first_envelope(
    journal: SqliteJournal, monkeypatch: pytest.MonkeyPatch, virtual_clock: trio.testing.MockClock
) -> None:
    recorder = Recorder()
    saves = SaveLog(monkeypatch)
    appender = Appender(journal)
    handler = AtLeastOnce(recorder.handle, save_every=100, save_after=3.0)
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, projection(handler, source=QUIET))
        await appender.append("a", 1)
        await recorder.wait_for(("Counter|a", 1))
        await trio.sleep(1.0)
        await appender.append("a", 2)
        await recorder.wait_for(("Counter|a", 2))
        await trio.sleep(5.0)
        await appender.append("a", 3)
        await recorder.wait_for(("Counter|a", 3))
        await trio.sleep(5.0)
        nursery.cancel_scope.cancel()
    first, _, third = (t for _, _, _, t in recorder.calls)
    assert saves.saves == [
        (exactly(first + 3.0), {"Counter|a": 2}),
        (exactly(third + 3.0), {"Counter|a": 3}),
    ]


async def test_grouped_at_least_once_hands_over_groups_by_size_and_time(
    journal: SqliteJournal, monkeypatch: pytest.MonkeyPatch, virtual_clock: trio.testing.MockClock
) -> None:
    recorder = Recorder()
    saves = SaveLog(monkeypatch)
    appender = Appender(journal)
    for i in range(7):
        await appender.append(f"e{i}", i)
    handler = GroupedAtLeastOnce(recorder.handle_group, max_size=3, max_wait=2.0)
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, projection(handler, source=QUIET))
        await recorder.wait_until(lambda: len(recorder.calls) == 7)
        t0 = trio.current_time()
        await appender.append("z", 1)
        await recorder.wait_until(lambda: len(recorder.calls) == 8)
        t1 = trio.current_time()
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert [len(g) for g in recorder.groups] == [3, 3, 1, 1]
    assert t1 == exactly(t0 + 2.0)
    # Offsets are saved after each group.
    assert len(saves.saves) == 4
    assert saves.saves[-1] == (exactly(t1), {"Counter|z": 1})
    assert sorted(recorder.seen()) == sorted(
        [(f"Counter|e{i}", 1) for i in range(7)] + [("Counter|z", 1)]
    )
