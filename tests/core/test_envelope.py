"""`EventEnvelope`: the entity's id without parsing the persistence id, and what `of` takes
from a record (its source path, offset, write timestamp and replication metadata)."""

from __future__ import annotations

import pytest

from fluvial.core.envelope_source import EnvelopeSource
from fluvial.core.ids import PersistenceId, slice_for
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventEnvelope, EventRecord
from fluvial.core.replication_metadata import ReplicationMetadata, VersionVector


def envelope(persistence_id: str) -> EventEnvelope[str]:
    entity_type = persistence_id.partition("|")[0]
    return EventEnvelope(persistence_id, 1, entity_type, slice_for(persistence_id), 0, "event")


@pytest.mark.parametrize(
    "pid", ["ShoppingCart|cart-1", "Account|alice|bob", "Account|a", "T|é 𝄞 |x|"]
)
def test_entity_id_is_what_persistence_id_parse_gives(pid: str) -> None:
    assert envelope(pid).entity_id == PersistenceId.parse(pid).entity_id


def test_entity_id_of_an_entity_id_containing_the_separator() -> None:
    pid = PersistenceId("Account", "alice|savings")
    assert envelope(str(pid)).entity_id == "alice|savings"


def test_of_carries_the_record_its_event_and_the_path_that_delivered_it() -> None:
    replication = ReplicationMetadata("eu", 7, VersionVector.of({"eu": 7}))
    record = EventRecord(
        "T|a",
        3,
        "T",
        slice_for("T|a"),
        None,
        frozenset({"t"}),
        timestamp=500,
        write_timestamp=400,
        replication=replication,
    )
    envelope = EventEnvelope.of(record, "event", EnvelopeSource.LIVE)
    assert envelope == EventEnvelope(
        "T|a",
        3,
        "T",
        slice_for("T|a"),
        500,
        "event",
        frozenset({"t"}),
        EnvelopeSource.LIVE,
        400,
        replication,
    )
    assert envelope.offset == TimestampOffset(500, {"T|a": 3})
    assert not envelope.offset.is_behind(record)


def test_an_envelope_built_the_old_way_keeps_working() -> None:
    built = envelope("T|a")
    assert (built.source, built.write_timestamp, built.replication) == (
        EnvelopeSource.QUERY,
        0,
        None,
    )
