"""A writer killed with SIGKILL at random points leaves a journal that is whole.

After each kill: every entity's history is gapless from seq nr 1, no batch is stored in part,
every append the killed writer saw succeed is stored, and a next writer carries on from there.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import trio
from journal_crash_writer import PIDS, batch_events

from fluvial.core.ids import PersistenceId
from fluvial.journal.queries import events_by_persistence_id
from fluvial.journal.sqlite._journal import SqliteJournal, open_sqlite_journal

WRITER = Path(__file__).with_name("journal_crash_writer.py")
KILLS = 20


async def run_and_kill(path: Path, seed: int, rng: random.Random) -> dict[str, int]:
    """Run a writer, kill it a random 0-200 ms after its first append; the acked seq nrs."""
    output = bytearray()
    errors = bytearray()
    first_ack = trio.Event()

    async def drain(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
        while chunk := await stream.receive_some():
            into += chunk
            if b"\n" in into:
                first_ack.set()
        first_ack.set()  # the writer died on its own: the return code tells

    with trio.fail_after(30):
        process = await trio.lowlevel.open_process(
            [sys.executable, str(WRITER), str(path), str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None
        assert process.stderr is not None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain, process.stdout, output)
                nursery.start_soon(drain, process.stderr, errors)
                await first_ack.wait()
                await trio.sleep(rng.uniform(0, 0.2))  # where to kill, not a synchronization
                process.send_signal(signal.SIGKILL)
            await process.wait()
        finally:
            process.kill()
    assert process.returncode == -signal.SIGKILL, errors.decode()

    acked: dict[str, int] = defaultdict(int)
    lines = output.decode().split("\n")[:-1]  # a line cut off by the kill does not count
    assert lines, "the writer was killed before it appended anything"
    for line in lines:
        word, pid, seq_nr = line.split(" ")
        assert word == "acked"
        acked[pid] = max(acked[pid], int(seq_nr))
    return acked


async def check_whole(journal: SqliteJournal, pid: PersistenceId, acked: int) -> int:
    """Check `pid`'s history; return its highest seq nr."""
    history = [r async for r in events_by_persistence_id(journal, str(pid), page_size=50)]
    seq_nrs = [r.seq_nr for r in history]
    assert seq_nrs == list(range(1, len(history) + 1)), f"{pid} has a gap"
    for record in history:
        assert record.payload is not None
        first, count = map(int, record.payload.data.decode().split("+"))
        assert first + count - 1 <= len(history), f"{pid}: batch {first}+{count} stored in part"
    assert len(history) >= acked, f"{pid}: acked seq nr {acked} was lost"
    return len(history)


async def test_a_killed_writer_leaves_gapless_whole_batches_and_a_next_writer_continues(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.db"
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    stored: dict[str, int] = defaultdict(int)
    for kill in range(KILLS):
        acked = await run_and_kill(path, rng.randrange(2**32), rng)
        assert sum(acked.values()) > 0, f"seed {seed}, kill {kill}"
        async with open_sqlite_journal(path) as journal:
            for pid in PIDS:
                context = f"seed {seed}, kill {kill}"
                highest = await check_whole(journal, pid, acked[str(pid)])
                assert highest >= stored[str(pid)], f"{context}: {pid} lost events"
                # The next writer appends right after what is stored.
                next_batch = batch_events(pid, highest + 1, 2)
                appended = await journal.append(next_batch)
                assert [r.seq_nr for r in appended] == [highest + 1, highest + 2]
                assert await journal.highest_seq_nr(str(pid)) == highest + 2
                stored[str(pid)] = highest + 2
    assert sum(stored.values()) > KILLS * len(PIDS) * 2, "the writers appended nothing"
