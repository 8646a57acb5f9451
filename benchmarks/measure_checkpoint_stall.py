"""How long appends wait behind the WAL checkpoints of a SQLite journal, at a steady rate.

One event is appended every millisecond (each by a task of its own, as events arrive on the
live path, so that those arriving during a stall queue up behind it) for SECONDS seconds; an
append's latency is from its scheduled arrival to its return. The stall is I/O (copying the
WAL's frames into the database file, and its fsyncs), not CPU, so the figures mean something
on a busy machine too; still, compare two versions alternately, in one sitting.

Run: .venv/bin/python benchmarks/measure_checkpoint_stall.py [seconds] [directory]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import trio

from fluvial.core.records import EventRecord
from fluvial.core.serialization import SerializedPayload
from fluvial.journal.sqlite._journal import open_sqlite_journal

INTERVAL = 0.001
PAYLOAD = bytes(200)  # about the size of a small event on the gRPC live path


def event(seq_nr: int) -> EventRecord:
    return EventRecord(
        persistence_id="Stall|entity",
        seq_nr=seq_nr,
        entity_type="Stall",
        slice=0,
        payload=SerializedPayload("stall.Event", 1, PAYLOAD),
    )


async def measure(path: Path, seconds: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    count = int(seconds / INTERVAL)
    async with open_sqlite_journal(path) as journal:
        # Appends of one entity must stay in order: each waits for its predecessor's turn to
        # have been handed over, which trio's FIFO scheduling gives (one append per turn).
        start = trio.current_time() + 0.1

        async def append(seq_nr: int, due: float) -> None:
            await journal.append([event(seq_nr)])
            latencies.append(trio.current_time() - due)

        async with trio.open_nursery() as nursery:
            for n in range(count):
                due = start + n * INTERVAL
                await trio.sleep_until(due)
                nursery.start_soon(append, n + 1, due)
        # The WAL's high-water mark (a restart does not shrink it); gone once closed.
        wal_size = (await trio.Path(f"{path}-wal").stat()).st_size
    return latencies, wal_size


def main(seconds: float, directory: str | None) -> None:
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        cpu = time.process_time()
        latencies, wal_size = trio.run(measure, Path(tmp) / "stall.db", seconds)
    cpu = time.process_time() - cpu
    ms = sorted(latency * 1000 for latency in latencies)
    over = sum(1 for latency in ms if latency > 5)
    print(
        f"{len(ms)} appends: p50 {ms[len(ms) // 2]:.2f} ms, p99 {ms[int(len(ms) * 0.99)]:.2f}, "
        f"p99.9 {ms[int(len(ms) * 0.999)]:.2f}, max {ms[-1]:.2f}; > 5 ms: {over}; "
        f"WAL {wal_size / 2**20:.1f} MiB; process CPU {cpu:.1f} s"
    )


if __name__ == "__main__":
    main(
        float(sys.argv[1]) if len(sys.argv) > 1 else 10.0,
        sys.argv[2] if len(sys.argv) > 2 else None,
    )
