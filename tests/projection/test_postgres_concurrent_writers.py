"""Concurrent writers on PostgreSQL: several processes, each with several tasks, append to one
journal schema while a trigger slows their transactions down after the events took their
timestamps (so timestamps are not commit order), and an exactly-once projection over the
journal, with its offsets in the PostgreSQL offset store, must apply every event exactly once.

Some transactions are slow on purpose: an entity whose seq nr 1 commits half a second late
(the query has passed its timestamp and meets seq nr 2 first: the first-sight rule must
replay seq nr 1) and an entity whose last event commits late (no later event of it shows the
gap: only the backtracking query can find it).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import psycopg
import pytest
import trio

from fluvial import (
    EnvelopeSource,
    EventEnvelope,
    ExactlyOnce,
    FirstSight,
    HasConcurrentWriters,
    LocalJournalSources,
    Projection,
    SliceRange,
    SourceSettings,
    TimestampOffset,
    serve_projection,
)
from fluvial.journal.postgres import open_postgres_journal
from fluvial.projection.api import Batch
from postgres_server import DSN, postgres_schema
from projection.pg_concurrent_writer import ENTITY_TYPE, REGISTRY, deposited

__all__ = ["postgres_schema"]  # the fixture, imported for pytest

WRITER = Path(__file__).with_name("pg_concurrent_writer.py")
PROCESSES = 3
TASKS = 4
SECONDS = 2.5  # the slow ones of every writer are done well before (< 1.7 s)
Connection = psycopg.Connection[tuple[object, ...]]
QUIET = SourceSettings(backtracking_interval=None)

# A test hook in the database, not in fluvial: after an append's rows are inserted (their
# timestamps taken), its transaction sleeps before it commits. The chosen events sleep half
# a second; every other statement a random 0-30 ms.
SLOW_COMMITS = """
CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted WHERE (persistence_id LIKE '%-late' AND seq_nr = 1)
               OR (persistence_id LIKE '%-tail' AND seq_nr = 2)) THEN
        PERFORM pg_sleep(0.5);
    ELSE
        PERFORM pg_sleep(random() * 0.03);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER slow_commit AFTER INSERT ON event_journal REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION slow_commit();
"""


def _connect(schema: str) -> Connection:
    return psycopg.connect(DSN, options=f"-c search_path={schema}", autocommit=True)


def _install_slow_commits(schema: str) -> None:
    with _connect(schema) as conn:
        conn.execute(SLOW_COMMITS)


def _create_tables(conn: Connection) -> None:
    # No key: an event applied twice shows as two rows.
    conn.execute("CREATE TABLE applied (pid text NOT NULL, seq_nr bigint NOT NULL, path text)")


def _handle(conn: Connection, envelope: EventEnvelope[int]) -> None:
    conn.execute(
        "INSERT INTO applied VALUES (%s, %s, %s)",
        (envelope.persistence_id, envelope.seq_nr, envelope.source.value),
    )


def _journal_and_read_model(
    schema: str,
) -> tuple[list[tuple[str, int]], Counter[tuple[str, int]], dict[tuple[str, int], str]]:
    with _connect(schema) as conn:
        stored = conn.execute("SELECT persistence_id, seq_nr FROM event_journal").fetchall()
        applied = conn.execute("SELECT pid, seq_nr, path FROM applied").fetchall()
    return (
        [(str(pid), int(str(seq_nr))) for pid, seq_nr in stored],
        Counter((str(pid), int(str(seq_nr))) for pid, seq_nr, _ in applied),
        {(str(pid), int(str(seq_nr))): str(path) for pid, seq_nr, path in applied},
    )


async def _run_writer(schema: str, writer: int) -> None:
    done = await trio.run_process(
        [sys.executable, str(WRITER), DSN, schema, str(writer), str(TASKS), str(SECONDS)],
        capture_stdout=True,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, b"ok\n"), done.stdout.decode()


@pytest.mark.slow
async def test_every_event_of_concurrent_slow_writers_is_applied_exactly_once(
    postgres_schema: str,
) -> None:
    projection = Projection[int, Connection](
        name="applied",
        entity_type=ENTITY_TYPE,
        handler=ExactlyOnce(_handle, migrations=[_create_tables]),
        # The query reads 0.1 s behind the server's clock (the default): the slow commits
        # land behind it. Backtracking follows 1.5 s behind the clock, often.
        source=SourceSettings(
            backtracking_interval=0.2,
            backtracking_span=10.0,
            backtracking_behind_current_time=1.5,
        ),
    )
    with trio.fail_after(40):
        async with (
            open_postgres_journal(DSN, schema=postgres_schema, poll_interval=0.05) as journal,
            trio.open_nursery() as nursery,
        ):
            await trio.to_thread.run_sync(_install_slow_commits, postgres_schema)
            await nursery.start(serve_projection, journal, REGISTRY, projection)
            async with trio.open_nursery() as writers:
                for writer in range(PROCESSES):
                    writers.start_soon(_run_writer, postgres_schema, writer)
            with trio.move_on_after(20) as waiting:  # late or not, the asserts say what
                await journal.offset_store().wait_until_caught_up(projection.name)
            nursery.cancel_scope.cancel()

    stored, applied, paths = await trio.to_thread.run_sync(_journal_and_read_model, postgres_schema)
    assert len(stored) > PROCESSES * TASKS * 20  # many events, from every writer
    expected = Counter(stored)
    assert applied == expected, (
        "every event exactly once, nothing else",
        sorted(expected - applied),
        sorted(applied - expected),
    )
    # And the offsets say so: the slice of a late last event is not left behind it.
    assert not waiting.cancelled_caught, "wait_until_caught_up did not return"
    for writer in range(PROCESSES):
        # Its seq nr 1 committed after the query had passed its timestamp: the query met
        # seq nr 2 first, and the first-sight rule had seq nr 1 replayed.
        assert paths[f"{ENTITY_TYPE}|w{writer}-late", 1] != EnvelopeSource.QUERY.value
        # Its last event committed late: only backtracking could find it.
        assert paths[f"{ENTITY_TYPE}|w{writer}-tail", 2] == EnvelopeSource.BACKTRACKING.value


async def test_the_postgres_journal_has_concurrent_writers_and_its_source_says_so(
    postgres_schema: str,
) -> None:
    async with open_postgres_journal(DSN, schema=postgres_schema) as journal:
        assert isinstance(journal, HasConcurrentWriters)
        before = await journal.current_timestamp()
        stored = await journal.append([deposited("a", 1)])
        after = await journal.current_timestamp()
        # The server's clock, which appends stamp their events with.
        assert before <= stored[0].timestamp <= after
        source = LocalJournalSources(journal).source(ENTITY_TYPE, SliceRange.all(), QUIET)
        assert source.first_sight is FirstSight.PREVIOUS_OLDER_THAN_WINDOW


async def test_the_query_reads_behind_the_servers_clock(postgres_schema: str) -> None:
    """An event reaches the query only once it is `behind_current_time` old."""
    settings = SourceSettings(behind_current_time=1.0, backtracking_interval=None, live=False)
    async with open_postgres_journal(DSN, schema=postgres_schema, poll_interval=0.05) as journal:
        source = LocalJournalSources(journal).source(ENTITY_TYPE, SliceRange.all(), settings)
        send, receive = trio.open_memory_channel[Batch](10)
        async with trio.open_nursery() as nursery:
            await nursery.start(source.run, TimestampOffset.start(), send)
            stored = await journal.append([deposited("a", 1)])
            with trio.move_on_after(0.6):
                assert await receive.receive() is None, "delivered before it was 1 s old"
            with trio.fail_after(5):
                records, path = await receive.receive()
            assert (list(records), path) == (list(stored), EnvelopeSource.QUERY)
            assert await journal.current_timestamp() - stored[0].timestamp >= 1_000_000
            nursery.cancel_scope.cancel()
