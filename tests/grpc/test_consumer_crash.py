"""A consumer process killed with SIGKILL again and again while a producer process writes.

Two OS processes on loopback, each with its own SQLite file (this file, run as a script in
either role): the producer appends events to its journal at a steady pace, until told to stop,
and serves them (`serve_producer`); the consumer runs an exactly-once projection of them
(`open_grpc_consumer`) into a read model in its own file. The test kills the consumer at
random moments 10 times, checking after each kill that no event was applied twice, then lets
a last consumer catch up: its read model is the fold of the producer's journal, every event
once.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from fluvial.core.projection_errors import ProjectionLeaseHeld
from fluvial.core.records import MAX_SEQ_NR, EventRecord
from fluvial.grpc import ConsumerSettings, Reconnect, open_grpc_consumer, serve_producer
from fluvial.journal.sqlite._journal import open_sqlite_journal
from fluvial.projection._runner import serve_projection

TESTS = Path(__file__).parent.parent
KILLS = 10
ENTITIES = 8
LEASE_DURATION = 0.5  # a killed consumer's lease blocks the next one for at most this long


def producer(path: str, port_file: str) -> None:
    from consumer_helpers import PRODUCER_SETTINGS

    from producer_fixtures import INTERNAL, SOURCE, Appender

    async def main() -> None:
        async with open_sqlite_journal(path) as journal, trio.open_nursery() as nursery:
            port = await nursery.start(
                lambda task_status: serve_producer(
                    journal,
                    [SOURCE],
                    serializers=INTERNAL,
                    settings=PRODUCER_SETTINGS,
                    task_status=task_status,
                )
            )
            await trio.Path(port_file).write_text(str(port))
            appender, n = Appender(journal), 0
            while not await trio.Path(port_file + ".stop").exists():
                await appender.append(f"e{n % ENTITIES}", -1 if n % 5 == 4 else n)
                n += 1
                await trio.sleep(0.005)
            await trio.Path(port_file + ".done").touch()

    trio.run(main)


def consumer(path: str, port: int) -> None:
    import attrs
    from consumer_helpers import CONSUMER_REGISTRY, credits_projection

    projection = attrs.evolve(credits_projection(), lease_duration=LEASE_DURATION)
    settings = ConsumerSettings(reconnect=Reconnect(initial=0.05, maximum=0.5))

    async def main() -> None:
        async with (
            open_sqlite_journal(path) as journal,
            open_grpc_consumer("127.0.0.1", port, settings=settings) as source,
        ):
            while True:
                try:
                    await serve_projection(
                        source, CONSUMER_REGISTRY, projection, offsets=journal.offset_store()
                    )
                except ProjectionLeaseHeld as held:  # the killed consumer's, until it expires
                    await trio.sleep(held.expires_in)

    trio.run(main)


def start(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS / "grpc")])}
    return subprocess.Popen([sys.executable, __file__, *args], env=env)


def wait_until(done: Callable[[], bool], *processes: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while not done():
        for process in processes:
            assert process.poll() is None, f"a process exited: {process.returncode}"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.01)  # other processes: polling their files is the signal there is


def holds(path: Path, count: int) -> Callable[[], bool]:
    """Whether the consumer's read model in `path` holds at least `count` events."""
    from consumer_helpers import read_credits

    return lambda: len(read_credits(path)) >= count


def kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()


async def stored_events(path: Path) -> list[EventRecord]:
    async with open_sqlite_journal(path) as journal:
        events: list[EventRecord] = []
        for n in range(ENTITIES):
            pid = f"Account|e{n}"
            events.extend(await journal.read_events(pid, 1, MAX_SEQ_NR, 1_000_000))
        return events


@pytest.mark.slow
def test_a_consumer_killed_10_times_ends_with_the_fold_of_the_producers_journal(
    tmp_path: Path,
) -> None:
    from consumer_helpers import fold, read_credits

    rng = random.Random(10)
    producer_file, consumer_file = tmp_path / "producer.db", tmp_path / "consumer.db"
    port_file = tmp_path / "port"
    producing = start("producer", str(producer_file), str(port_file))
    try:
        wait_until(port_file.exists, producing)
        port = port_file.read_text()
        sizes = []
        for _ in range(KILLS):
            consuming = start("consumer", str(consumer_file), port)
            try:
                before = len(read_credits(consumer_file))
                target = before + rng.randint(1, 60)
                wait_until(holds(consumer_file, target), consuming)
                time.sleep(rng.uniform(0, 0.05))
            finally:
                kill(consuming)
            model = read_credits(consumer_file)
            assert {times for _, times in model.values()} == {1}
            sizes.append(len(model))
        assert sizes == sorted(sizes) and sizes[-1] > sizes[0], sizes
        Path(str(port_file) + ".stop").touch()
        done = Path(str(port_file) + ".done")
        wait_until(done.exists, producing)
        expected = fold(trio.run(stored_events, producer_file))
        consuming = start("consumer", str(consumer_file), port)
        try:
            wait_until(holds(consumer_file, len(expected)), consuming)
            time.sleep(0.3)  # an event applied twice late would show now
        finally:
            kill(consuming)
    finally:
        kill(producing)
    assert read_credits(consumer_file) == expected


if __name__ == "__main__":
    if sys.argv[1] == "producer":
        producer(sys.argv[2], sys.argv[3])
    else:
        consumer(sys.argv[2], int(sys.argv[3]))
