"""`serve_projection` over a real SQLite journal file: catch-up and follow, the live path,
duplicates and gaps between the paths, the four handler kinds, recovery and backoff on the
trio clock, rescaling, and the offset store's management API."""

from __future__ import annotations

import logging
import sqlite3
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from fluvial.core.ids import SliceRange, slice_for, slice_ranges
from fluvial.core.offset_tracker import Duplicate, EnvelopeSource, OffsetTracker, Verdict
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord
from fluvial.core.serialization import PayloadDecodeError, SerializedPayload, SerializerRegistry
from fluvial.journal.sqlite._journal import SqliteJournal, open_sqlite_journal
from fluvial.journal.sqlite._offset_store import SqliteOffsetStore
from fluvial.projection._handlers import (
    AtLeastOnce,
    Backoff,
    ExactlyOnce,
    GroupedAtLeastOnce,
    GroupedExactlyOnce,
    Handler,
    RecoveryStrategy,
)
from fluvial.projection._runner import Projection, serve_projection
from fluvial.projection._source_settings import SourceSettings
from projection.projection_helpers import (
    ENTITY_TYPE,
    NAME,
    QUIET,
    Added,
    Appender,
    Envelope,
    Recorder,
    SaveLog,
    StallableQuery,
    apply_group_to_model,
    apply_to_model,
    assert_model_is_the_fold,
    exactly,
    model_order,
    model_size,
    projection,
    read_model,
    run_until_failed,
    start,
    stored_seq_nr,
    wait_for_model,
)


async def test_catches_up_then_follows_and_the_read_model_is_the_fold(
    journal: SqliteJournal,
) -> None:
    appender = Appender(journal)
    for i in range(30):
        await appender.append(f"e{i % 5}", i, i + 1)
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, projection(ExactlyOnce(apply_to_model)))
        await wait_for_model(journal, 60)
        for i in range(20):
            await appender.append(f"e{i % 7}", 100 + i)
        await wait_for_model(journal, 80)
        nursery.cancel_scope.cancel()
    await assert_model_is_the_fold(journal)


@pytest.mark.parametrize("live", [True, False])
async def test_the_live_path_delivers_with_no_query(
    journal: SqliteJournal, monkeypatch: pytest.MonkeyPatch, live: bool
) -> None:
    query = StallableQuery(journal, monkeypatch)
    appender = Appender(journal)
    await appender.append("a", 1)
    recorder = Recorder()
    settings = SourceSettings(live=live, backtracking_interval=None)
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, projection(AtLeastOnce(recorder.handle), source=settings))
        await recorder.wait_for(("Counter|a", 1))
        await query.stall_now()
        completed = query.completed
        await appender.append("a", 2)
        await appender.append("b", 3)
        with trio.move_on_after(1 if live else 0.3):
            await recorder.wait_for(("Counter|a", 2), ("Counter|b", 1))
        nursery.cancel_scope.cancel()
    assert query.completed == completed  # no page of the query delivered them
    assert query.replays == []
    if live:
        assert [c[:3] for c in recorder.calls] == [
            ("Counter|a", 1, 1),
            ("Counter|a", 2, 2),
            ("Counter|b", 1, 3),
        ]
    else:
        assert [c[:3] for c in recorder.calls] == [("Counter|a", 1, 1)]


async def test_duplicates_between_live_query_and_backtracking_are_dropped(
    journal: SqliteJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    verdicts: list[tuple[EnvelopeSource, Verdict]] = []
    validate = OffsetTracker.validate

    def counting(self: OffsetTracker, record: EventRecord, source: EnvelopeSource) -> Verdict:
        verdict = validate(self, record, source)
        verdicts.append((source, verdict))
        return verdict

    monkeypatch.setattr(OffsetTracker, "validate", counting)
    appender = Appender(journal)
    settings = SourceSettings(backtracking_interval=0.05, backtracking_span=10.0)
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, projection(ExactlyOnce(apply_to_model), source=settings))

        async def shop(entity: str) -> None:
            for i in range(20):
                await appender.append(entity, i)
                await trio.sleep(0.002)

        async with trio.open_nursery() as appenders:
            for e in range(8):
                appenders.start_soon(shop, f"e{e}")
        await wait_for_model(journal, 160)
        await trio.sleep(0.2)  # a few more backtracking rounds over what was handled
        nursery.cancel_scope.cancel()
    await assert_model_is_the_fold(journal)
    duplicates = {source for source, verdict in verdicts if verdict == Duplicate()}
    assert EnvelopeSource.BACKTRACKING in duplicates
    assert duplicates & {EnvelopeSource.LIVE, EnvelopeSource.QUERY}


async def test_an_envelope_ahead_of_missing_ones_replays_them_from_the_journal(
    journal: SqliteJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    query = StallableQuery(journal, monkeypatch)
    appender = Appender(journal)
    await appender.append("a", 10)
    async with trio.open_nursery() as nursery:
        await start(nursery, journal, projection(ExactlyOnce(apply_to_model), source=QUIET))
        await wait_for_model(journal, 1)
        await query.stall_now()
        # a#2 and a#3 are committed but never published live (a full live buffer drops
        # events the same way); a#4 arrives live, ahead of them.
        publish = journal.live.publish
        monkeypatch.setattr(journal.live, "publish", lambda records: None)
        await appender.append("a", 20)
        await appender.append("a", 30)
        monkeypatch.setattr(journal.live, "publish", publish)
        await appender.append("a", 40)
        await wait_for_model(journal, 4)
        nursery.cancel_scope.cancel()
    assert query.replays == [("Counter|a", 2, 4)]
    assert await model_order(journal) == {"Counter|a": [1, 2, 3, 4]}
    await assert_model_is_the_fold(journal)


async def test_the_read_model_of_a_cart_projection_is_the_fold_of_its_carts(
    tmp_path: Path,
) -> None:
    from fluvial.entity import open_entities
    from fluvial.examples.cart_projection import CartTotals
    from fluvial.examples.shopping_cart import (
        AddItem,
        CartState,
        Checkout,
        RemoveItem,
        ShoppingCart,
        apply_event,
        register_cart,
    )

    registry = register_cart(SerializerRegistry())
    async with open_sqlite_journal(tmp_path / "carts.db") as journal:
        async with open_entities(journal, registry, [ShoppingCart]) as entities:
            for i in range(6):  # before the projection: caught up
                cart = entities.ref(ShoppingCart, f"c{i}")
                await cart.ask(AddItem("apple", i + 1))
                await cart.ask(AddItem("pear", 2))
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_projection, journal, registry, CartTotals)
                for i in range(4, 10):  # while it runs: followed
                    cart = entities.ref(ShoppingCart, f"c{i}")
                    await cart.ask(RemoveItem("pear", 1))
                    if i % 2:
                        await cart.ask(Checkout())
                total = 6 * 2 + 6 + 3

                def handled(conn: sqlite3.Connection) -> int:
                    return int(
                        conn.execute(
                            "SELECT count(*) FROM projection_entity WHERE projection_name = ? ",
                            (CartTotals.name,),
                        ).fetchone()[0]
                    )

                with trio.fail_after(15):  # the handler's migration created its tables
                    await SqliteOffsetStore(journal.database).wait_until_caught_up(CartTotals.name)
                assert await journal.database.read(handled) == 10
                nursery.cancel_scope.cancel()

        # The fold of each cart's events, against the read model.
        def events(conn: sqlite3.Connection) -> list[tuple[str, int, str, int, bytes]]:
            return conn.execute(
                "SELECT persistence_id, seq_nr, manifest, ser_version, payload "
                "FROM event_journal ORDER BY persistence_id, seq_nr"
            ).fetchall()

        carts: dict[str, CartState] = defaultdict(CartState)
        count = 0
        for pid, seq_nr, manifest, version, data in await journal.database.read(events):
            event = registry.decode(
                SerializedPayload(manifest, version, data), persistence_id=pid, seq_nr=seq_nr
            )
            carts[pid.partition("|")[2]] = apply_event(carts[pid.partition("|")[2]], event)
            count += 1
        assert count == total

        def items(conn: sqlite3.Connection) -> list[tuple[str, str, int]]:
            return conn.execute("SELECT cart_id, item_id, quantity FROM cart_items").fetchall()

        def checked_out(conn: sqlite3.Connection) -> set[str]:
            return {r[0] for r in conn.execute("SELECT cart_id FROM checked_out_carts")}

        model = {(c, i): q for c, i, q in await journal.database.read(items) if q}
        assert model == {
            (cart_id, item): quantity
            for cart_id, state in carts.items()
            for item, quantity in state.items.items()
        }
        assert await journal.database.read(checked_out) == {
            cart_id for cart_id, state in carts.items() if state.checked_out
        }


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


async def test_rescaling_from_1_to_4_to_2_instances_loses_and_doubles_nothing(
    journal: SqliteJournal,
) -> None:
    appender = Appender(journal)
    p = projection(ExactlyOnce(apply_to_model), source=SourceSettings(page_size=20))
    appended = 0
    stop = trio.Event()

    async def keep_appending() -> None:
        nonlocal appended
        i = 0
        while not stop.is_set():
            await appender.append(f"e{i % 24}", i, i + 1)
            appended += 2
            i += 1
            await trio.sleep(0.001)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_appending)
        for count in (1, 4, 2):
            async with trio.open_nursery() as instances:
                for slices in slice_ranges(count):
                    await start(instances, journal, p, slices)
                await wait_for_model(journal, appended + 20)
                instances.cancel_scope.cancel()
        stop.set()
    await appender.append("late", 1)
    async with trio.open_nursery() as instances:
        for slices in slice_ranges(2):
            await start(instances, journal, p, slices)
        await wait_for_model(journal, appended + 1)
        instances.cancel_scope.cancel()
    await assert_model_is_the_fold(journal)


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
