"""Mistakes mypy must reject when a projection runs: each `type: ignore` line is one.

An exactly-once handler writes through its offset store's transaction, so a projection is
typed by it (`Projection[E, T]`) and `serve_projection` ties it to the store's. Never run,
only type-checked (`just lint`); see entity_ref_mistakes.py for how a reopened hole fails the
build.
"""

from __future__ import annotations

import sqlite3
from typing import assert_type

import attrs

from fluvial import (
    AtLeastOnce,
    EventEnvelope,
    ExactlyOnce,
    Projection,
    SerializerRegistry,
    SqliteJournal,
    serve_projection,
)
from fluvial.examples.cart_projection import CartTotals, handle_cart_event
from fluvial.examples.shopping_cart import ENTITY_TYPE, CartEvent
from fluvial.projection.api import JournalWithOffsetStore, OffsetStore
from fluvial.testing import MemoryJournal


@attrs.frozen
class OtherTransaction:
    """The transaction of an offset store of another kind (PostgreSQL's, say)."""


def write_elsewhere(txn: OtherTransaction, envelope: EventEnvelope[CartEvent]) -> None:
    """An exactly-once handler for that other store."""


async def count(envelope: EventEnvelope[CartEvent]) -> None:
    """An at-least-once handler: it writes through no transaction."""


def inferred() -> None:
    on_sqlite = Projection("totals", ENTITY_TYPE, ExactlyOnce(handle_cart_event))
    assert_type(on_sqlite, Projection[CartEvent, sqlite3.Connection])
    anywhere = Projection("counts", ENTITY_TYPE, AtLeastOnce(count))
    assert_type(anywhere, Projection[CartEvent, object])


async def store_mismatches(
    sqlite_journal: SqliteJournal,
    memory_journal: MemoryJournal,
    registry: SerializerRegistry,
    other_store: OffsetStore[OtherTransaction],
    other_journal: JournalWithOffsetStore[OtherTransaction],
) -> None:
    anywhere = Projection("counts", ENTITY_TYPE, AtLeastOnce(count))
    elsewhere = Projection("elsewhere", ENTITY_TYPE, ExactlyOnce(write_elsewhere))
    # What runs: the SQLite projection on the SQLite journal's own store, an at-least-once
    # one on any store, the other store's projection on it.
    await serve_projection(sqlite_journal, registry, CartTotals)
    await serve_projection(sqlite_journal, registry, anywhere, offsets=other_store)
    await serve_projection(memory_journal, registry, elsewhere, offsets=other_store)
    await serve_projection(other_journal, registry, anywhere)
    # A SQLite handler on another store (given, or the journal's own), the other store's
    # handler on SQLite's own store: mypy cannot find a transaction type for both.
    await serve_projection(sqlite_journal, registry, CartTotals, offsets=other_store)  # type: ignore[misc]
    await serve_projection(other_journal, registry, CartTotals)  # type: ignore[misc]
    await serve_projection(sqlite_journal, registry, elsewhere)  # type: ignore[misc]


def handler_mismatches() -> None:
    # A handler whose transaction is not the projection's.
    Projection[CartEvent, OtherTransaction]("x", ENTITY_TYPE, ExactlyOnce(handle_cart_event))  # type: ignore[arg-type]
