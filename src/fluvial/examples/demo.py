"""`fluvial demo`: shopping carts on an embedded SQLite journal, with a projection following.

It shows, with real files and tasks: typed commands and replies, a closed cart refusing
changes, many carts handled concurrently with group commit, an exactly-once projection
catching up and then following on the live path, and carts recovered from snapshots and
events after a restart.

The demo writes one journal file (and SQLite's `-wal` / `-shm` beside it). It marks the
journal as its own with a `fluvial_demo` table, so that a later run replaces a demo journal
and nothing else: any other file at that path (a user's journal, another database, a text
file) is refused with `DemoFileRefused` and left as it is.
"""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

import trio

from fluvial import (
    Entities,
    SerializerRegistry,
    SliceRange,
    SqliteOffsetStore,
    UsageError,
    WriteTransaction,
    open_entities,
    open_sqlite_journal,
    serve_projection,
)
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

ITEMS = ["apple", "bread", "cheese", "dates", "eggs", "figs", "grapes", "honey"]

# The table that says "the demo made this file". Its name and its one row are both checked,
# so that an unrelated database that happens to have such a table is still not deleted.
_MARKER_TABLE = "fluvial_demo"
_MARKER_TEXT = "journal written by `fluvial demo`; the next run replaces it"
# SQLite's files beside a database: the write-ahead log, its index, a rollback journal.
_SIDECARS = ("-wal", "-shm", "-journal")
_SQLITE_HEADER = b"SQLite format 3\x00"


class DemoFileRefused(UsageError):
    """`fluvial demo --db FILE` found a FILE that the demo did not write; nothing was changed."""


def say(text: str) -> None:
    """Print one line of the demo's story at once (the demo runs for a few seconds)."""
    print(text, flush=True)


def is_demo_journal(path: Path) -> bool:
    """Whether `path` is a journal that `fluvial demo` wrote (it holds the demo's marker).

    Reads without creating anything: a file that is not SQLite is not opened as a database,
    and a database without both a write-ahead log and its index is opened immutable (a
    read-only open of a log without its `-shm` would create one). Any file SQLite cannot read
    (locked, corrupt) answers False.
    """
    if not path.is_file():
        return False
    with path.open("rb") as file:
        if file.read(len(_SQLITE_HEADER)) != _SQLITE_HEADER:
            return False
    # With a log and its index (a demo killed while running), the marker may still be in the
    # log: read through SQLite's usual read-only path, which needs both to create nothing.
    log_and_index = all(path.with_name(path.name + s).exists() for s in ("-wal", "-shm"))
    uri = path.resolve().as_uri() + ("?mode=ro" if log_and_index else "?mode=ro&immutable=1")
    try:
        connection = sqlite3.connect(uri, uri=True)
        try:
            row = connection.execute(f"SELECT note FROM {_MARKER_TABLE}").fetchone()
        finally:
            connection.close()
    except sqlite3.Error:
        return False
    return row is not None and row[0] == _MARKER_TEXT


def clear_previous_demo(path: Path) -> None:
    """Delete the demo journal at `path` (and its SQLite sidecar files) from an earlier run.

    Raises `DemoFileRefused`, deleting nothing, if `path` exists and is not a demo journal,
    or if a sidecar file of `path` is there without its database (a log of something else).
    Does nothing if `path` does not exist.
    """
    sidecars = [path.with_name(path.name + suffix) for suffix in _SIDECARS]
    if not path.exists():
        orphans = [str(s) for s in sidecars if s.exists()]
        if orphans:
            raise DemoFileRefused(
                f"{', '.join(orphans)} exists without {path}: not removed; "
                "delete it yourself or choose another --db"
            )
        return
    if not is_demo_journal(path):
        raise DemoFileRefused(
            f"{path} exists and is not a journal written by `fluvial demo`: left unchanged; "
            "choose another --db (or delete the file yourself)"
        )
    for file in [path, *sidecars]:
        file.unlink(missing_ok=True)


def _resolved(path: Path) -> Path:
    """`path` with its symlinks followed, even to a file that does not exist yet."""
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop (RuntimeError before 3.13)
        raise DemoFileRefused(f"{path} cannot be resolved: {exc}; choose another --db") from exc


def _prepare_journal(txn: WriteTransaction) -> None:
    """Mark the new journal as the demo's and create the read model's tables."""
    connection = txn.connection
    connection.execute(f"CREATE TABLE {_MARKER_TABLE} (note TEXT NOT NULL)")
    connection.execute(f"INSERT INTO {_MARKER_TABLE} VALUES (?)", (_MARKER_TEXT,))
    create_tables(connection)


async def _shop(entities: Entities, cart_id: str, rng: random.Random) -> None:
    cart = entities.ref(ShoppingCart, cart_id)
    for _ in range(rng.randint(3, 12)):
        item = rng.choice(ITEMS)
        await cart.ask(AddItem(item, rng.randint(1, 3)))
        if rng.random() < 0.2:
            await cart.ask(RemoveItem(item, 1))
    await cart.ask(Checkout())


@trio.lowlevel.enable_ki_protection
def _start_shopping(
    nursery: trio.Nursery, entities: Entities, carts: int, rng: random.Random
) -> None:
    """Start a shopping task per cart. KI-protected: a Ctrl-C landing inside trio's
    `start_soon` could leave a task in the nursery that is never scheduled (the nursery would
    then wait for it forever); protected, it comes at the next checkpoint instead."""
    for i in range(carts):
        nursery.start_soon(_shop, entities, f"cart-{i:04d}", random.Random(rng.random()))


async def _backlog(store: SqliteOffsetStore) -> int:
    return await store.backlog(CartTotals.name, CartTotals.entity_type, SliceRange.all())


async def _wait_for_projection(store: SqliteOffsetStore) -> int:
    """Wait until the projection has caught up (the caller bounds the wait); its backlog."""
    await store.wait_until_caught_up(CartTotals.name)
    return await _backlog(store)


async def run_demo(path: Path, carts: int, seed: int = 7) -> None:
    """Run the demo's five steps with `carts` concurrent carts, on a new journal at `path`.

    A symlink at `path` is resolved once, first: the journal (and SQLite's files beside it) is
    its target, replaced or refused as a file there would be, and the link is left as it is.
    A demo journal already at `path` is replaced; any other file there makes it raise
    `DemoFileRefused` before anything is written and before any task is started (see
    `clear_previous_demo`).
    """
    rng = random.Random(seed)
    path = await trio.to_thread.run_sync(_resolved, path)
    await trio.to_thread.run_sync(clear_previous_demo, path)
    await trio.to_thread.run_sync(lambda: path.parent.mkdir(parents=True, exist_ok=True))
    registry = register_cart(SerializerRegistry())
    say(f"fluvial demo — journal: {path}")

    async with open_sqlite_journal(path) as journal:
        await journal.database.write(_prepare_journal)
        store = journal.offset_store()
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
                _start_shopping(nursery, ents, carts, rng)
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
