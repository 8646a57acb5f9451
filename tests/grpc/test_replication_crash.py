"""Replication between two OS processes killed with SIGKILL: the demo's two services.

The producer (`fluvial.examples.cart_producer`) runs shopping carts on its SQLite journal and
serves their events; the consumer (`fluvial.examples.cart_consumer`) projects them over gRPC
on loopback into an exactly-once read model in its own SQLite file. Each runs as a process of
its own (started, followed and killed by the demo's `running`), so SIGKILL lands wherever the
process is: in a handler's transaction, between a batch and its offsets, while it migrates its
read model or takes its lease, in the middle of a journal write, of an HTTP/2 frame.

What must hold is the demo's own check, at every kill: the consumer's read model is the fold
of the first events of each cart in the producer's journal, as many as it counted (a doubled
event or a lost one would differ), and at the end the fold of the whole journal.
"""

from __future__ import annotations

import random
import socket
import sqlite3
from pathlib import Path

import pytest
import trio

from fluvial.examples.cart_consumer import CartsView, read_view
from fluvial.examples.demo import journal_view
from fluvial.examples.demo_services import ServiceProcess, running

PRODUCER = "fluvial.examples.cart_producer"
CONSUMER = "fluvial.examples.cart_consumer"
KILLS = 10
LEASE = "0.5"  # a killed consumer's lease blocks the next one for at most this long
TIME_LIMIT = 120  # seconds for a whole test; on an idle machine ~30 s and ~10 s


def projected(path: Path) -> CartsView:
    """The consumer's read model as its file holds it now (empty before it exists)."""
    try:
        connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    except sqlite3.OperationalError:  # not created yet: opening read-only creates nothing
        return CartsView({}, {}, frozenset())
    try:
        return read_view(connection)
    finally:
        connection.close()


async def until_projected(path: Path, count: int, *services: ServiceProcess) -> None:
    """Until the read model in `path` counts `count` events (at most 30 s), while every one of
    `services` runs. Polls: the other process's file is the only signal there is."""
    with trio.move_on_after(30):
        while projected(path).total_events < count:
            for service in services:
                assert not service.ended, f"the {service.name} exited"
            await trio.sleep(0.01)
        return
    raise AssertionError(f"{projected(path).total_events} events projected, not {count}")


async def assert_is_the_fold_of_what_it_counted(reports: Path, journal: Path) -> CartsView:
    view = projected(reports)
    assert view == await journal_view(journal, upto=view.events)
    return view


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def shopping(journal: Path, port: int, carts: int, first_cart: int = 0) -> list[str]:
    """The producer's arguments: `carts` shoppers at 20 a second (~200 events/s)."""
    where = ["--db", str(journal), "--port", str(port)]
    pace = ["--carts-per-second", "20"]
    return [*where, *pace, "--carts", str(carts), "--first-cart", str(first_cart)]


@pytest.mark.slow
async def test_a_consumer_killed_10_times_at_random_points_ends_with_the_fold_of_the_journal(
    tmp_path: Path,
) -> None:
    rng = random.Random(10)
    journal, reports, port = tmp_path / "producer.db", tmp_path / "consumer.db", free_port()
    consumer_args = ["--db", str(reports), "--port", str(port), "--lease-duration", LEASE]
    sizes = []
    with trio.fail_after(TIME_LIMIT):
        async with running("producer", PRODUCER, *shopping(journal, port, 100_000)) as producer:
            for _ in range(KILLS):
                async with running("consumer", CONSUMER, *consumer_args) as consumer:
                    if rng.random() < 0.3:  # anywhere in its start: imports, migrations, lease
                        await trio.sleep(rng.uniform(0.0, 2.5))
                    else:  # while it projects
                        target = projected(reports).total_events + rng.randint(1, 80)
                        await until_projected(reports, target, consumer)
                        await trio.sleep(rng.uniform(0, 0.05))
                    consumer.kill()
                view = await assert_is_the_fold_of_what_it_counted(reports, journal)
                sizes.append(view.total_events)
            assert not producer.ended
        # The producer stopped shopping (and serving); it serves its journal again, as it is.
        assert sizes == sorted(sizes) and sizes[-1] > sizes[0], sizes
        expected = await journal_view(journal)
        async with (
            running("producer", PRODUCER, *shopping(journal, port, 0)),
            running("consumer", CONSUMER, *consumer_args) as consumer,
        ):
            await until_projected(reports, expected.total_events, consumer)
            await trio.sleep(0.3)  # an event applied twice late would show now
    assert projected(reports) == expected


@pytest.mark.slow
async def test_a_producer_killed_mid_stream_and_restarted_leaves_the_consumer_every_event_once(
    tmp_path: Path,
) -> None:
    rng = random.Random(11)
    journal, reports, port = tmp_path / "producer.db", tmp_path / "consumer.db", free_port()
    consumer_args = ["--db", str(reports), "--port", str(port)]
    with trio.fail_after(TIME_LIMIT):
        # One consumer process throughout: it connects (with its backoff) once the producer
        # is up, and reconnects by itself after the kill.
        async with running("consumer", CONSUMER, *consumer_args) as consumer:
            async with running("producer", PRODUCER, *shopping(journal, port, 100_000)) as first:
                target = rng.randint(100, 300)
                await until_projected(reports, target, consumer, first)
                first.kill()  # mid-stream: shopping, committing, sending batches
            await assert_is_the_fold_of_what_it_counted(reports, journal)
            await trio.sleep(rng.uniform(0.1, 0.5))
            async with running(
                "producer", PRODUCER, *shopping(journal, port, 30, first_cart=50_000)
            ) as second:
                await second.wait_until(lambda: second.done_shopping, "it was done shopping")
                expected = await journal_view(journal)
                await until_projected(reports, expected.total_events, consumer)
                await trio.sleep(0.3)  # an event applied twice late would show now
            assert not consumer.ended  # the same consumer process, never restarted
    assert projected(reports) == expected
    assert {f"cart-{n}" for n in range(50_000, 50_030)} <= expected.checked_out
