"""`EventEnvelope.entity_id`: the entity's id without parsing the persistence id."""

from __future__ import annotations

import pytest

from fluvial.core.ids import PersistenceId, slice_for
from fluvial.core.records import EventEnvelope


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
