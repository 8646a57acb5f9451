"""An exactly-once projection process killed with SIGKILL mid-batch, again and again.

A child process (this file, run as a script) serves an exactly-once projection whose handler
writes a read model table in the journal's own SQLite file. The parent pre-fills the journal,
then 20 times: lets the child handle some envelopes, kills it at a random moment (most often
while a transaction is open: the handler has run, the commit has not), checks the file,
appends a few more events, and starts a new child. After every kill the read model holds
exactly the events the stored offsets say were handled, each once and in order; at the end
it is the fold of the whole journal.

The handler also notes every envelope it is given in a plain file, outside the transaction:
an envelope noted there but missing from the read model was handled by a transaction that
the kill cut short, which shows the kills land mid-batch.
"""

from __future__ import annotations

import contextlib
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import attrs
import msgspec
import pytest
import trio

from fluvial.core.ids import slice_for
from fluvial.core.offsets import TimestampOffset
from fluvial.core.projection_errors import ProjectionLeaseHeld
from fluvial.core.records import EventEnvelope, EventRecord
from fluvial.core.serialization import SerializedPayload, SerializerRegistry
from fluvial.journal.sqlite._journal import open_sqlite_journal
from fluvial.journal.sqlite._transaction import WriteTransaction
from fluvial.projection._handlers import ExactlyOnce
from fluvial.projection._runner import Projection, serve_projection
from fluvial.projection._source_settings import SourceSettings

ENTITY_TYPE = "Counter"
NAME = "crash-model"
ENTITIES = 40
PREFILLED = 3000
KILLS = 20
APPENDED_PER_KILL = 25
LEASE_DURATION = 0.3  # a killed child's lease blocks the next one for at most this long
# The lease test's: long enough that a child on a busy machine keeps renewing it in time.
LONG_LEASE = 2.0


@attrs.frozen
class Added:
    amount: int


def registry() -> SerializerRegistry:
    serializers = SerializerRegistry()
    serializers.register(Added, "crash.Added")
    return serializers


def crash_projection(
    noted: TextIO, lease_duration: float = LEASE_DURATION
) -> Projection[Added, sqlite3.Connection]:
    """The projection of the child processes: it notes every envelope in `noted`."""

    def handle(conn: sqlite3.Connection, envelope: EventEnvelope[Added]) -> None:
        noted.write(f"{envelope.persistence_id} {envelope.seq_nr}\n")
        noted.flush()
        time.sleep(0.0003)  # a handler with some work to do: batches take a while
        conn.execute(
            "INSERT INTO model VALUES (?, ?, ?, 1) ON CONFLICT (pid, seq_nr) "
            "DO UPDATE SET times = times + 1",
            (envelope.persistence_id, envelope.seq_nr, envelope.event.amount),
        )
        conn.execute(
            "INSERT INTO model_order (pid, seq_nr) VALUES (?, ?)",
            (envelope.persistence_id, envelope.seq_nr),
        )

    return Projection(
        name=NAME,
        entity_type=ENTITY_TYPE,
        handler=ExactlyOnce(handle),
        source=SourceSettings(page_size=100, backtracking_interval=0.5),
        lease_duration=lease_duration,
    )


def child(path: str, noted_path: str, lease_duration: float) -> None:
    noted = open(noted_path, "a")  # noqa: SIM115 (open for the life of the process)
    projection = crash_projection(noted, lease_duration)

    async def main() -> None:
        async with open_sqlite_journal(path) as journal:
            while True:
                try:
                    await serve_projection(journal, registry(), projection)
                except ProjectionLeaseHeld as held:  # the killed child's, until it expires
                    await trio.sleep(held.expires_in)

    trio.run(main)


MODEL_TABLES = (
    "CREATE TABLE IF NOT EXISTS model (pid TEXT NOT NULL, seq_nr INTEGER NOT NULL, "
    "amount INTEGER NOT NULL, times INTEGER NOT NULL, PRIMARY KEY (pid, seq_nr))",
    "CREATE TABLE IF NOT EXISTS model_order (n INTEGER PRIMARY KEY AUTOINCREMENT, pid TEXT, "
    "seq_nr INTEGER)",
)


async def append(path: Path, seq_nrs: dict[str, int], count: int, rng: random.Random) -> None:
    """Append `count` events to random entities, in batches of 1 to 5."""
    serializers = registry()
    async with open_sqlite_journal(path) as journal:

        def create(txn: WriteTransaction) -> None:
            for statement in MODEL_TABLES:
                txn.connection.execute(statement)

        await journal.database.write(create)
        while count > 0:
            pid = f"{ENTITY_TYPE}|{rng.randrange(ENTITIES)}"
            size = min(count, rng.randint(1, 5))
            first = seq_nrs[pid] + 1
            await journal.append(
                [
                    EventRecord(
                        pid,
                        first + i,
                        ENTITY_TYPE,
                        slice_for(pid),
                        serializers.encode(Added(rng.randint(1, 9))),
                    )
                    for i in range(size)
                ]
            )
            seq_nrs[pid] += size
            count -= size


def check(path: Path, noted: Path, since: int = 0) -> tuple[int, int]:
    """Assert that the read model holds exactly what the stored offsets say was handled;
    return its size, and how many envelopes noted after byte `since` of `noted` were
    handled by transactions that never committed."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN")  # one snapshot: a projection process may be committing
        model = {
            (pid, seq_nr): times
            for pid, seq_nr, times in conn.execute("SELECT pid, seq_nr, times FROM model")
        }
        assert set(model.values()) <= {1}, "an event applied twice"
        order: dict[str, list[int]] = defaultdict(list)
        for pid, seq_nr in conn.execute("SELECT pid, seq_nr FROM model_order ORDER BY n"):
            order[pid].append(seq_nr)
        for pid, seq_nrs in order.items():
            assert seq_nrs == list(range(1, len(seq_nrs) + 1)), f"{pid} out of order or gap"
        stored = dict(
            conn.execute(
                "SELECT persistence_id, seq_nr FROM projection_entity WHERE projection_name = ?",
                (NAME,),
            ).fetchall()
        )
        assert stored == {pid: len(seq_nrs) for pid, seq_nrs in order.items()}
        # No stored slice offset is ahead of what the read model holds.
        for slice_, timestamp, seen in conn.execute(
            "SELECT slice, timestamp, seen FROM projection_offset WHERE projection_name = ?",
            (NAME,),
        ).fetchall():
            offset = TimestampOffset(timestamp, msgspec.json.decode(seen))
            for pid, seq_nr, event_timestamp in conn.execute(
                "SELECT persistence_id, seq_nr, db_timestamp FROM event_journal "
                "WHERE slice = ? AND db_timestamp <= ?",
                (slice_, timestamp),
            ):
                passed = not offset.is_behind(
                    EventRecord(pid, seq_nr, ENTITY_TYPE, slice_, None, timestamp=event_timestamp)
                )
                assert not passed or (pid, seq_nr) in model, f"offset passed {pid}#{seq_nr}"
    with noted.open() as lines:
        lines.seek(since)
        handled = {tuple(line.split()) for line in lines}
    cut_short = {(pid, int(seq_nr)) for pid, seq_nr in handled} - set(model)
    return len(model), len(cut_short)


def journal_fold(path: Path) -> dict[tuple[str, int], int]:
    serializers = registry()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(
            "SELECT persistence_id, seq_nr, manifest, ser_version, payload FROM event_journal"
        ).fetchall()
    return {
        (pid, seq_nr): serializers.decode(
            SerializedPayload(manifest, version, data), persistence_id=pid, seq_nr=seq_nr
        ).amount
        for pid, seq_nr, manifest, version, data in rows
    }


def start_child(
    path: Path, noted: Path, lease_duration: float = LEASE_DURATION
) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, str(path), str(noted), str(lease_duration)])


def wait_until(done: Callable[[], bool], process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while not done():
        assert process.poll() is None, f"the projection process exited: {process.returncode}"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.002)  # another process: polling the file is the signal there is


def prefilled(tmp_path: Path, *, seed: int) -> tuple[Path, Path, dict[str, int], random.Random]:
    """A journal of PREFILLED events, an empty file for the children's notes, each entity's
    last seq nr, and the random source that chose the events."""
    rng = random.Random(seed)
    path, noted = tmp_path / "journal.db", tmp_path / "handled.txt"
    noted.touch()
    seq_nrs: dict[str, int] = defaultdict(int)
    trio.run(append, path, seq_nrs, PREFILLED, rng)
    return path, noted, seq_nrs, rng


@pytest.mark.slow
def test_a_projection_killed_mid_batch_20_times_applies_every_event_once(
    tmp_path: Path,
) -> None:
    path, noted, seq_nrs, rng = prefilled(tmp_path, seed=20)
    sizes, kills_mid_batch = [], 0
    for _ in range(KILLS):
        process = start_child(path, noted)
        started = noted.stat().st_size
        try:
            # Somewhere within the next few batches (of 100 envelopes).
            target = started + 16 * rng.randint(1, 250)

            def grown(target: int = target) -> bool:
                return noted.stat().st_size >= target

            wait_until(grown, process)
            time.sleep(rng.uniform(0, 0.02))
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        size, cut_short = check(path, noted, since=started)
        sizes.append(size)
        kills_mid_batch += cut_short > 0
        trio.run(append, path, seq_nrs, APPENDED_PER_KILL, rng)

    total = PREFILLED + KILLS * APPENDED_PER_KILL
    assert 0 < sizes[-1] < total
    # Most kills cut a transaction short: handled, never committed, handled again later.
    print("sizes", sizes, "mid batch", kills_mid_batch)
    assert kills_mid_batch >= KILLS // 2, kills_mid_batch

    process = start_child(path, noted)
    try:
        wait_until(lambda: check(path, noted)[0] == total, process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    check(path, noted)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        model = {(p, s): a for p, s, a in conn.execute("SELECT pid, seq_nr, amount FROM model")}
    assert model == journal_fold(path)


@pytest.mark.slow
def test_another_process_is_refused_and_a_killed_owner_blocks_it_for_at_most_its_lease(
    tmp_path: Path,
) -> None:
    path, noted, _, _ = prefilled(tmp_path, seed=8)
    process = start_child(path, noted, LONG_LEASE)
    try:
        wait_until(lambda: noted.stat().st_size > 0, process)

        async def refused() -> ProjectionLeaseHeld:
            async with open_sqlite_journal(path) as journal:
                with noted.open("a") as mine, pytest.raises(ProjectionLeaseHeld) as held:
                    await serve_projection(journal, registry(), crash_projection(mine, LONG_LEASE))
                return held.value

        held = trio.run(refused)
        assert f"/{process.pid}/" in held.holder  # the running process's lease
        assert 0 < held.expires_in <= LONG_LEASE + 0.1  # its renewal may be newer
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    killed = time.monotonic()

    async def take_over() -> float:
        async with open_sqlite_journal(path) as journal, trio.open_nursery() as nursery:
            with noted.open("a") as mine:
                projection = crash_projection(mine, LONG_LEASE)
                while True:
                    try:
                        await nursery.start(serve_projection, journal, registry(), projection)
                        break
                    except ProjectionLeaseHeld as held:
                        await trio.sleep(held.expires_in)
                started = time.monotonic()
                while check(path, noted)[0] < PREFILLED:  # noqa: ASYNC110 (another file)
                    await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
        return started

    started = trio.run(take_over)
    assert started - killed < LONG_LEASE + 1.0  # the lease, and opening the file
    check(path, noted)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        model = {(p, s): a for p, s, a in conn.execute("SELECT pid, seq_nr, amount FROM model")}
    assert model == journal_fold(path)


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[2], float(sys.argv[3]))
