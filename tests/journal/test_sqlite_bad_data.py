"""Bad rows in a SQLite journal file are reported with their place, and never dropped.

The journal hands payload bytes through untouched; decoding them (`SerializerRegistry.decode`)
raises a `DataError` naming the persistence id and seq nr, and the rows stay in the file.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import attrs
import pytest

from fluvial.core.errors import DataError
from fluvial.core.ids import PersistenceId, SliceRange
from fluvial.core.records import EventRecord
from fluvial.core.serialization import PayloadDecodeError, SerializerRegistry, UnknownManifest
from fluvial.journal.queries import current_events_by_slices, events_by_persistence_id
from fluvial.journal.sqlite_journal import open_sqlite_journal

PID = PersistenceId("BadData", "cart-1")


@attrs.frozen
class ItemAdded:
    item_id: str
    quantity: int


def registry() -> SerializerRegistry:
    serializers = SerializerRegistry()
    serializers.register(ItemAdded, "test.ItemAdded")
    return serializers


async def write_events(path: Path, count: int) -> None:
    serializers = registry()
    async with open_sqlite_journal(path) as journal:
        await journal.append(
            [
                EventRecord(
                    persistence_id=str(PID),
                    seq_nr=seq_nr,
                    entity_type=PID.entity_type,
                    slice=PID.slice,
                    payload=serializers.encode(ItemAdded(f"item-{seq_nr}", seq_nr)),
                )
                for seq_nr in range(1, count + 1)
            ]
        )


def update_row(path: Path, seq_nr: int, column: str, value: object) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            f"UPDATE event_journal SET {column} = ? WHERE persistence_id = ? AND seq_nr = ?",
            (value, str(PID), seq_nr),
        )


def stored_rows(path: Path) -> list[tuple[int, str, int, bytes]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return list(
            conn.execute(
                "SELECT seq_nr, manifest, ser_version, payload FROM event_journal "
                "WHERE persistence_id = ? ORDER BY seq_nr",
                (str(PID),),
            )
        )


async def read_back(path: Path) -> tuple[list[EventRecord], list[EventRecord]]:
    """The records by persistence id and by slices, as recovery and projections read them."""
    async with open_sqlite_journal(path) as journal:
        by_pid = [r async for r in events_by_persistence_id(journal, str(PID))]
        by_slices = [
            r async for r in current_events_by_slices(journal, PID.entity_type, SliceRange.all())
        ]
    return by_pid, by_slices


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("payload", b"\xc1\xff\xee garbage"),  # 0xc1 is never valid msgpack
        ("payload", b""),
        ("payload", b"\x92\xa6item-2"),  # an array cut short
        ("payload", b"\xa5hello"),  # valid msgpack, but a string, not an ItemAdded
        ("payload", b"\x82\xa7item_id\x01\xa8quantity\xa1x"),  # fields of the wrong types
        ("ser_version", 99),  # written by a newer schema of the class
    ],
    ids=["garbage", "empty", "truncated", "wrong-shape", "wrong-field-types", "newer-version"],
)
async def test_an_undecodable_payload_raises_payload_decode_error_naming_its_event(
    tmp_path: Path, column: str, value: object
) -> None:
    path = tmp_path / "journal.db"
    await write_events(path, 3)
    update_row(path, 2, column, value)
    rows_before = stored_rows(path)

    serializers = registry()
    by_pid, by_slices = await read_back(path)
    assert [r.seq_nr for r in by_pid] == [1, 2, 3]
    assert by_slices == by_pid
    first, bad, third = by_pid
    assert first.payload is not None
    assert serializers.decode(first.payload, persistence_id=str(PID), seq_nr=1) == ItemAdded(
        "item-1", 1
    )
    assert bad.payload is not None
    with pytest.raises(PayloadDecodeError) as error:
        serializers.decode(bad.payload, persistence_id=bad.persistence_id, seq_nr=bad.seq_nr)
    assert isinstance(error.value, DataError)
    assert (error.value.persistence_id, error.value.seq_nr) == (str(PID), 2)
    assert error.value.manifest == "test.ItemAdded"
    assert str(PID) in str(error.value)
    assert "seq nr 2" in str(error.value)
    assert third.payload is not None
    assert serializers.decode(third.payload, persistence_id=str(PID), seq_nr=3) == ItemAdded(
        "item-3", 3
    )
    # Reading did not delete or repair anything.
    assert stored_rows(path) == rows_before


async def test_an_unknown_manifest_raises_unknown_manifest_naming_its_event(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.db"
    await write_events(path, 3)
    update_row(path, 3, "manifest", "test.RemovedLongAgo")
    rows_before = stored_rows(path)

    serializers = registry()
    by_pid, by_slices = await read_back(path)
    assert by_slices == by_pid
    assert [r.seq_nr for r in by_pid] == [1, 2, 3]
    bad = by_pid[2]
    assert bad.payload is not None
    assert bad.payload.manifest == "test.RemovedLongAgo"
    with pytest.raises(UnknownManifest) as error:
        serializers.decode(bad.payload, persistence_id=bad.persistence_id, seq_nr=bad.seq_nr)
    assert isinstance(error.value, DataError)
    assert (error.value.manifest, error.value.persistence_id, error.value.seq_nr) == (
        "test.RemovedLongAgo",
        str(PID),
        3,
    )
    assert str(PID) in str(error.value)
    assert "seq nr 3" in str(error.value)
    assert stored_rows(path) == rows_before
    assert len(rows_before) == 3
