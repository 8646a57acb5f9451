"""Three processes share an exactly-once projection on one PostgreSQL schema while events are
appended; one is killed with SIGKILL; its ranges move to the other two once its leases expire,
and every event is applied exactly once (the read model has one row per event, no more).

Each child is `shared_node_process.py` (one node, `serve_shared_projection` over 8 ranges,
1.5 s leases); this process appends the events (one writer, one event at a time, so the
journal's timestamps are commit order) and watches the lease rows in the schema.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from fluvial import EventRecord
from fluvial.core.ids import SliceRange, slice_for
from fluvial.journal.postgres import PostgresJournal, open_postgres_journal
from postgres_server import DSN, postgres_schema
from projection.shared_node_process import (
    ENTITY_TYPE,
    LEASE_DURATION,
    NAME,
    RANGES,
    REGISTRY,
    Counted,
)

__all__ = ["postgres_schema"]  # the fixture, imported for pytest

NODE = Path(__file__).with_name("shared_node_process.py")
PER_RANGE = 5  # entities whose events fall in each of the RANGES ranges


def _entities() -> list[str]:
    """PER_RANGE persistence ids in each range (similar ids share slices: pick them)."""
    size, picked = 1024 // RANGES, dict[int, list[str]]()
    for n in range(100_000):
        pid = f"{ENTITY_TYPE}|t{n}"
        chosen = picked.setdefault(slice_for(pid) // size, [])
        if len(chosen) < PER_RANGE:
            chosen.append(pid)
        if sum(map(len, picked.values())) == RANGES * PER_RANGE:
            return [pid for pids in picked.values() for pid in pids]
    raise AssertionError("not enough persistence ids")


ENTITIES = _entities()
Leases = dict[SliceRange, int]  # range -> the process id of its live holder


def _query(schema: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(DSN, options=f"-c search_path={schema}") as conn:
        return conn.execute(sql).fetchall()


async def live_leases(schema: str) -> Leases:
    """The live range leases of the projection, by the process id in their owner's name
    (host/pid/random)."""
    rows = await trio.to_thread.run_sync(
        _query,
        schema,
        "SELECT slice_min, slice_max, owner FROM projection_lease "
        f"WHERE projection_name = '{NAME}' "
        "AND expires_at > extract(epoch FROM clock_timestamp())",
    )
    return {SliceRange(int(a), int(b)): int(str(o).split("/")[1]) for a, b, o in rows}


async def wait_for_leases(schema: str, done: Callable[[Leases], bool]) -> Leases:
    """Poll the lease rows until `done(leases)` holds."""
    while True:
        leases = await live_leases(schema)
        if done(leases):
            return leases
        await trio.sleep(0.05)


class Writer:
    """Appends one event at a time to the ENTITIES in turn (in every range), noting when each
    was appended, until stopped."""

    def __init__(self, journal: PostgresJournal) -> None:
        self.journal = journal
        self.appended: list[tuple[str, int, float]] = []
        self.stop = trio.Event()

    async def run(self) -> None:
        seq_nrs: Counter[str] = Counter()
        n = 0
        while not self.stop.is_set():
            pid = ENTITIES[n % len(ENTITIES)]
            n += 1
            seq_nrs[pid] += 1
            record = EventRecord(
                pid, seq_nrs[pid], ENTITY_TYPE, slice_for(pid), REGISTRY.encode(Counted(n))
            )
            await self.journal.append([record])
            self.appended.append((pid, seq_nrs[pid], trio.current_time()))
            await trio.sleep(0.005)


async def start_node(schema: str, node: int) -> trio.Process:
    process = await trio.lowlevel.open_process(
        [sys.executable, str(NODE), DSN, schema, str(node)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    said = b""
    with trio.fail_after(20):
        while b"\n" not in said:
            chunk = await process.stdout.receive_some()
            assert chunk, f"node {node} exited before it was ready"
            said += chunk
    assert said == b"ready\n", said
    return process


async def stop_node(process: trio.Process) -> bytes:
    """Close its standard input (a clean stop) and wait for it to exit; what it said."""
    assert process.stdin is not None and process.stdout is not None
    await process.stdin.aclose()
    said = b""
    with trio.fail_after(10):
        while chunk := await process.stdout.receive_some():
            said += chunk
        await process.wait()
    return said


@pytest.mark.slow
async def test_three_processes_share_a_projection_and_a_killed_ones_ranges_move_on(
    postgres_schema: str,
) -> None:
    nodes: list[trio.Process] = []
    try:
        async with open_postgres_journal(
            DSN, schema=postgres_schema, poll_interval=0.05
        ) as journal:
            writer = Writer(journal)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer.run)
                for node in range(3):
                    nodes.append(await start_node(postgres_schema, node))
                pids = [p.pid for p in nodes]
                # The shares of 8 ranges among 3 nodes: 3, 3 and 2.
                with trio.fail_after(15):
                    leases = await wait_for_leases(
                        postgres_schema,
                        lambda ls: (
                            sorted(Counter(ls.values()).values()) == [2, 3, 3] and len(ls) == RANGES
                        ),
                    )
                victim = nodes[0]
                victims_ranges = [r for r, pid in leases.items() if pid == victim.pid]
                await trio.sleep(0.5)
                victim.send_signal(signal.SIGKILL)
                await victim.wait()
                killed_at = trio.current_time()
                # Its leases run out (it renewed them at most a third of LEASE_DURATION before),
                # and at a probe after that the two others share all 8 ranges: 4 each.
                with trio.fail_after(15):
                    await wait_for_leases(
                        postgres_schema,
                        lambda ls: (
                            len(ls) == RANGES
                            and set(ls.values()) == set(pids[1:])
                            and sorted(Counter(ls.values()).values()) == [4, 4]
                        ),
                    )
                moved_at = trio.current_time()
                assert moved_at - killed_at < LEASE_DURATION + 5
                await trio.sleep(1.0)
                writer.stop.set()
            with trio.fail_after(20):
                await journal.offset_store().wait_until_caught_up(NAME)
            # The survivors stop cleanly: they give their leases up.
            for survivor in nodes[1:]:
                assert await stop_node(survivor) == b"stopped\n"
                assert survivor.returncode == 0
            assert await live_leases(postgres_schema) == {}
    finally:
        for process in nodes:
            if process.returncode is None:
                process.kill()

    rows = await trio.to_thread.run_sync(
        _query, postgres_schema, "SELECT pid, seq_nr, node FROM applied"
    )
    applied = Counter((str(pid), int(seq_nr)) for pid, seq_nr, _ in rows)
    appended = {(pid, seq_nr) for pid, seq_nr, _ in writer.appended}
    assert len(appended) > 200
    assert set(applied) == appended
    assert set(applied.values()) == {1}, "an event was applied more than once"
    # The victim's ranges were handled by the others after they moved.
    by_node = {(str(pid), int(seq_nr)): int(node) for pid, seq_nr, node in rows}
    later = [
        (pid, seq_nr)
        for pid, seq_nr, when in writer.appended
        if when > moved_at and any(slice_for(pid) in r for r in victims_ranges)
    ]
    assert later, "no event was appended in the killed node's ranges after they moved"
    assert {by_node[key] for key in later} <= {1, 2}
