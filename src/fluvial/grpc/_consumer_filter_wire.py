"""The consumer's filter criteria on the wire: each core criterion (`fluvial.core.filters_
criteria`) as one protobuf `FilterCriterion` (filters.proto), in order, so that the index of a
criterion the producer refuses (`FilterUpdateRefused.criterion_index`) is the index of the
consumer's own. The producer's reverse is `_producer_wire.core_criteria`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from fluvial.core.filters_criteria import (
    ExcludeEntityIds,
    ExcludeRegexEntityIds,
    ExcludeTags,
    FilterCriterion,
    IncludeEntityIds,
    IncludeRegexEntityIds,
    IncludeTags,
    IncludeTopics,
    RemoveExcludeEntityIds,
    RemoveExcludeRegexEntityIds,
    RemoveExcludeTags,
    RemoveIncludeEntityIds,
    RemoveIncludeRegexEntityIds,
    RemoveIncludeTags,
    RemoveIncludeTopics,
)

from ._proto.fluvial import v1 as pb

# Each core criterion of a set of strings: its wire field, and how that field's message holds them.
_STRINGS: Final[dict[type, tuple[str, type, str]]] = {
    ExcludeTags: ("exclude_tags", pb.Tags, "tags"),
    RemoveExcludeTags: ("remove_exclude_tags", pb.Tags, "tags"),
    IncludeTags: ("include_tags", pb.Tags, "tags"),
    RemoveIncludeTags: ("remove_include_tags", pb.Tags, "tags"),
    ExcludeEntityIds: ("exclude_entity_ids", pb.EntityIds, "entity_ids"),
    RemoveExcludeEntityIds: ("remove_exclude_entity_ids", pb.EntityIds, "entity_ids"),
    RemoveIncludeEntityIds: ("remove_include_entity_ids", pb.EntityIds, "entity_ids"),
    ExcludeRegexEntityIds: ("exclude_regexes", pb.Regexes, "regexes"),
    RemoveExcludeRegexEntityIds: ("remove_exclude_regexes", pb.Regexes, "regexes"),
    IncludeRegexEntityIds: ("include_regexes", pb.Regexes, "regexes"),
    RemoveIncludeRegexEntityIds: ("remove_include_regexes", pb.Regexes, "regexes"),
    IncludeTopics: ("include_topics", pb.Topics, "topics"),
    RemoveIncludeTopics: ("remove_include_topics", pb.Topics, "topics"),
}


def wire_criterion(criterion: FilterCriterion) -> pb.FilterCriterion:
    """`criterion` as the wire carries it (its values sorted: the same criterion, the same
    bytes)."""
    if isinstance(criterion, IncludeEntityIds):
        included = [
            pb.IncludedEntityId(entity_id=entity_id, seq_nr=criterion.seq_nr)
            for entity_id in sorted(criterion.values)
        ]
        return pb.FilterCriterion(include_entity_ids=pb.IncludeEntityIds(entity_ids=included))
    field, message, values = _STRINGS[type(criterion)]
    part = message(**{values: sorted(criterion.values)})
    return pb.FilterCriterion(**{field: part})


def wire_criteria(criteria: Sequence[FilterCriterion]) -> list[pb.FilterCriterion]:
    """`criteria` in order, one wire criterion each."""
    return [wire_criterion(criterion) for criterion in criteria]
