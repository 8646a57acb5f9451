"""A handler that fails or an event that cannot be decoded: restart from the stored offset
with backoff on the trio clock, retry in place, skip with a warning, give up after too many
restarts in a row."""

from __future__ import annotations

import logging
import sqlite3

import pytest
import trio
import trio.testing

from fluvial.core.serialization import PayloadDecodeError, SerializedPayload
from fluvial.journal.sqlite._journal import SqliteJournal
from fluvial.projection._handlers import (
    AtLeastOnce,
    Backoff,
    ExactlyOnce,
    Handler,
    RecoveryStrategy,
)
from fluvial.projection._source_settings import SourceSettings
from projection.projection_helpers import (
    QUIET,
    Added,
    Appender,
    Envelope,
    Recorder,
    apply_to_model,
    assert_model_is_the_fold,
    exactly,
    model_size,
    projection,
    read_model,
    run_until_failed,
    start,
    stored_seq_nr,
    wait_for_model,
)


async def test_a_failing_handler_restarts_the_instance_from_the_stored_offset_with_backoff(
    journal: SqliteJournal, virtual_clock: trio.testing.MockClock
) -> None:
    recorder = Recorder(fail_when=lambda e, attempt: e.seq_nr == 3 and attempt < 3)
    appender = Appender(journal)
    await appender.append("a", 1, 2, 3, 4)
    handler = AtLeastOnce(recorder.handle, save_every=1)
    backoff = Backoff(min=0.5, max=1.5, factor=2)
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, projection(handler, backoff=backoff, source=QUIET))
        await recorder.wait_for(("Counter|a", 4))
        nursery.cancel_scope.cancel()
    t0 = recorder.calls[0][3]
    assert [(seq_nr, t - t0) for _, seq_nr, _, t in recorder.calls] == [
        (1, 0),
        (2, 0),
        (3, 0),
        (3, exactly(0.5)),  # restarted from the stored offset: after #2
        (3, exactly(0.5 + 1.0)),
        (3, exactly(0.5 + 1.0 + 1.5)),  # capped at max
        (4, exactly(0.5 + 1.0 + 1.5)),
    ]


async def test_an_exactly_once_handler_that_fails_leaves_nothing_and_recovers(
    journal: SqliteJournal, virtual_clock: trio.testing.MockClock
) -> None:
    broken = True

    def handle(conn: sqlite3.Connection, envelope: Envelope) -> None:
        apply_to_model(conn, envelope)  # its writes are rolled back with the failure
        if broken and envelope.seq_nr == 3:
            raise ValueError("boom")

    appender = Appender(journal)
    await appender.append("a", 1, 2)
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, projection(ExactlyOnce(handle), source=QUIET))
        await wait_for_model(journal, 2)
        t0 = trio.current_time()
        await appender.append("a", 3)
        await appender.append("b", 4)
        await trio.sleep(0.2 + 0.4 + 0.8 - 0.01)  # three failures and backoffs
        assert await model_size(journal) == 2
        assert await stored_seq_nr(journal, "Counter|a") == 2
        broken = False
        await wait_for_model(journal, 4)
        # The fourth attempt, after backoffs of 0.2, 0.4 and 0.8 s.
        assert trio.current_time() == exactly(t0 + 1.4)
        nursery.cancel_scope.cancel()
    await assert_model_is_the_fold(journal)


async def test_retry_and_fail_retries_in_place_then_restarts(
    journal: SqliteJournal,
    virtual_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder(fail_when=lambda e, attempt: e.seq_nr == 2 and attempt < 4)
    appender = Appender(journal)
    await appender.append("a", 1, 2)
    handler = AtLeastOnce(recorder.handle, save_every=1)
    async with trio.open_nursery() as nursery:
        await start(
            nursery,
            journal,
            projection(
                handler,
                recovery=RecoveryStrategy.retry_and_fail(2),
                backoff=Backoff(min=0.2, factor=2),
                source=QUIET,
            ),
        )
        await recorder.wait_for(("Counter|a", 2))
        await recorder.wait_until(lambda: len(recorder.calls) == 6)
        nursery.cancel_scope.cancel()
    t0 = recorder.calls[0][3]
    assert [(seq_nr, t - t0) for _, seq_nr, _, t in recorder.calls] == [
        (1, 0),
        (2, 0),
        (2, exactly(0.2)),  # retry 1
        (2, exactly(0.6)),  # retry 2, then the instance fails
        (2, exactly(0.8)),  # restarted after 0.2 s
        (2, exactly(1.0)),  # its retry 1 succeeds
    ]
    messages = [r.getMessage() for r in caplog.records if r.name == "fluvial.projection"]
    assert sum("retrying" in m for m in messages) == 3
    assert sum("restarting in 0.20s" in m for m in messages) == 1


@pytest.mark.parametrize("kind", ["exactly-once", "at-least-once"])
async def test_retry_and_skip_skips_only_the_failing_envelope_with_a_warning(
    journal: SqliteJournal,
    virtual_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    def poisoned(envelope: Envelope) -> bool:
        return envelope.persistence_id == "Counter|a" and envelope.seq_nr == 3

    def handle_exactly_once(conn: sqlite3.Connection, envelope: Envelope) -> None:
        if poisoned(envelope):
            raise ValueError("poison")
        apply_to_model(conn, envelope)

    recorder = Recorder(fail_when=lambda e, attempt: poisoned(e))
    handler: Handler[Added, sqlite3.Connection] = (
        ExactlyOnce(handle_exactly_once)
        if kind == "exactly-once"
        else AtLeastOnce(recorder.handle, save_every=1)
    )
    appender = Appender(journal)
    await appender.append("a", 1, 2, 3, 4, 5)
    await appender.append("b", 6, 7)
    p = projection(handler, recovery=RecoveryStrategy.retry_and_skip(2), source=QUIET)
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, p)
        if kind == "exactly-once":
            await wait_for_model(journal, 6)
        else:
            await recorder.wait_for(("Counter|a", 5), ("Counter|b", 2))
        nursery.cancel_scope.cancel()
    everything = {("Counter|a", s) for s in range(1, 6)} | {("Counter|b", 1), ("Counter|b", 2)}
    if kind == "exactly-once":
        model = await read_model(journal)
        assert set(model) == everything - {("Counter|a", 3)}
        assert {times for _, times in model.values()} == {1}
    else:
        assert recorder.seen() == everything
        assert [c[1] for c in recorder.calls if c[0] == "Counter|a"] == [1, 2, 3, 3, 3, 4, 5]
    assert await stored_seq_nr(journal, "Counter|a") == 5
    skipped = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and "skipping 1 envelope(s)" in r.getMessage()
    ]
    assert len(skipped) == 1
    assert "Counter|a#3" in skipped[0].getMessage()


async def test_max_restarts_in_a_row_make_the_projection_fail(
    journal: SqliteJournal, virtual_clock: trio.testing.MockClock
) -> None:
    def handle(conn: sqlite3.Connection, envelope: Envelope) -> None:
        if envelope.persistence_id == "Counter|b":
            raise ValueError("always")
        apply_to_model(conn, envelope)

    appender = Appender(journal)
    await appender.append("a", 1, 2, 3, 4)
    await appender.append("b", 5)
    # Small pages: every restart handles pages of duplicates before it fails again, which
    # must not count as progress.
    p = projection(
        ExactlyOnce(handle),
        backoff=Backoff(min=0.2, factor=2, max_restarts=2),
        source=SourceSettings(page_size=2, backtracking_interval=None),
    )
    t0 = trio.current_time()
    error = await run_until_failed(journal, p)
    assert trio.current_time() == exactly(t0 + 0.2 + 0.4)
    assert "failed 3 times in a row" in str(error)
    assert isinstance(error.__cause__, ValueError)
    assert set(await read_model(journal)) == {("Counter|a", s) for s in range(1, 5)}


@pytest.mark.parametrize("kind", ["exactly-once", "at-least-once"])
async def test_a_corrupt_payload_is_never_skipped_under_fail(
    journal: SqliteJournal, virtual_clock: trio.testing.MockClock, kind: str
) -> None:
    recorder = Recorder()
    handler: Handler[Added, sqlite3.Connection] = (
        ExactlyOnce(apply_to_model)
        if kind == "exactly-once"
        else AtLeastOnce(recorder.handle, save_every=1)
    )
    appender = Appender(journal)
    await appender.append("a", 1, 2)
    await appender.append_payloads("a", SerializedPayload("test.Added", 1, b"\xc1 not msgpack"))
    await appender.append("a", 4)
    await appender.append("b", 5)
    p = projection(handler, backoff=Backoff(min=0.2, max_restarts=3), source=QUIET)
    error = await run_until_failed(journal, p)
    assert isinstance(error.__cause__, PayloadDecodeError)
    handled = set(await read_model(journal)) | recorder.seen()
    assert ("Counter|a", 4) not in handled
    assert await stored_seq_nr(journal, "Counter|a") < 3


async def test_a_corrupt_payload_is_skipped_with_a_warning_under_retry_and_skip(
    journal: SqliteJournal, caplog: pytest.LogCaptureFixture
) -> None:
    appender = Appender(journal)
    await appender.append("a", 1)
    await appender.append_payloads("a", SerializedPayload("test.Added", 1, b"\xc1 not msgpack"))
    await appender.append("a", 3)
    p = projection(ExactlyOnce(apply_to_model), recovery=RecoveryStrategy.retry_and_skip(1))
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, p)
        await wait_for_model(journal, 2)
        nursery.cancel_scope.cancel()
    assert set(await read_model(journal)) == {("Counter|a", 1), ("Counter|a", 3)}
    assert any("Counter|a seq nr 2" in r.getMessage() for r in caplog.records)
