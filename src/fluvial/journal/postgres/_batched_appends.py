"""The transaction of a group commit: the appends of many entities in one statement, each
checked on its own, each answered on its own. Runs whole in a pool worker thread.

One statement (its own transaction in autocommit, one round trip) inserts the rows of every
append whose first seq nr follows its entity's highest stored one, and says which appends
those were; the others stored nothing and are told why (conflict or gap) from one more read.
That check sees what was committed when the statement began. A writer elsewhere that commits
one of the seq nrs in between makes the statement fail on the primary key, storing nothing of
the batch: the batch is then run again with a savepoint around each append, so that only the
appends that collide fail (`JournalConflict`), as does any append the server refuses for its
own rows (a bad value) while the others commit. Nothing stored is ever overwritten.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import LiteralString

import msgspec
import outcome
import psycopg
from msgspec.structs import replace

from fluvial.core.records import EventRecord
from fluvial.journal.api import JournalConflict, JournalGap
from fluvial.journal.postgres._event_rows import (
    EVENT_COLUMNS,
    Connection,
    append_events,
    event_from_row,
)

# The rows go as one JSON array of arrays, one per event: [append_no (the place of its append
# in the batch, 1-based), first (1 for an append's first event), pid, seq_nr, entity_type,
# slice, write_timestamp, tags (an array or null), manifest, ser_version, payload (base64),
# origin_replica, origin_seq_nr, version_vector]. psycopg dumps a Python list as an array in
# Python, ~60 ms for the 13 arrays of 1,000 events, half the group commit's time; msgspec
# writes the JSON in C, and the server reads it in ~2 ms. The first event of each append is
# checked against its entity's stored events; a statement sees neither its own inserts nor
# later commits, so all rows of one append pass or fail together.
_INSERT_BATCH: LiteralString = """
WITH clock AS (
    SELECT greatest((extract(epoch FROM clock_timestamp()) * 1000000)::bigint, %(floor)s)
        AS first
), e AS (
    SELECT (r->>0)::integer AS append_no, (r->>1)::integer AS first, r->>2 AS pid,
        (r->>3)::bigint AS seq_nr, r->>4 AS entity_type, (r->>5)::integer AS slice,
        (r->>6)::bigint AS written, nullif(r->7, 'null') AS tags, r->>8 AS manifest,
        (r->>9)::integer AS ser_version, decode(r->>10, 'base64') AS payload,
        r->>11 AS origin, (r->>12)::bigint AS origin_seq_nr, r->>13 AS vv, n
    FROM jsonb_array_elements(%(rows)s::jsonb) WITH ORDINALITY AS x(r, n)
), follows AS (
    SELECT e.append_no FROM e
    WHERE e.first = 1 AND (SELECT coalesce(max(j.seq_nr), 0) FROM event_journal j
        WHERE j.persistence_id = e.pid) = e.seq_nr - 1
), stored AS (
    INSERT INTO event_journal (persistence_id, seq_nr, entity_type, slice, db_timestamp,
        write_timestamp, tags, manifest, ser_version, payload, origin_replica, origin_seq_nr,
        version_vector)
    SELECT e.pid, e.seq_nr, e.entity_type, e.slice, clock.first + e.n - 1, e.written,
        e.tags, e.manifest, e.ser_version, e.payload, e.origin, e.origin_seq_nr, e.vv
    FROM clock, e
    WHERE e.append_no IN (SELECT append_no FROM follows)
    RETURNING 1
)
SELECT (SELECT first FROM clock), array(SELECT append_no FROM follows),
    (SELECT count(*) FROM stored)
"""
_encode_json = msgspec.json.Encoder().encode
_HIGHEST_OF_EACH: LiteralString = (
    "SELECT persistence_id, max(seq_nr) FROM event_journal "
    "WHERE persistence_id = ANY(%s) GROUP BY persistence_id"
)

_NO_PAYLOAD = (None, None, None)
_NO_REPLICATION = (None, None, None)

AppendOutcome = outcome.Outcome[int]


def commit_appends(
    conn: Connection,
    appends: Sequence[Sequence[EventRecord]],
    floor: int,
    *,
    read_back: bool = False,
) -> list[AppendOutcome]:
    """Append each of `appends` (one entity's consecutive events each, no entity twice) if it
    follows its entity's stored events, in one transaction; per append, the timestamp of its
    first event or the error that refused it (JournalConflict, JournalGap, or the server's
    own for rows it cannot store), with nothing of a refused append stored.

    Timestamps are at least `floor` and increase along the batch (row `i` gets first + i):
    one entity's events are in seq nr order.

    `read_back`: the batch ran before and its connection broke, so it may have committed. Run
    again, the check refuses every append that did (nothing is stored twice); those refused
    as a conflict whose stored events are exactly theirs are answered as stored, with the
    stored timestamps.
    """
    outcomes = _commit(conn, appends, floor)
    if read_back:
        for index, (events, result) in enumerate(zip(appends, outcomes, strict=True)):
            if isinstance(result, outcome.Error) and isinstance(result.error, JournalConflict):
                outcomes[index] = _stored_before(conn, events) or result
    return outcomes


def _stored_before(conn: Connection, events: Sequence[EventRecord]) -> AppendOutcome | None:
    """The first timestamp of `events` if they are stored exactly (stamped as this journal
    stamps them), else None."""
    rows = conn.execute(
        f"SELECT {EVENT_COLUMNS} FROM event_journal WHERE persistence_id = %s "
        "AND seq_nr BETWEEN %s AND %s ORDER BY seq_nr",
        (events[0].persistence_id, events[0].seq_nr, events[-1].seq_nr),
    ).fetchall()
    stored = [event_from_row(row) for row in rows]
    if len(stored) != len(events):
        return None
    first = stored[0].timestamp
    stamped = [
        replace(e, timestamp=first + i, write_timestamp=e.write_timestamp or first + i)
        for i, e in enumerate(events)
    ]
    return outcome.Value(first) if stamped == stored else None


def _commit(
    conn: Connection, appends: Sequence[Sequence[EventRecord]], floor: int
) -> list[AppendOutcome]:
    try:
        return _in_one_statement(conn, appends, floor)
    except psycopg.Error:
        if conn.broken:
            raise  # nothing to answer from here: the pool says PostgresUnavailable
        # A seq nr committed elsewhere since the check, or a row the server refuses: the
        # statement stored nothing. Find out whose it is by running each alone.
        return _one_savepoint_each(conn, appends, floor)
    except (msgspec.EncodeError, UnicodeError):
        # A string JSON cannot carry (a lone surrogate): nothing was sent; each alone tells.
        return _one_savepoint_each(conn, appends, floor)


def _in_one_statement(
    conn: Connection, appends: Sequence[Sequence[EventRecord]], floor: int
) -> list[AppendOutcome]:
    rows: list[tuple[object, ...]] = []
    for number, events in enumerate(appends, 1):
        first_row = 1
        for e in events:
            payload, replication = e.payload, e.replication
            rows.append(
                (
                    number,
                    first_row,
                    e.persistence_id,
                    e.seq_nr,
                    e.entity_type,
                    e.slice,
                    e.write_timestamp or None,
                    sorted(e.tags) if e.tags else None,
                    *(
                        (payload.manifest, payload.version, payload.data)
                        if payload
                        else _NO_PAYLOAD
                    ),
                    *(
                        (
                            replication.origin_replica,
                            replication.origin_seq_nr,
                            replication.version_vector.to_json(),
                        )
                        if replication
                        else _NO_REPLICATION
                    ),
                )
            )
            first_row = 0
    result = conn.execute(
        _INSERT_BATCH, {"floor": floor, "rows": _encode_json(rows).decode()}
    ).fetchone()
    assert result is not None
    first, followed, _ = result
    stored = set(followed)
    outcomes: list[AppendOutcome] = []
    refused: list[tuple[int, Sequence[EventRecord]]] = []
    offset = 0
    for number, events in enumerate(appends, 1):
        if number in stored:
            outcomes.append(outcome.Value(int(first) + offset))
        else:
            outcomes.append(outcome.Value(0))  # replaced below
            refused.append((number - 1, events))
        offset += len(events)
    if refused:
        # Why each stored nothing (the highest seq nr only grows, so a read after the commit
        # is right about a taken seq nr; a gap it may see filled since, and a retry succeeds).
        highest: dict[str, int] = dict(
            conn.execute(
                _HIGHEST_OF_EACH, (sorted({events[0].persistence_id for _, events in refused}),)
            ).fetchall()
        )
        for index, events in refused:
            pid, seq_nr = events[0].persistence_id, events[0].seq_nr
            stored_up_to = int(highest.get(pid, 0))
            error: Exception = (
                JournalConflict(pid, seq_nr)
                if seq_nr <= stored_up_to
                else JournalGap(pid, seq_nr, stored_up_to)
            )
            outcomes[index] = outcome.Error(error)
    return outcomes


def _one_savepoint_each(
    conn: Connection, appends: Sequence[Sequence[EventRecord]], floor: int
) -> list[AppendOutcome]:
    outcomes: list[AppendOutcome] = []
    with conn.transaction():
        for events in appends:
            try:
                with conn.transaction():  # a savepoint: a refused append undoes only itself
                    first = append_events(conn, events, floor)
            except (JournalConflict, JournalGap) as exc:
                outcomes.append(outcome.Error(exc))
            except psycopg.Error as exc:
                if conn.broken:
                    raise  # the pool says PostgresUnavailable, for the whole batch
                outcomes.append(outcome.Error(exc))  # the server refused this append's rows
            else:
                outcomes.append(outcome.Value(first))
                floor = first + len(events)
    return outcomes
