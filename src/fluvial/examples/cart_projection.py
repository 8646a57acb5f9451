"""A read model of the shopping carts: how many of each item sit in open carts and how many
were checked out, kept by an exactly-once projection in the journal's own SQLite file."""

from __future__ import annotations

import sqlite3

from fluvial import EventEnvelope, ExactlyOnce, Projection
from fluvial.examples.shopping_cart import ENTITY_TYPE, CartEvent, CheckedOut, ItemUpdated

CREATE_TABLES = (
    "CREATE TABLE IF NOT EXISTS cart_items (cart_id TEXT NOT NULL, item_id TEXT NOT NULL, "
    "quantity INTEGER NOT NULL, PRIMARY KEY (cart_id, item_id))",
    "CREATE TABLE IF NOT EXISTS checked_out_carts (cart_id TEXT PRIMARY KEY, "
    "checked_out_at INTEGER)",
)


def create_tables(conn: sqlite3.Connection) -> None:
    """Version 1 of the read model (a migration of `CartTotals`'s handler)."""
    # Not executescript: it commits, and this runs inside the writer's transaction.
    for statement in CREATE_TABLES:
        conn.execute(statement)


def handle_cart_event(conn: sqlite3.Connection, envelope: EventEnvelope[CartEvent]) -> None:
    """Fold one cart event into the read model, in the transaction that stores the offsets."""
    cart_id = envelope.entity_id
    match envelope.event:
        case ItemUpdated(item_id, quantity):
            conn.execute(
                "INSERT INTO cart_items VALUES (?, ?, ?) ON CONFLICT (cart_id, item_id) "
                "DO UPDATE SET quantity = quantity + excluded.quantity",
                (cart_id, item_id, quantity),
            )
        case CheckedOut():
            conn.execute(
                "INSERT INTO checked_out_carts VALUES (?, ?)", (cart_id, envelope.timestamp)
            )


def popular_items(conn: sqlite3.Connection, limit: int = 5) -> list[tuple[str, int]]:
    """Items by quantity in checked-out carts, most popular first."""
    rows = conn.execute(
        "SELECT item_id, sum(quantity) AS total FROM cart_items "
        "JOIN checked_out_carts USING (cart_id) GROUP BY item_id "
        "ORDER BY total DESC, item_id LIMIT ?",
        (limit,),
    ).fetchall()
    return [(str(item), int(total)) for item, total in rows]


def clear_tables(conn: sqlite3.Connection) -> None:
    """Empty the read model, to rebuild it: `store.reset(name, clear_read_model=clear_tables)`."""
    conn.execute("DELETE FROM cart_items")
    conn.execute("DELETE FROM checked_out_carts")


# The read model's tables are created by the handler's migrations when the projection starts.
# Its exactly-once handler writes through the SQLite store's transaction, a sqlite3.Connection:
# mypy refuses to run it on a store of another kind.
CartTotals = Projection[CartEvent, sqlite3.Connection](
    name="cart-totals",
    entity_type=ENTITY_TYPE,
    handler=ExactlyOnce(handle_cart_event, migrations=[create_tables]),
)
