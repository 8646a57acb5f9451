"""`fluvial demo`: two services on loopback, replicating events over gRPC with no broker.

The carts service (`cart_producer`, a process of its own) runs shopping carts on its SQLite
journal and publishes their events; the reporting service (`cart_consumer`, another process)
consumes them over gRPC into an exactly-once read model in its own SQLite file. This module
starts both, prints what each says (its live count of events) with its name, SIGKILLs the
consumer mid-stream and starts it again (it resumes from its stored offsets), and at the end
checks that the consumer's read model is the fold of the producer's journal: every event
applied exactly once.

The demo writes two database files (and SQLite's `-wal` / `-shm` beside them): the journal
at `--db FILE` and the consumer's file beside it (`consumer_file`). It marks each as its own
with a `fluvial_demo` table, so that a later run replaces demo files and nothing else: any
other file at either path (a user's journal, another database, a text file) is refused with
`DemoFileRefused` and left as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import trio

from fluvial import SerializerRegistry, open_sqlite_journal
from fluvial.core.records import MAX_SEQ_NR
from fluvial.examples.cart_consumer import CartsView, read_view
from fluvial.examples.demo_files import DemoFileRefused as DemoFileRefused
from fluvial.examples.demo_files import clear_previous_demo, consumer_file, resolved
from fluvial.examples.demo_process import say
from fluvial.examples.demo_services import DemoFailed as DemoFailed
from fluvial.examples.demo_services import running
from fluvial.examples.shopping_cart import ENTITY_TYPE, CartState, apply_event, register_cart

# How long the whole demo may take before it gives up (it takes ~15 s).
_TIME_LIMIT = 120.0
# The consumer is killed once it projected this many events (or the producer is done).
_KILL_AT_EVENTS = 300


async def run_demo(path: Path, carts: int) -> None:
    """Run the demo with `carts` shoppers: the journal at `path`, the consumer's file beside it.

    A symlink at `path` is resolved once, first: the journal (and SQLite's files beside it) is
    its target, replaced or refused as a file there would be, and the link is left as it is.
    Demo files already at either path are replaced; any other file there makes it raise
    `DemoFileRefused` before anything is written and before any process is started (see
    `demo_files`). Raises `DemoFailed` if a service exits early, the demo takes more
    than 120 s, or the read model is not the fold of the journal.
    """
    path = await trio.to_thread.run_sync(resolved, path)
    reports = consumer_file(path)
    await trio.to_thread.run_sync(clear_previous_demo, path, reports)
    await trio.to_thread.run_sync(lambda: path.parent.mkdir(parents=True, exist_ok=True))
    say("fluvial demo — two services on loopback, events replicated over gRPC, no broker")
    say(f"  producer: shopping carts, journal {path}")
    say(f"  consumer: an exactly-once read model of the carts, in {reports}\n")

    with trio.move_on_after(_TIME_LIMIT) as limit:
        await _replicate(path, reports, carts)
    if limit.cancelled_caught:
        raise DemoFailed(f"the demo did not finish in {_TIME_LIMIT:.0f}s")

    expected, projected = await journal_view(path), await consumer_view(reports)
    if projected != expected:
        raise DemoFailed(
            f"the consumer's read model is not the fold of the producer's journal: "
            f"{projected.total_events} events projected, {expected.total_events} in the journal"
        )
    say(
        f"\nthe consumer's read model equals the fold of the producer's journal: "
        f"{expected.total_events} events of {len(expected.events)} carts, each applied once, "
        f"{len(expected.checked_out)} carts checked out"
    )
    say(f"done. Inspect the files with: sqlite3 {path}  /  sqlite3 {reports}")


async def _replicate(journal: Path, reports: Path, carts: int) -> None:
    producer_args = ["--db", str(journal), "--carts", str(carts), "--intro"]
    async with running("producer", "fluvial.examples.cart_producer", *producer_args) as producer:
        await producer.wait_until(lambda: producer.port is not None, "serving")
        consumer_args = ["--db", str(reports), "--port", str(producer.port)]
        consumer_module = "fluvial.examples.cart_consumer"
        async with running("consumer", consumer_module, *consumer_args) as consumer:
            await consumer.wait_until(
                lambda: (
                    consumer.events >= _KILL_AT_EVENTS
                    or (producer.done_shopping and consumer.events > 0)
                ),
                "projecting events",
            )
            consumer.kill()
            say(f"\n  demo     | SIGKILL to the consumer at {consumer.events} events projected\n")
        await trio.sleep(1)  # the producer goes on meanwhile
        say("  demo     | the consumer starts again, from the offsets it stored\n")
        async with running("consumer", consumer_module, *consumer_args) as consumer:
            await producer.wait_until(lambda: producer.done_shopping, "it was done shopping")
            await consumer.wait_until(
                lambda: consumer.events >= producer.events, "it projected every event"
            )
            say("\n  demo     | stopping both services")


async def journal_view(path: Path, upto: Mapping[str, int] | None = None) -> CartsView:
    """What the consumer's read model must hold: the fold of every event in the producer's
    journal (each cart's state by the cart's own event handler), each event once.

    With `upto` (cart id -> count), only the first `count` events of those carts: what a
    consumer that has applied that many of each must hold (the crash tests' check mid-stream).
    """
    registry = register_cart(SerializerRegistry())
    events: dict[str, int] = {}
    items: dict[tuple[str, str], int] = {}
    checked_out: set[str] = set()
    async with open_sqlite_journal(path) as journal:
        if upto is None:
            pids = await journal.database.read(
                lambda c: [
                    row[0] for row in c.execute("SELECT DISTINCT persistence_id FROM event_journal")
                ]
            )
        else:
            pids = [f"{ENTITY_TYPE}|{cart_id}" for cart_id in upto]
        for pid in pids:
            cart_id = pid.split("|", 1)[1]
            state = CartState()
            last = MAX_SEQ_NR if upto is None else upto[cart_id]
            records = await journal.read_events(pid, 1, last, 1_000_000)
            for record in records:
                assert record.payload is not None
                event = registry.decode(record.payload, persistence_id=pid, seq_nr=record.seq_nr)
                state = apply_event(state, event)
            events[cart_id] = len(records)
            items.update({(cart_id, item): n for item, n in state.items.items()})
            if state.checked_out:
                checked_out.add(cart_id)
    return CartsView(events, items, frozenset(checked_out))


async def consumer_view(path: Path) -> CartsView:
    """The consumer's read model, as its file holds it."""
    async with open_sqlite_journal(path) as local:
        return await local.database.read(read_view)
