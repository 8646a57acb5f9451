"""The migration to typed replication metadata, on a big file of the schema version before it:
events keep everything, snapshots get their events' timestamps and tags, the by-slices index
holds the slice."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
import sqlite_utils

pytest.register_assert_rewrite("fluvial.testing.journal_contract")

from fluvial.core.ids import PersistenceId, SliceRange  # noqa: E402
from fluvial.core.records import EventRecord  # noqa: E402
from fluvial.core.serialization import SerializedPayload  # noqa: E402
from fluvial.journal.api import JournalGap  # noqa: E402
from fluvial.journal.sqlite._event_rows import (  # noqa: E402
    EVENT_COLUMNS_NOT_FROM_ORIGIN,
    EVENTS_BY_SLICES,
)
from fluvial.journal.sqlite._journal import open_sqlite_journal  # noqa: E402
from fluvial.journal.sqlite._schema import (  # noqa: E402
    APPLICATION_ID,
    MIGRATIONS,
    SCHEMA_VERSION,
    _replication_metadata_and_snapshot_events,
)
from fluvial.testing.journal_contract import current_by_slices, events, read_all  # noqa: E402

ENTITY_TYPE = "Migrated"
ENTITIES = 2_000
EVENTS_PER_ENTITY = 25  # 50,000 events
# The version a file has just before this migration (its place in MIGRATIONS may move).
PREVIOUS = MIGRATIONS.index(_replication_metadata_and_snapshot_events)


def _pid(n: int) -> PersistenceId:
    return PersistenceId(ENTITY_TYPE, f"entity|{n}")


def _tags(seq_nr: int) -> str | None:
    return '["even","x"]' if seq_nr % 2 == 0 else None


def _write_previous_version(path: Path) -> None:
    """A file of version PREVIOUS written as fluvial of that version wrote it: events in
    commit order, interleaved across entities, and snapshots of every tenth entity at seq nr
    10 and 20, and one at a seq nr whose event is not stored."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN")
        for migration in MIGRATIONS[:PREVIOUS]:
            migration(sqlite_utils.Database(conn))
        conn.executemany(
            "INSERT INTO entity (id, persistence_id) VALUES (?, ?)",
            [(n + 1, str(_pid(n))) for n in range(ENTITIES)],
        )
        conn.executemany(
            "INSERT INTO event_journal (db_timestamp, entity_id, persistence_id, seq_nr, "
            "entity_type, slice, tags, manifest, ser_version, payload, metadata) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                (
                    1_000_000 + seq_nr * ENTITIES + n,
                    n + 1,
                    str(_pid(n)),
                    seq_nr,
                    ENTITY_TYPE,
                    _pid(n).slice,
                    _tags(seq_nr),
                    "old.Event",
                    1,
                    f"{n}#{seq_nr}".encode(),
                    b"",
                )
                for seq_nr in range(1, EVENTS_PER_ENTITY + 1)
                for n in range(ENTITIES)
            ),
        )
        conn.executemany(
            "INSERT INTO snapshot (persistence_id, seq_nr, entity_type, slice, db_timestamp, "
            "manifest, ser_version, payload) VALUES (?,?,?,?,?,?,?,?)",
            [
                (str(_pid(n)), seq_nr, ENTITY_TYPE, _pid(n).slice, 5, "old.State", 1, b"s")
                for n in range(0, ENTITIES, 10)
                for seq_nr in (10, 20, 99)
            ],
        )
        conn.execute(f"PRAGMA user_version = {PREVIOUS}")
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("COMMIT")


def _event_timestamp(n: int, seq_nr: int) -> int:
    return 1_000_000 + seq_nr * ENTITIES + n


async def test_a_big_file_of_the_previous_version_keeps_its_events_and_snapshots(
    tmp_path: Path,
) -> None:
    path = tmp_path / "previous.db"
    _write_previous_version(path)

    async with open_sqlite_journal(path) as journal:
        first = await read_all(journal, _pid(7))
        assert [r.seq_nr for r in first] == list(range(1, EVENTS_PER_ENTITY + 1))
        assert first[1] == EventRecord(
            persistence_id=str(_pid(7)),
            seq_nr=2,
            entity_type=ENTITY_TYPE,
            slice=_pid(7).slice,
            payload=SerializedPayload("old.Event", 1, b"7#2"),
            tags=frozenset({"even", "x"}),
            timestamp=_event_timestamp(7, 2),
            write_timestamp=_event_timestamp(7, 2),
            replication=None,
        )
        everything = await current_by_slices(journal, ENTITY_TYPE, SliceRange.all())
        assert len(everything) == ENTITIES * EVENTS_PER_ENTITY
        assert all(r.replication is None for r in everything)
        assert all(r.write_timestamp == r.timestamp for r in everything)
        low = await current_by_slices(journal, ENTITY_TYPE, SliceRange(0, 99))
        assert low == [r for r in everything if r.slice < 100]

        for n, seq_nr, event_seq_nr in [(0, 99, 20), (10, 20, 20), (10, 15, 10)]:
            loaded = await journal.load_snapshot(str(_pid(n)), seq_nr)
            assert loaded is not None
            assert (loaded.seq_nr, loaded.event_timestamp) == (
                event_seq_nr if seq_nr != 99 else 99,
                0 if seq_nr == 99 else _event_timestamp(n, event_seq_nr),
            )
            assert loaded.tags == (frozenset() if seq_nr == 99 else frozenset({"even", "x"}))
            assert loaded.timestamp == 5

        # The writer continues each entity from its stored seq nrs.
        with pytest.raises(JournalGap):
            await journal.append(events(_pid(3), EVENTS_PER_ENTITY + 2, 1))
        more = await journal.append(events(_pid(3), EVENTS_PER_ENTITY + 1, 1))
        assert more[0].timestamp > everything[-1].timestamp

    with contextlib.closing(sqlite3.connect(path)) as conn:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        indexes = {
            name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")
        }
        plan = " ".join(
            str(row[-1])
            for row in conn.execute(
                "EXPLAIN QUERY PLAN "
                + EVENTS_BY_SLICES.format(columns=EVENT_COLUMNS_NOT_FROM_ORIGIN),
                {
                    "entity_type": ENTITY_TYPE,
                    **{"from": 0, "to": 2**63 - 1, "min": 0, "max": 99},
                    **{"limit": 10, "origin": "A"},
                },
            )
        )
    assert version == SCHEMA_VERSION
    assert {"event_journal_by_slices", "snapshot_by_slices"} <= indexes
    assert "event_journal_by_time" not in indexes
    assert "event_journal_by_slices" in plan
    assert "TEMP B-TREE" not in plan  # delivered in timestamp order, not sorted
