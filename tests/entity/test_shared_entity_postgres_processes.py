"""Two processes hosting the same entity on one PostgreSQL journal: the journal's primary key
lets only one of them store each seq nr; the other's command fails with `JournalConflict`,
stores nothing, and the entity reloads from the journal before its next decision, so asked
again the command succeeds on the state the journal holds. Neither process ever decides a
command on a state that is not the journal's: each reply (the state after the command) is the
fold of the journal's events up to that command's own event.

Each process is `shared_entity_process.py`; one deposits 1 per command, the other 1000, so a
reply computed on a stale or diverged state shows as a balance that is not the journal's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import accumulate
from pathlib import Path
from typing import Any

import pytest
import trio

from entity.shared_entity_process import ENTITY_ID, REGISTRY, Deposited
from fluvial.core.ids import PersistenceId
from fluvial.journal.postgres import open_postgres_journal
from fluvial.journal.queries import events_by_persistence_id
from postgres_server import DSN, postgres_schema

__all__ = ["postgres_schema"]  # the fixture, imported for pytest

HOST = Path(__file__).with_name("shared_entity_process.py")
COUNT = 60
AMOUNTS = (1, 1000)


async def _host(schema: str, amount: int) -> trio.Process:
    process = await trio.lowlevel.open_process(
        [sys.executable, str(HOST), DSN, schema, str(amount), str(COUNT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    said = b""
    while not said.endswith(b"\n"):
        chunk = await process.stdout.receive_some()
        assert chunk, f"the host exited before it was ready: {said!r}"
        said += chunk
    assert said == b"ready\n", said
    return process


async def _result(process: trio.Process) -> dict[str, Any]:
    assert process.stdout is not None
    said = b""
    while chunk := await process.stdout.receive_some():
        said += chunk
    await process.wait()
    assert process.returncode == 0, said
    result: dict[str, Any] = json.loads(said)
    return result


@pytest.mark.slow
async def test_two_processes_hosting_one_entity_never_store_one_seq_nr_twice_nor_diverge(
    postgres_schema: str,
) -> None:
    hosts: list[trio.Process] = []
    try:
        with trio.fail_after(60):
            async with open_postgres_journal(DSN, schema=postgres_schema):
                pass  # the schema, made once before the two processes open it
            for amount in AMOUNTS:
                hosts.append(await _host(postgres_schema, amount))
            for host in hosts:  # go, both at once
                assert host.stdin is not None
                await host.stdin.send_all(b"go\n")
            results = [await _result(host) for host in hosts]
    finally:
        for host in hosts:
            if host.returncode is None:
                host.kill()

    pid = str(PersistenceId("Tally", ENTITY_ID))
    async with open_postgres_journal(DSN, schema=postgres_schema) as journal:
        stored = [r async for r in events_by_persistence_id(journal, pid)]
    amounts = []
    for record in stored:
        assert record.payload is not None
        event = REGISTRY.decode(record.payload, persistence_id=pid, seq_nr=record.seq_nr)
        assert isinstance(event, Deposited)
        amounts.append(event.amount)
    # One event per command that succeeded, at gapless seq nrs: nothing stored twice or lost.
    assert [r.seq_nr for r in stored] == list(range(1, 2 * COUNT + 1))
    assert sorted(amounts) == sorted([AMOUNTS[0]] * COUNT + [AMOUNTS[1]] * COUNT)
    balances = [0, *accumulate(amounts)]
    for amount, result in zip(AMOUNTS, results, strict=True):
        replies = [tuple(reply) for reply in result["replies"]]
        assert len(replies) == COUNT
        for balance, events in replies:
            # The reply is the journal's state right after this process's own event.
            assert amounts[events - 1] == amount
            assert balances[events] == balance
        assert [events for _, events in replies] == sorted(events for _, events in replies)
    conflicts = sum(result["conflicts"] for result in results)
    assert conflicts > 0, "the two processes never wrote the entity at the same time"
