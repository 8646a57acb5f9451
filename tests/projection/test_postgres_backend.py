"""A projection over the PostgreSQL journal and its own offset store, end to end: an
exactly-once read model in tables of the journal's schema, written through the psycopg
connection of the transaction that stores the offsets; every event applied once, also across
a failed attempt and a restart of the journal (as of the process)."""

from __future__ import annotations

import psycopg
import trio

from fluvial import (
    Backoff,
    EventEnvelope,
    EventRecord,
    ExactlyOnce,
    PersistenceId,
    Projection,
    RecoveryStrategy,
    SerializerRegistry,
    SliceRange,
    SourceSettings,
    serve_projection,
)
from fluvial.journal.postgres import open_postgres_journal
from postgres_server import DSN, postgres_schema

__all__ = ["postgres_schema"]  # the fixture, imported for pytest

TIMEOUT = 20.0
Connection = psycopg.Connection[tuple[object, ...]]
REGISTRY = SerializerRegistry()


REGISTRY.register(int, "account.Deposited")  # an event is the amount deposited


def _deposited(account: str, seq_nr: int, amount: int) -> EventRecord:
    pid = PersistenceId("Account", account)
    return EventRecord(
        persistence_id=str(pid),
        seq_nr=seq_nr,
        entity_type=pid.entity_type,
        slice=pid.slice,
        payload=REGISTRY.encode(amount),
    )


def _create_tables(conn: Connection) -> None:
    conn.execute("CREATE TABLE balance (account text PRIMARY KEY, amount bigint NOT NULL)")
    # Every event applied, without a key: an event applied twice shows as two rows.
    conn.execute("CREATE TABLE applied (account text NOT NULL, seq_nr bigint NOT NULL)")


class Balances:
    """The read model's handler. It fails once on one event before its writes (a commit that
    stored the offsets anyway would lose the event) and once on another after them (writes
    committed without the offsets would be applied twice)."""

    def __init__(self, fail_before: tuple[str, int], fail_after: tuple[str, int]) -> None:
        self.fail_before: tuple[str, int] | None = fail_before
        self.fail_after: tuple[str, int] | None = fail_after

    def handle(self, conn: Connection, envelope: EventEnvelope[int]) -> None:
        key = (envelope.entity_id, envelope.seq_nr)
        if key == self.fail_before:
            self.fail_before = None
            raise RuntimeError("the handler failed before its writes")
        conn.execute(
            "INSERT INTO balance VALUES (%s, %s) "
            "ON CONFLICT (account) DO UPDATE SET amount = balance.amount + excluded.amount",
            (envelope.entity_id, envelope.event),
        )
        conn.execute("INSERT INTO applied VALUES (%s, %s)", key)
        if key == self.fail_after:
            self.fail_after = None
            raise RuntimeError("the handler failed after its writes")

    def projection(self) -> Projection[int, Connection]:
        return Projection(
            name="balances",
            entity_type="Account",
            handler=ExactlyOnce(self.handle, migrations=[_create_tables]),
            recovery=RecoveryStrategy.retry_and_fail(2),
            backoff=Backoff(min=0.01),
            source=SourceSettings(backtracking_interval=None),
        )


def _read_model(schema: str) -> tuple[dict[str, int], list[tuple[str, int]]]:
    with psycopg.connect(DSN, options=f"-c search_path={schema}") as conn:
        balances: dict[str, int] = dict(
            conn.execute("SELECT account, amount FROM balance").fetchall()
        )
        applied = conn.execute("SELECT account, seq_nr FROM applied ORDER BY 1, 2").fetchall()
    return balances, applied


async def test_an_exactly_once_projection_applies_every_event_once_across_a_restart(
    postgres_schema: str,
) -> None:
    model = Balances(fail_before=("alice", 2), fail_after=("bob", 2))
    with trio.fail_after(TIMEOUT):
        async with (
            open_postgres_journal(DSN, schema=postgres_schema, poll_interval=0.05) as journal,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(serve_projection, journal, REGISTRY, model.projection())
            await journal.append([_deposited("alice", 1, 10), _deposited("alice", 2, 5)])
            await journal.append([_deposited("bob", 1, 7), _deposited("bob", 2, 1)])
            await journal.offset_store().wait_until_caught_up("balances")
            nursery.cancel_scope.cancel()
        assert (await trio.to_thread.run_sync(_read_model, postgres_schema))[0] == {
            "alice": 15,
            "bob": 8,
        }

        # The process restarts: a new journal on the schema, events appended while it was down.
        async with open_postgres_journal(DSN, schema=postgres_schema) as journal:
            await journal.append([_deposited("alice", 3, 100)])
            await journal.append([_deposited("bob", 3, 2)])
        async with (
            open_postgres_journal(DSN, schema=postgres_schema, poll_interval=0.05) as journal,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(serve_projection, journal, REGISTRY, model.projection())
            await journal.append([_deposited("carol", 1, 3)])
            store = journal.offset_store()
            await store.wait_until_caught_up("balances")
            assert await store.backlog("balances", "Account", SliceRange.all()) == 0
            nursery.cancel_scope.cancel()

    balances, applied = await trio.to_thread.run_sync(_read_model, postgres_schema)
    assert balances == {"alice": 115, "bob": 10, "carol": 3}
    # Each once: the failed attempt's writes were rolled back with its offsets, the restart
    # resumed from the stored ones, and the migration ran once (a second CREATE would fail).
    assert applied == [
        *[("alice", n) for n in (1, 2, 3)],
        *[("bob", n) for n in (1, 2, 3)],
        ("carol", 1),
    ]
