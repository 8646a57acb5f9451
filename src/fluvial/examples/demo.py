"""`fluvial demo`: shopping carts on an embedded SQLite journal, with a projection following.

It shows, with real files and tasks: typed commands and replies, a closed cart refusing
changes, many carts handled concurrently with group commit, an exactly-once projection
catching up and then following on the live path, and carts recovered from snapshots and
events after a restart.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import trio

from fluvial.core.ids import SliceRange
from fluvial.core.serialization import SerializerRegistry
from fluvial.entity.runtime import Entities, open_entities
from fluvial.examples.cart_projection import CartTotals, create_tables, popular_items
from fluvial.examples.shopping_cart import (
    AddItem,
    CartClosed,
    Checkout,
    Get,
    RemoveItem,
    ShoppingCart,
    register_cart,
)
from fluvial.journal.sqlite_journal import open_sqlite_journal
from fluvial.journal.sqlite_offset_store import SqliteOffsetStore
from fluvial.projection.runner import serve_projection

ITEMS = ["apple", "bread", "cheese", "dates", "eggs", "figs", "grapes", "honey"]


def say(text: str) -> None:
    print(text, flush=True)


async def _shop(entities: Entities, cart_id: str, rng: random.Random) -> None:
    cart = entities.ref(ShoppingCart, cart_id)
    for _ in range(rng.randint(3, 12)):
        item = rng.choice(ITEMS)
        await cart.ask(AddItem(item, rng.randint(1, 3)))
        if rng.random() < 0.2:
            await cart.ask(RemoveItem(item, 1))
    await cart.ask(Checkout())


async def _backlog(store: SqliteOffsetStore) -> int:
    return await store.backlog(CartTotals.name, CartTotals.entity_type, SliceRange.all())


async def _wait_for_projection(store: SqliteOffsetStore) -> int:
    """Wait until the projection has caught up (the caller bounds the wait); its backlog."""
    await store.wait_until_caught_up(CartTotals.name)
    return await _backlog(store)


async def run_demo(path: Path, carts: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    for stale in path.parent.glob(path.name + "*"):
        stale.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    registry = register_cart(SerializerRegistry())
    say(f"fluvial demo — journal: {path}")

    async with open_sqlite_journal(path) as journal:
        await journal.database.write(lambda txn: create_tables(txn.connection))
        store = SqliteOffsetStore(journal.database)
        async with open_entities(journal, registry, [ShoppingCart], snapshots=journal) as ents:
            say("\n1. One cart, typed commands and replies")
            cart = ents.ref(ShoppingCart, "alice")
            say(f"   AddItem(apple, 2)  -> {await cart.ask(AddItem('apple', 2))}")
            say(f"   AddItem(bread, 1)  -> {await cart.ask(AddItem('bread', 1))}")
            say(f"   RemoveItem(apple, 1) -> {await cart.ask(RemoveItem('apple', 1))}")
            say(f"   Checkout()         -> {await cart.ask(Checkout())}")
            try:
                await cart.ask(AddItem("cheese", 1))
            except CartClosed as exc:
                say(f"   AddItem(cheese, 1) -> refused: {exc}")

            say(f"\n2. {carts} carts shopping concurrently (events land by group commit)")
            started = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for i in range(carts):
                    nursery.start_soon(_shop, ents, f"cart-{i:04d}", random.Random(rng.random()))
            elapsed = time.perf_counter() - started
            events = await journal.database.read(
                lambda conn: conn.execute("SELECT count(*) FROM event_journal").fetchone()[0]
            )
            say(f"   {events} events persisted in {elapsed:.2f}s")

        say("\n3. A projection catches up on those events, then follows live ones")
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_projection, journal, registry, CartTotals)
            with trio.move_on_after(30):
                await _wait_for_projection(store)
            behind = await _backlog(store)
            say(f"   caught up (backlog {behind}); most popular checked-out items:")
            for item, total in await journal.database.read(popular_items):
                say(f"     {item:<8} {total}")
            async with open_entities(journal, registry, [ShoppingCart], snapshots=journal) as e:
                say("\n4. After a restart, carts recover from snapshots and events")
                summary = await e.ref(ShoppingCart, "cart-0000").ask(Get())
                say(f"   cart-0000 -> {summary}")
                late = e.ref(ShoppingCart, "late-shopper")
                await late.ask(AddItem("honey", 5))
                await late.ask(Checkout())
            with trio.move_on_after(10):
                await _wait_for_projection(store)
            behind = await _backlog(store)
            say(f"   a new cart checked out; the projection followed it (backlog {behind}):")
            for item, total in await journal.database.read(lambda c: popular_items(c, 3)):
                say(f"     {item:<8} {total}")
            offsets = await store.offsets(CartTotals.name)
            say(
                f"\n5. The projection's stored offsets cover {len(offsets)} slices; "
                f"backlog {behind}"
            )
            nursery.cancel_scope.cancel()
    say("\ndone. Inspect the file with: sqlite3 " + str(path))
