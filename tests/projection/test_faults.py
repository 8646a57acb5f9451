"""A projection under faults and stops: storage and source errors restart it with backoff, a
clean stop of an at-least-once projection saves what it handled, an exactly-once handler runs
once per attempt, and ProjectionFailed names the envelope it failed on."""

from __future__ import annotations

import logging
import sqlite3
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.testing

from fluvial.core.ids import SliceRange, slice_for
from fluvial.core.projection_errors import ProjectionFailed
from fluvial.core.serialization import SerializedPayload
from fluvial.journal.sqlite._journal import SqliteJournal
from fluvial.journal.sqlite._offset_store import SqliteOffsetStore
from fluvial.projection._handlers import (
    AtLeastOnce,
    Backoff,
    ExactlyOnce,
    GroupedAtLeastOnce,
    GroupedExactlyOnce,
    RecoveryStrategy,
)
from projection.projection_helpers import (
    NAME,
    QUIET,
    Appender,
    Envelope,
    Recorder,
    apply_to_model,
    assert_model_is_the_fold,
    exactly,
    projection,
    read_model,
    run_until_failed,
    start,
    stored_seq_nr,
    wait_for_model,
    wait_for_stored,
)


class Faults:
    """Makes chosen calls of an async method raise a transient SQLite error, and records the
    virtual time of every call."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, target: Any, method: str, failing: set[int]
    ) -> None:
        self.calls: list[float] = []
        self.failed: list[float] = []
        original = getattr(target, method)

        async def faulty(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(trio.current_time())
            if len(self.calls) in failing:
                self.failed.append(trio.current_time())
                raise sqlite3.OperationalError("database is locked")
            return await original(*args, **kwargs)

        monkeypatch.setattr(target, method, faulty)


def restart_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "fluvial.projection" and "restarting in" in r.getMessage()
    ]


@pytest.mark.parametrize("where", ["query", "load", "lookup", "save", "commit"])
async def test_a_storage_or_source_error_restarts_the_instance_with_backoff(
    journal: SqliteJournal,
    monkeypatch: pytest.MonkeyPatch,
    virtual_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    where: str,
) -> None:
    appender = Appender(journal)
    await appender.append("a", 1, 2)
    exactly_once = where != "save"
    recorder = Recorder()
    handler: Any = (
        ExactlyOnce(apply_to_model) if exactly_once else AtLeastOnce(recorder.handle, save_every=1)
    )
    window, slices = 300.0, None
    if where == "lookup":
        # A first run stores a, then another entity of its slice; the next run, with a tiny
        # window, holds only the other one in memory and must look a up.
        slices = SliceRange(slice_for("Counter|a"), slice_for("Counter|a"))
        other = next(f"x{i}" for i in range(10_000) if slice_for(f"Counter|x{i}") == slices.min)
        await appender.append(other, 9)
        async with trio.open_nursery() as nursery:
            await start(nursery, journal, projection(handler, source=QUIET), slices)
            await wait_for_model(journal, 3)
            nursery.cancel_scope.cancel()
        window = 1e-6
    target, method, failing = {
        "query": (journal, "read_events_by_slices", {1, 2}),
        "load": (SqliteOffsetStore, "load", {1, 2}),
        "lookup": (SqliteOffsetStore, "load_entity", {1, 2}),
        "save": (SqliteOffsetStore, "save", {1, 2}),
        "commit": (SqliteOffsetStore, "commit", {1, 2}),
    }[where]
    faults = Faults(monkeypatch, target, method, failing)
    load_times = (
        faults if where == "load" else Faults(monkeypatch, SqliteOffsetStore, "load", set())
    )
    p = projection(handler, source=QUIET, backoff=Backoff(min=0.5, factor=2), window=window)
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        if where in ("load", "query"):
            nursery.start_soon(start, nursery, journal, p)  # ready only after the restarts
        else:
            await start(nursery, journal, p, slices)
        await appender.append("a", 3)
        await wait_for_stored(journal, "Counter|a", 3)
        nursery.cancel_scope.cancel()
    assert len(faults.failed) == 2
    # Each failure restarts the instance (it loads its offsets again) after the backoff.
    restarts = [t for t in load_times.calls if t > faults.failed[0] - 1e-9][-2:]
    assert restarts == [
        exactly(faults.failed[0] + 0.5),
        exactly(faults.failed[1] + 1.0),
    ], (t0, faults.failed, load_times.calls)
    messages = restart_messages(caplog)
    assert len(messages) == 2
    for message, delay in zip(messages, ["0.50", "1.00"], strict=True):
        range_ = slices or SliceRange.all()
        assert f"projection {NAME!r} (slices {range_}) failed, restarting in {delay}s" in message
        assert "OperationalError: database is locked" in message
    if exactly_once:
        assert t0 <= faults.failed[0]
        await assert_model_is_the_fold(journal)
    else:
        assert recorder.seen() == {("Counter|a", 1), ("Counter|a", 2), ("Counter|a", 3)}


async def test_storage_errors_past_max_restarts_raise_projection_failed_with_the_cause(
    journal: SqliteJournal, monkeypatch: pytest.MonkeyPatch, virtual_clock: trio.testing.MockClock
) -> None:
    Faults(monkeypatch, SqliteOffsetStore, "load", set(range(1, 100)))
    p = projection(ExactlyOnce(apply_to_model), backoff=Backoff(min=0.2, max_restarts=2))
    t0 = trio.current_time()
    error = await run_until_failed(journal, p)
    assert trio.current_time() == exactly(t0 + 0.2 + 0.4)
    assert type(error) is ProjectionFailed  # not an ExceptionGroup
    assert isinstance(error.__cause__, sqlite3.OperationalError)
    assert (error.persistence_id, error.seq_nr) == (None, None)
    assert "failed 3 times in a row" in str(error)


@pytest.mark.parametrize("grouped", [False, True])
async def test_a_clean_stop_of_an_at_least_once_projection_saves_what_it_handled(
    journal: SqliteJournal, grouped: bool
) -> None:
    recorder = Recorder()
    appender = Appender(journal)
    await appender.append("a", 1, 2, 3)
    await appender.append("b", 4)
    handler: Any = (
        GroupedAtLeastOnce(recorder.handle_group, max_size=2, max_wait=0.01)
        if grouped
        else AtLeastOnce(recorder.handle, save_every=100, save_after=1000.0)
    )
    for _ in range(2):
        async with trio.open_nursery() as nursery:
            await start(nursery, journal, projection(handler, source=QUIET))
            await recorder.wait_until(lambda: len(recorder.calls) >= 4)
            await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        assert await stored_seq_nr(journal, "Counter|a") == 3
        assert await stored_seq_nr(journal, "Counter|b") == 1
    # The second run handled nothing again.
    assert sorted(c[:2] for c in recorder.calls) == [
        ("Counter|a", 1),
        ("Counter|a", 2),
        ("Counter|a", 3),
        ("Counter|b", 1),
    ]


@pytest.mark.parametrize("own_nursery", [False, True])
async def test_a_clean_stop_does_not_save_an_envelope_still_in_the_handler(
    journal: SqliteJournal, own_nursery: bool
) -> None:
    # With a nursery of the handler's own, the stop's Cancelled comes out of it wrapped in
    # an ExceptionGroup. (A grouped handler saves after each group: on a stop, it saves only
    # a save under way.)
    calls: list[tuple[str, int]] = []
    in_handler, all_called = trio.Event(), trio.Event()

    async def handle_here(envelope: Envelope) -> None:
        calls.append((envelope.persistence_id, envelope.seq_nr))
        if envelope.seq_nr == 3 and len(calls) == 3:
            in_handler.set()
            await trio.sleep_forever()  # stopped while handling a#3

    async def handle(envelope: Envelope) -> None:
        if own_nursery:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
                await handle_here(envelope)
                nursery.cancel_scope.cancel()
        else:
            await handle_here(envelope)
        if len(calls) == 5:
            all_called.set()

    appender = Appender(journal)
    await appender.append("a", 1, 2, 3, 4)
    p = projection(AtLeastOnce(handle, save_every=100, save_after=1000.0), source=QUIET)
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, p)
        await in_handler.wait()
        nursery.cancel_scope.cancel()
    assert await stored_seq_nr(journal, "Counter|a") == 2  # what the handler finished
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, p)
        with trio.fail_after(10):
            await all_called.wait()
        nursery.cancel_scope.cancel()
    assert calls == [("Counter|a", s) for s in (1, 2, 3, 3, 4)]  # #3 again, nothing lost
    assert await stored_seq_nr(journal, "Counter|a") == 4


@pytest.mark.parametrize("grouped", [False, True])
async def test_an_exactly_once_handler_runs_once_per_attempt_of_a_failing_transaction(
    journal: SqliteJournal, virtual_clock: trio.testing.MockClock, grouped: bool
) -> None:
    token = trio.lowlevel.current_trio_token()
    attempts: dict[tuple[str, int], list[float]] = defaultdict(list)

    def handle_one(conn: sqlite3.Connection, envelope: Envelope) -> None:
        now = trio.from_thread.run_sync(trio.current_time, trio_token=token)
        attempts[envelope.persistence_id, envelope.seq_nr].append(now)
        if envelope.seq_nr == 2:
            raise ValueError("fails every time")
        apply_to_model(conn, envelope)

    def handle_group(conn: sqlite3.Connection, envelopes: Sequence[Envelope]) -> None:
        for envelope in envelopes:
            handle_one(conn, envelope)

    handler: Any = (
        GroupedExactlyOnce(handle_group, max_size=10, max_wait=0.01)
        if grouped
        else ExactlyOnce(handle_one)
    )
    appender = Appender(journal)
    await appender.append("a", 1, 2)
    p = projection(
        handler,
        recovery=RecoveryStrategy.retry_and_fail(2),
        backoff=Backoff(min=0.5, factor=2, max_restarts=0),
        source=QUIET,
    )
    error = await run_until_failed(journal, p)
    t0 = attempts["Counter|a", 2][0]
    # The first attempt and two retries after 0.5 and 1.0 s: one call each.
    assert [t - t0 for t in attempts["Counter|a", 2]] == [0, exactly(0.5), exactly(1.5)]
    assert len(attempts["Counter|a", 1]) == 3  # in the same transaction each time
    assert await read_model(journal) == {}
    assert (error.persistence_id, error.seq_nr) == ("Counter|a", 1 if grouped else 2)


@pytest.mark.parametrize("kind", ["exactly-once", "grouped", "at-least-once", "undecodable"])
async def test_projection_failed_names_the_envelope_so_that_skip_event_gets_past_it(
    journal: SqliteJournal, virtual_clock: trio.testing.MockClock, kind: str
) -> None:
    def poisoned(envelope: Envelope) -> bool:
        return envelope.event.amount < 0

    def handle(conn: sqlite3.Connection, envelope: Envelope) -> None:
        if poisoned(envelope):
            raise ValueError("poison")
        apply_to_model(conn, envelope)

    def handle_group(conn: sqlite3.Connection, envelopes: Sequence[Envelope]) -> None:
        for envelope in envelopes:
            handle(conn, envelope)

    recorder = Recorder(fail_when=lambda e, attempt: poisoned(e))
    handler: Any = {
        "exactly-once": ExactlyOnce(handle),
        "undecodable": ExactlyOnce(handle),
        "grouped": GroupedExactlyOnce(handle_group, max_size=1, max_wait=0.01),
        "at-least-once": AtLeastOnce(recorder.handle, save_every=1),
    }[kind]
    appender = Appender(journal)
    await appender.append("a", 1, 2)
    if kind == "undecodable":
        await appender.append_payloads("b", SerializedPayload("test.Added", 1, b"\xc1 nope"))
    else:
        await appender.append("b", -1)
    await appender.append("b", 3)
    p = projection(handler, backoff=Backoff(max_restarts=0), source=QUIET)
    error = await run_until_failed(journal, p)
    assert (error.projection, error.persistence_id, error.seq_nr) == (NAME, "Counter|b", 1)
    assert "on Counter|b seq nr 1" in str(error)
    assert error.persistence_id is not None and error.seq_nr is not None  # an envelope's

    await SqliteOffsetStore(journal.database).skip_event(
        error.projection, error.persistence_id, error.seq_nr
    )
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, p)
        await wait_for_stored(journal, "Counter|b", 2)
        nursery.cancel_scope.cancel()
    handled = set(await read_model(journal)) | recorder.seen()
    assert ("Counter|b", 2) in handled


async def test_a_restart_log_names_the_envelope_and_the_cause(
    journal: SqliteJournal, virtual_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)

    def handle(conn: sqlite3.Connection, envelope: Envelope) -> None:
        raise ValueError("boom")

    appender = Appender(journal)
    await appender.append("a", 1)
    await run_until_failed(
        journal, projection(ExactlyOnce(handle), backoff=Backoff(max_restarts=1))
    )
    [message] = restart_messages(caplog)
    assert "failed on Counter|a seq nr 1, restarting in 0.20s: ValueError: boom" in message


async def test_at_least_once_repeats_nothing_while_entities_leave_memory_between_saves(
    journal: SqliteJournal,
) -> None:
    # With a tiny window each entity leaves memory as soon as a later event is handled; one
    # handled but not yet saved must stay, or its next event, arriving live, would look like
    # a gap and replay what was handled.
    recorder = Recorder()
    appender = Appender(journal)
    p = projection(
        AtLeastOnce(recorder.handle, save_every=100, save_after=1000.0), source=QUIET, window=1e-6
    )
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, p)
        for entity in ("a", "b", "a", "c", "b", "a"):
            await appender.append(entity, 1)
            await recorder.wait_until(
                lambda: len(recorder.seen()) == sum(appender.seq_nrs.values())
            )
        nursery.cancel_scope.cancel()
    assert [c[:2] for c in recorder.calls] == [
        ("Counter|a", 1),
        ("Counter|b", 1),
        ("Counter|a", 2),
        ("Counter|c", 1),
        ("Counter|b", 2),
        ("Counter|a", 3),
    ]
