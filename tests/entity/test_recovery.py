"""Recovery: from the events, from snapshots, and what a corrupt stored event does."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from entity.entity_fixtures import REGISTRY, GatedJournal, SnappyCart, Storage, stored_events
from fluvial.core.ids import slice_for
from fluvial.core.records import SnapshotRecord
from fluvial.core.serialization import PayloadDecodeError, UnknownManifest
from fluvial.entity import open_entities
from fluvial.examples.shopping_cart import (
    AddItem,
    CartClosed,
    CartState,
    Checkout,
    Get,
    ShoppingCart,
    Summary,
)
from fluvial.journal.sqlite._journal import open_sqlite_journal
from fluvial.testing import MemoryJournal


async def test_state_is_recovered_after_the_runtime_is_reopened(storage: Storage) -> None:
    async with storage.open() as journal, open_entities(journal, REGISTRY, [ShoppingCart]) as ents:
        cart = ents.ref(ShoppingCart, "cart-1")
        await cart.ask(AddItem("apple", 2))
        await cart.ask(AddItem("\U0001f600", 1))
        await ents.ref(ShoppingCart, "cart-2").ask(AddItem("pear", 5))
        await cart.ask(Checkout())

    async with storage.open() as journal, open_entities(journal, REGISTRY, [ShoppingCart]) as ents:
        assert ents.live_count == 0
        cart = ents.ref(ShoppingCart, "cart-1")
        assert await cart.ask(Get()) == Summary({"apple": 2, "\U0001f600": 1}, True)
        with pytest.raises(CartClosed):
            await cart.ask(AddItem("fig", 1))
        other = ents.ref(ShoppingCart, "cart-2")
        assert await other.ask(AddItem("pear", 1)) == Summary({"pear": 6}, False)
        assert len(await stored_events(journal, "ShoppingCart|cart-2")) == 2


async def test_snapshots_are_taken_by_policy_and_kept_up_to_keep(storage: Storage) -> None:
    pid = "ShoppingCart|snappy"
    async with (
        storage.open() as journal,
        open_entities(journal, REGISTRY, [SnappyCart], snapshots=journal) as entities,
    ):
        cart = entities.ref(SnappyCart, "snappy")
        for n in range(1, 11):
            await cart.ask(AddItem(f"item-{n}", 1))
            # The snapshot is saved after the reply; the entity's next command waits for it.
            await cart.ask(Get())
            latest = await journal.load_snapshot(pid)
            assert (latest.seq_nr if latest else None) == (3 * (n // 3) or None)

        # Snapshots at 3, 6 and 9; keep=2 deleted the one at 3.
        assert await journal.load_snapshot(pid, max_seq_nr=5) is None
        at_6 = await journal.load_snapshot(pid, max_seq_nr=8)
        at_9 = await journal.load_snapshot(pid)
        assert at_6 is not None
        assert at_9 is not None
        assert at_6.seq_nr == 6
        assert at_9.seq_nr == 9
        expected = CartState({f"item-{n}": 1 for n in range(1, 10)})
        assert REGISTRY.decode(at_9.payload, persistence_id=pid, seq_nr=9) == expected
        assert (at_9.entity_type, at_9.slice) == ("ShoppingCart", slice_for(pid))


async def test_the_cart_snapshots_at_checkout() -> None:
    journal = MemoryJournal()
    async with open_entities(journal, REGISTRY, [ShoppingCart], snapshots=journal) as entities:
        cart = entities.ref(ShoppingCart, "c")
        await cart.ask(AddItem("apple", 1))
        await cart.ask(Get())
        assert await journal.load_snapshot("ShoppingCart|c") is None
        await cart.ask(Checkout())
        await cart.ask(Get())  # the snapshot is saved after the reply, before the next command
    snapshot = await journal.load_snapshot("ShoppingCart|c")
    assert snapshot is not None
    assert snapshot.seq_nr == 2


async def test_recovery_starts_from_the_snapshot_and_reads_only_later_events() -> None:
    journal = GatedJournal()
    pid = "ShoppingCart|snappy"
    async with open_entities(journal, REGISTRY, [SnappyCart], snapshots=journal) as entities:
        cart = entities.ref(SnappyCart, "snappy")
        for n in range(1, 8):
            await cart.ask(AddItem(f"item-{n}", 1))
    assert journal.reads == [(pid, 1)]

    async with open_entities(journal, REGISTRY, [SnappyCart], snapshots=journal) as entities:
        summary = await entities.ref(SnappyCart, "snappy").ask(Get())
    assert summary == Summary({f"item-{n}": 1 for n in range(1, 8)}, False)
    assert journal.reads == [(pid, 1), (pid, 7)]  # the snapshot at 6, then event 7


async def test_recovery_uses_the_stored_snapshot_state(storage: Storage) -> None:
    pid = "ShoppingCart|snappy"
    async with (
        storage.open() as journal,
        open_entities(journal, REGISTRY, [SnappyCart], snapshots=journal) as entities,
    ):
        cart = entities.ref(SnappyCart, "snappy")
        for n in range(1, 8):
            await cart.ask(AddItem(f"item-{n}", 1))
        # Replace the snapshot at 6 by one whose state no fold of the events gives: if
        # recovery reads it, the marker shows; if it replays events 1..6, it does not.
        await journal.save_snapshot(
            SnapshotRecord(
                persistence_id=pid,
                seq_nr=6,
                entity_type="ShoppingCart",
                slice=slice_for(pid),
                payload=REGISTRY.encode(CartState({"from-snapshot": 42})),
            ),
            keep=2,
        )

    async with (
        storage.open() as journal,
        open_entities(journal, REGISTRY, [SnappyCart], snapshots=journal) as entities,
    ):
        cart = entities.ref(SnappyCart, "snappy")
        assert await cart.ask(Get()) == Summary({"from-snapshot": 42, "item-7": 1}, False)
        # And the seq nrs continue after the events, not after the snapshot.
        await cart.ask(AddItem("item-8", 1))
        assert len(await stored_events(journal, pid)) == 8


def tamper(path: Path, sql: str, *params: object) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute(sql, params).rowcount == 1
        conn.commit()


def stored_row(path: Path, persistence_id: str, seq_nr: int) -> tuple[Any, ...]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        row: tuple[Any, ...] = conn.execute(
            "SELECT manifest, payload FROM event_journal WHERE persistence_id = ? AND seq_nr = ?",
            (persistence_id, seq_nr),
        ).fetchone()
        return row


@pytest.mark.parametrize(
    ("column", "value", "error"),
    [("payload", b"\xc1\xc1", PayloadDecodeError), ("manifest", "cart.Gone", UnknownManifest)],
)
async def test_a_corrupt_stored_event_fails_the_ask_and_stays_stored(
    tmp_path: Path, column: str, value: object, error: type[Exception]
) -> None:
    path = tmp_path / "journal.db"
    pid = "ShoppingCart|damaged"
    async with (
        open_sqlite_journal(path) as journal,
        open_entities(journal, REGISTRY, [ShoppingCart]) as entities,
    ):
        for item in ["a", "b", "c"]:
            await entities.ref(ShoppingCart, "damaged").ask(AddItem(item, 1))
        await entities.ref(ShoppingCart, "fine").ask(AddItem("a", 1))
    tamper(
        path,
        f"UPDATE event_journal SET {column} = ? WHERE persistence_id = ? AND seq_nr = 2",
        value,
        pid,
    )

    async with (
        open_sqlite_journal(path) as journal,
        open_entities(journal, REGISTRY, [ShoppingCart]) as entities,
    ):
        damaged = entities.ref(ShoppingCart, "damaged")
        for _attempt in range(2):  # every ask tries recovery again, and fails again
            with pytest.raises(error) as raised:
                await damaged.ask(AddItem("d", 1))
            assert isinstance(raised.value, PayloadDecodeError | UnknownManifest)
            assert (raised.value.persistence_id, raised.value.seq_nr) == (pid, 2)
            assert f"{pid} seq nr 2" in str(raised.value)
        fine = entities.ref(ShoppingCart, "fine")
        assert await fine.ask(AddItem("b", 1)) == Summary({"a": 1, "b": 1}, False)
        assert await journal.highest_seq_nr(pid) == 3

    manifest, payload = stored_row(path, pid, 2)
    assert value in (manifest, payload)
