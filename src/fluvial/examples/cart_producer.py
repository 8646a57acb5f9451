"""The carts service of `fluvial demo`: shopping carts on its own SQLite journal, whose events
it publishes to other services over gRPC (`serve_producer`, docs/producer.md).

Run as a process of its own (the demo starts it):

    python -m fluvial.examples.cart_producer --db carts.db --carts 200

It prints the port it serves on, then a progress line about twice a second, and serves until
its standard input closes (the demo closes it; by hand: Ctrl-D) or Ctrl-C.
"""

from __future__ import annotations

import argparse
import random
from functools import partial
from pathlib import Path

import trio

from fluvial import Entities, SerializerRegistry, open_entities, open_sqlite_journal
from fluvial.examples.demo_process import (
    HOST,
    mark_as_demo_file,
    run_service,
    say,
    until_stdin_closes,
)
from fluvial.examples.shopping_cart import (
    AddItem,
    CartClosed,
    CartEvent,
    Checkout,
    RemoveItem,
    ShoppingCart,
    register_cart,
)
from fluvial.grpc import EventProducerSource, serve_producer
from fluvial.journal.sqlite import SqliteJournal

ITEMS = ["apple", "bread", "cheese", "dates", "eggs", "figs", "grapes", "honey"]

# What other services may subscribe to: the carts' events under the public stream id "carts".
# Without a transformation they travel as stored, so a consumer registers the cart's own
# event classes; a real service would publish a stable public contract (docs/producer.md).
CARTS: EventProducerSource[CartEvent, CartEvent] = EventProducerSource.of(
    ShoppingCart, stream_id="carts", serializers=register_cart(SerializerRegistry())
)


async def one_cart(entities: Entities) -> None:
    """Typed commands and replies on one cart, and a checked-out cart refusing a change."""
    cart = entities.ref(ShoppingCart, "alice")
    say(f"alice: AddItem(apple, 2)    -> {await cart.ask(AddItem('apple', 2))}")
    say(f"alice: RemoveItem(apple, 1) -> {await cart.ask(RemoveItem('apple', 1))}")
    say(f"alice: Checkout()           -> {await cart.ask(Checkout())}")
    try:
        await cart.ask(AddItem("cheese", 1))
    except CartClosed as exc:
        say(f"alice: AddItem(cheese, 1)   -> refused: {exc}")


async def shop(entities: Entities, cart_id: str, rng: random.Random) -> None:
    """One shopper: a few items added (some removed again), then checkout."""
    cart = entities.ref(ShoppingCart, cart_id)
    for _ in range(rng.randint(3, 12)):
        item = rng.choice(ITEMS)
        await cart.ask(AddItem(item, rng.randint(1, 3)))
        if rng.random() < 0.2:
            await cart.ask(RemoveItem(item, 1))
        await trio.sleep(rng.uniform(0, 0.1))  # a shopper takes their time
    await cart.ask(Checkout())


@trio.lowlevel.enable_ki_protection
def _start_shopper(nursery: trio.Nursery, entities: Entities, cart_id: str, seed: float) -> None:
    # KI-protected: a Ctrl-C landing inside trio's start_soon could leave a task in the
    # nursery that is never scheduled (the nursery would wait for it forever).
    nursery.start_soon(shop, entities, cart_id, random.Random(seed))


async def shop_at_a_pace(
    entities: Entities, carts: int, first_cart: int, carts_per_second: float, seed: int
) -> None:
    """`carts` shoppers arriving at `carts_per_second`, many shopping at once (their events
    land by group commit); returns once every cart is checked out."""
    rng = random.Random(seed)
    async with trio.open_nursery() as nursery:
        for n in range(first_cart, first_cart + carts):
            _start_shopper(nursery, entities, f"cart-{n:04d}", rng.random())
            await trio.sleep(1 / carts_per_second)


async def count_events(journal: SqliteJournal) -> int:
    """The events in the journal, all carts together."""
    return int(
        await journal.database.read(
            lambda conn: conn.execute("SELECT count(*) FROM event_journal").fetchone()[0]
        )
    )


async def report_progress(journal: SqliteJournal) -> None:
    """A line about twice a second while the journal grows."""
    last = -1
    while True:
        events = await count_events(journal)
        if events != last:
            say(f"{events} events in its journal")
            last = events
        await trio.sleep(0.5)


async def run_cart_producer(
    path: Path,
    *,
    carts: int,
    port: int = 0,
    first_cart: int = 0,
    carts_per_second: float = 30.0,
    intro: bool = False,
    seed: int = 7,
) -> None:
    """Serve the stream "carts" of the journal at `path` on `port` (0: a free one, printed),
    run `carts` shoppers (`cart-<first_cart>` on), then serve until stdin closes."""
    registry = register_cart(SerializerRegistry())
    async with open_sqlite_journal(path) as journal, trio.open_nursery() as nursery:
        nursery.start_soon(until_stdin_closes, nursery.cancel_scope)
        await journal.database.write(mark_as_demo_file)
        port = await nursery.start(
            partial(serve_producer, journal, [CARTS], serializers=registry, host=HOST, port=port)
        )
        say(f"serving stream {CARTS.stream_id!r} on {HOST}:{port}")
        async with open_entities(journal, registry, [ShoppingCart], snapshots=journal) as ents:
            if intro:
                await one_cart(ents)
            async with trio.open_nursery() as shopping:
                shopping.start_soon(report_progress, journal)
                await shop_at_a_pace(ents, carts, first_cart, carts_per_second, seed)
                shopping.cancel_scope.cancel()
        say(f"done shopping: {await count_events(journal)} events; serving until stopped")
        await trio.sleep_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--db", type=Path, required=True, help="the service's journal file")
    parser.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    parser.add_argument("--carts", type=int, default=200, help="shoppers to run")
    parser.add_argument("--first-cart", type=int, default=0, help="the first cart's number")
    parser.add_argument("--carts-per-second", type=float, default=30.0)
    parser.add_argument("--intro", action="store_true", help="show one cart's commands first")
    args = parser.parse_args()
    run_service(
        partial(
            run_cart_producer,
            args.db,
            carts=args.carts,
            port=args.port,
            first_cart=args.first_cart,
            carts_per_second=args.carts_per_second,
            intro=args.intro,
        )
    )


if __name__ == "__main__":
    main()
