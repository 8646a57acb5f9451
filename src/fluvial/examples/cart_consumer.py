"""The reporting service of `fluvial demo`: it consumes the carts service's events over gRPC
(`open_grpc_consumer`, docs/consumer.md) and keeps a read model of them in its own SQLite
file, with an exactly-once projection: each event's writes and the projection's offsets commit
in one transaction, so a consumer killed at any moment resumes from its stored offsets and
applies every event exactly once.

Run as a process of its own (the demo starts it, with the producer's port):

    python -m fluvial.examples.cart_consumer --db reports.db --port 50051

It prints a progress line about twice a second and runs until its standard input closes (the
demo closes it; by hand: Ctrl-D) or Ctrl-C.
"""

from __future__ import annotations

import argparse
import sqlite3
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import attrs
import trio

from fluvial import (
    Backoff,
    EventEnvelope,
    ExactlyOnce,
    FirstSight,
    Projection,
    ProjectionLeaseHeld,
    SerializerRegistry,
    open_sqlite_journal,
    serve_projection,
)
from fluvial.examples.cart_projection import create_tables, handle_cart_event
from fluvial.examples.demo_process import (
    HOST,
    mark_as_demo_file,
    run_service,
    say,
    until_stdin_closes,
)
from fluvial.examples.shopping_cart import CartEvent, register_cart
from fluvial.grpc import ConsumerSettings, Reconnect, open_grpc_consumer
from fluvial.journal.sqlite import SqliteJournal

STREAM_ID = "carts"  # the producer's public stream id: a consumer names it, not an entity type


def create_event_counts(conn: sqlite3.Connection) -> None:
    """Version 2 of the read model: how many events of each cart were applied."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS cart_events (cart_id TEXT PRIMARY KEY, events INTEGER)"
    )


def project_cart_event(conn: sqlite3.Connection, envelope: EventEnvelope[CartEvent]) -> None:
    """Fold one cart event into the read model, and count it: an event applied twice or lost
    would show in the count (the demo compares it with the producer's journal)."""
    handle_cart_event(conn, envelope)
    conn.execute(
        "INSERT INTO cart_events VALUES (?, 1) "
        "ON CONFLICT (cart_id) DO UPDATE SET events = events + 1",
        (envelope.entity_id,),
    )


CartReports = Projection[CartEvent, sqlite3.Connection](
    name="cart-reports",
    entity_type=STREAM_ID,
    handler=ExactlyOnce(project_cart_event, migrations=[create_tables, create_event_counts]),
    # A killed consumer's lease blocks its restart until it expires: short, for the demo.
    lease_duration=2.0,
    backoff=Backoff(min=0.2, max=2.0),
)

SETTINGS = ConsumerSettings(
    reconnect=Reconnect(initial=0.2, maximum=2.0),
    # The producer's journal is SQLite (one writer): events are seen in commit order.
    first_sight=FirstSight.QUERY_IN_COMMIT_ORDER,
)


@attrs.frozen
class CartsView:
    """What a read model of the carts holds: each cart's event count, the non-zero quantity
    of each (cart, item), and the checked-out carts."""

    events: Mapping[str, int]
    items: Mapping[tuple[str, str], int]
    checked_out: frozenset[str]

    @property
    def total_events(self) -> int:
        return sum(self.events.values())


def read_view(conn: sqlite3.Connection) -> CartsView:
    """The read model in `conn`'s database (empty before the projection created it)."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    if "cart_events" not in tables:
        return CartsView({}, {}, frozenset())
    events = dict(conn.execute("SELECT cart_id, events FROM cart_events"))
    items = conn.execute("SELECT cart_id, item_id, quantity FROM cart_items WHERE quantity != 0")
    checked_out = conn.execute("SELECT cart_id FROM checked_out_carts")
    return CartsView(
        events={str(cart): int(n) for cart, n in events.items()},
        items={(str(cart), str(item)): int(n) for cart, item, n in items},
        checked_out=frozenset(str(cart) for (cart,) in checked_out),
    )


async def report_progress(local: SqliteJournal) -> None:
    """A line about twice a second while the read model grows."""
    last = -1
    while True:
        view = await local.database.read(read_view)
        if view.total_events != last:
            say(f"{view.total_events} events projected, {len(view.checked_out)} carts checked out")
            last = view.total_events
        await trio.sleep(0.5)


async def run_cart_consumer(path: Path, *, port: int, lease_duration: float = 2.0) -> None:
    """Project the stream "carts" of the producer on `HOST`:`port` into the read model in the
    SQLite file at `path`, until stdin closes."""
    registry = register_cart(SerializerRegistry())  # the events travel as the producer stores them
    projection = attrs.evolve(CartReports, lease_duration=lease_duration)
    async with (
        open_sqlite_journal(path) as local,  # only its offset store and read model are used
        open_grpc_consumer(HOST, port, settings=SETTINGS) as producer,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(until_stdin_closes, nursery.cancel_scope)
        await local.database.write(mark_as_demo_file)
        view = await local.database.read(read_view)
        say(f"consuming {STREAM_ID!r} from {HOST}:{port}; {view.total_events} events projected")
        nursery.start_soon(report_progress, local)
        while True:
            try:
                await serve_projection(producer, registry, projection, offsets=local.offset_store())
            except ProjectionLeaseHeld as held:  # a killed consumer's, until it expires
                say(f"waiting {held.expires_in:.1f}s for the lease of a killed consumer to expire")
                await trio.sleep(held.expires_in)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--db", type=Path, required=True, help="the read model's SQLite file")
    parser.add_argument("--port", type=int, required=True, help="the producer's port")
    parser.add_argument("--lease-duration", type=float, default=2.0)
    args = parser.parse_args()
    run_service(
        partial(run_cart_consumer, args.db, port=args.port, lease_duration=args.lease_duration)
    )


if __name__ == "__main__":
    main()
