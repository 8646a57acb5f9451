"""`serve_projection` over a real SQLite journal file, by every path: catch-up and follow, the
live path, duplicates and gaps between the paths, a cart projection's read model, and
rescaling the instances."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from pathlib import Path

import pytest
import trio
import trio.testing

from fluvial.core.ids import slice_ranges
from fluvial.core.offset_tracker import (
    Duplicate,
    EnvelopeSource,
    OffsetTracker,
    PreviousEvent,
    Verdict,
)
from fluvial.core.records import EventRecord
from fluvial.core.serialization import SerializedPayload, SerializerRegistry
from fluvial.journal.sqlite._journal import SqliteJournal, open_sqlite_journal
from fluvial.journal.sqlite._offset_store import SqliteOffsetStore
from fluvial.projection._handlers import (
    AtLeastOnce,
    ExactlyOnce,
)
from fluvial.projection._runner import serve_projection
from fluvial.projection._source_settings import SourceSettings
from projection.projection_helpers import (
    QUIET,
    Appender,
    Recorder,
    StallableQuery,
    apply_to_model,
    assert_model_is_the_fold,
    model_order,
    projection,
    start,
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

    def counting(
        self: OffsetTracker,
        record: EventRecord,
        source: EnvelopeSource,
        previous: PreviousEvent | None = None,
    ) -> Verdict:
        verdict = validate(self, record, source, previous)
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
