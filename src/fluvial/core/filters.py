"""Filters: which entities' events a stream carries, as a value folded from criteria.

Everything that decides what passes a filter lives in this module (with its criteria in
`fluvial.core.filters_criteria`, topics in `fluvial.core.topics`, regexes in
`fluvial.core.filters_regexes`); the runtime asks it and carries out the answer.

- A `Filter` is the fold of its updates: `Filter().updated(update)`, where an update is a
  criterion or a sequence of them. Applying the same update twice changes nothing.
- `Filter.matches(entity_id, tags)`: an event passes unless an exclude matches it (its tags,
  its entity id, a regex over its entity id), and an include that matches it (tags, topics,
  entity id, regex) overrides every exclude. No criteria: everything passes; includes alone
  change nothing, since nothing is excluded; ``ExcludeRegexEntityIds({".*"})`` excludes
  everything, so that only the includes pass.
- `evaluate_filters` puts the producer's filter before the consumer's: what the producer drops,
  the consumer's includes cannot bring back; the verdict says which of them dropped it, since the
  producer sends a placeholder for what it drops and needs to send nothing of what the consumer
  excludes.
- `Filter.replays(update)`: the entities an update newly includes by id with a seq nr to
  replay from, for the runtime to start those replays.
- `Filter.to_json` / `Filter.from_json` (and the plain-data pair `to_data` / `from_data`): the
  persisted form, lossless (its shape in `fluvial.core.filters_stored`).

The entity id is the entity's own id, the same at every replica of a replicated entity
(`EventEnvelope.entity_id`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Iterable, Mapping
from types import MappingProxyType
from typing import Any, assert_never

import attrs
import msgspec

from fluvial.core.filters_criteria import (
    ExcludeEntityIds,
    ExcludeRegexEntityIds,
    ExcludeTags,
    FilterCriterion,
    IncludeEntityIds,
    IncludeRegexEntityIds,
    IncludeTags,
    IncludeTopics,
    InvalidFilterCriterion,
    RemoveExcludeEntityIds,
    RemoveExcludeRegexEntityIds,
    RemoveExcludeTags,
    RemoveIncludeEntityIds,
    RemoveIncludeRegexEntityIds,
    RemoveIncludeTags,
    RemoveIncludeTopics,
    check_seq_nr,
)
from fluvial.core.filters_regexes import RegexMatcher
from fluvial.core.filters_stored import (
    InvalidFilterData,
    StoredFilter,
    stored_from_data,
    stored_from_json,
    stored_to_json,
)
from fluvial.core.records import EventEnvelope
from fluvial.core.topics import TopicMatcher

FilterCriteriaUpdate = FilterCriterion | Iterable[FilterCriterion]
"""What `Filter.updated` takes: one criterion, or criteria applied in order."""


class FilterVerdict(enum.Enum):
    """What `evaluate_filters` answers for one event."""

    PASSES = "passes"
    """Both filters let it through: send it."""
    PRODUCER_DROPS = "producer drops"
    """The producer's filter drops it: send a placeholder, so the consumer's seq nrs stay
    gapless."""
    CONSUMER_EXCLUDES = "consumer excludes"
    """The consumer's filter excludes it: it need not travel at all (a later include replays
    it)."""


@attrs.frozen
class EntityReplay:
    """Replay the events of the entity `entity_id` from `from_seq_nr` (at least 1)."""

    entity_id: str
    from_seq_nr: int


def _frozen_mapping(value: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType(dict(value))


class _Compiled:
    """What a filter evaluates with, built once per filter value. `previous` is the compiled
    form of a filter that differs only in the parts `changed`: the others are taken from it."""

    __slots__ = ("exclude_regexes", "excludes", "include_ids", "include_regexes", "include_topics")

    excludes: bool
    include_ids: frozenset[str]
    exclude_regexes: Callable[[str], object] | None
    include_regexes: Callable[[str], object] | None
    include_topics: Callable[[Iterable[str]], bool] | None

    def __init__(
        self,
        filter_: Filter,
        previous: _Compiled | None = None,
        changed: Collection[str] = (),
    ) -> None:
        self.excludes = bool(
            filter_.exclude_tags or filter_.exclude_entity_ids or filter_.exclude_regexes
        )
        if previous is not None and "include_entity_ids" not in changed:
            self.include_ids = previous.include_ids
        else:
            # A frozenset answers `in` faster than the read-only mapping in front of a dict.
            self.include_ids = frozenset(filter_.include_entity_ids)
        if previous is not None and "exclude_regexes" not in changed:
            self.exclude_regexes = previous.exclude_regexes
        else:
            self.exclude_regexes = (
                RegexMatcher(filter_.exclude_regexes).matches if filter_.exclude_regexes else None
            )
        if previous is not None and "include_regexes" not in changed:
            self.include_regexes = previous.include_regexes
        else:
            self.include_regexes = (
                RegexMatcher(filter_.include_regexes).matches if filter_.include_regexes else None
            )
        if previous is not None and "include_topics" not in changed:
            self.include_topics = previous.include_topics
        else:
            self.include_topics = (
                TopicMatcher(filter_.include_topics).matches_tags
                if filter_.include_topics
                else None
            )


# Which criterion builds each part of a filter: its values are checked as that criterion's.
_PART_CRITERIA: dict[
    str,
    type[
        ExcludeTags
        | IncludeTags
        | ExcludeEntityIds
        | ExcludeRegexEntityIds
        | IncludeRegexEntityIds
        | IncludeTopics
    ],
] = {
    "exclude_tags": ExcludeTags,
    "include_tags": IncludeTags,
    "exclude_entity_ids": ExcludeEntityIds,
    "exclude_regexes": ExcludeRegexEntityIds,
    "include_regexes": IncludeRegexEntityIds,
    "include_topics": IncludeTopics,
}


@attrs.frozen(unsafe_hash=False)  # unhashable: it holds a mapping
class Filter:
    """A filter's criteria, as a value; build one with `Filter()` and `updated`.

    Each part is a set of values (`include_entity_ids` maps each included entity id to the seq
    nr its include gave, see `IncludeEntityIds`); see the module docstring for how they decide
    what passes. The constructor checks the values as their criteria do (raising
    `InvalidFilterCriterion`) and compiles the regexes and topic expressions once, so that
    `matches` evaluates many events with them.
    """

    exclude_tags: frozenset[str] = frozenset()
    include_tags: frozenset[str] = frozenset()
    exclude_entity_ids: frozenset[str] = frozenset()
    include_entity_ids: Mapping[str, int] = attrs.field(
        factory=lambda: MappingProxyType({}), converter=_frozen_mapping
    )
    exclude_regexes: frozenset[str] = frozenset()
    include_regexes: frozenset[str] = frozenset()
    include_topics: frozenset[str] = frozenset()
    _compiled: _Compiled = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        for part, criterion in _PART_CRITERIA.items():
            values = getattr(self, part)
            if not isinstance(values, frozenset):
                raise InvalidFilterCriterion(criterion.__name__, values, "values are a frozenset")
            criterion(values)
        IncludeEntityIds(self.include_entity_ids.keys())
        for seq_nr in set(self.include_entity_ids.values()):
            check_seq_nr("IncludeEntityIds", seq_nr)
        object.__setattr__(self, "_compiled", _Compiled(self))

    @classmethod
    def of(cls, update: FilterCriteriaUpdate) -> Filter:
        """The filter that `update` makes of no criteria: `Filter().updated(update)`."""
        return cls().updated(update)

    def updated(self, update: FilterCriteriaUpdate) -> Filter:
        """This filter after `update`: each criterion adds its values to its part, or removes
        them, in order. Idempotent: `f.updated(u).updated(u) == f.updated(u)`. Criteria check
        their values when they are built (`InvalidFilterCriterion`), so an update whose
        criteria exist applies whole; something else among them is refused with the same error
        before anything applies."""
        criteria = criteria_of(update)
        if not criteria:
            return self
        parts: dict[str, frozenset[str]] = {}
        included: dict[str, int] | None = None
        for criterion in criteria:
            match criterion:
                case IncludeEntityIds(values=values, seq_nr=seq_nr):
                    included = dict(self.include_entity_ids) if included is None else included
                    included.update(dict.fromkeys(values, seq_nr))
                case RemoveIncludeEntityIds(values=values):
                    included = dict(self.include_entity_ids) if included is None else included
                    for entity_id in values:
                        included.pop(entity_id, None)
                case (
                    ExcludeTags()
                    | RemoveExcludeTags()
                    | IncludeTags()
                    | RemoveIncludeTags()
                    | ExcludeEntityIds()
                    | RemoveExcludeEntityIds()
                    | ExcludeRegexEntityIds()
                    | RemoveExcludeRegexEntityIds()
                    | IncludeRegexEntityIds()
                    | RemoveIncludeRegexEntityIds()
                    | IncludeTopics()
                    | RemoveIncludeTopics()
                ):
                    part = criterion.part
                    current = parts.get(part, getattr(self, part))
                    parts[part] = (
                        current | criterion.values if criterion.adds else current - criterion.values
                    )
                case _:
                    assert_never(criterion)
        changes: dict[str, Any] = {
            part: values for part, values in parts.items() if values != getattr(self, part)
        }
        if included is not None and included != self.include_entity_ids:
            changes["include_entity_ids"] = included
        if not changes:
            return self
        # The criteria checked their values, and the parts not changed are this filter's: the
        # new filter skips the constructor's checks and compiles only what changed.
        updated = object.__new__(Filter)
        for field in _FIELDS:
            value = changes.get(field, getattr(self, field))
            if field == "include_entity_ids" and field in changes:
                value = _frozen_mapping(value)
            object.__setattr__(updated, field, value)
        object.__setattr__(updated, "_compiled", _Compiled(updated, self._compiled, changes))
        return updated

    def replays(self, update: FilterCriteriaUpdate) -> tuple[EntityReplay, ...]:
        """The replays that `update` asks of this filter, in entity id order: each entity it
        includes by id with a seq nr n >= 1 that this filter did not hold (not included by id,
        or included with another seq nr), replayed from n. Computed from the filter before and
        after the update, so the same update applied again asks for nothing, and an update that
        includes an entity and removes it again asks for nothing either.

        Only explicit seq nrs replay: an entity that becomes visible otherwise (an include by
        tag, topic or regex, an exclude removed), or by an include with seq nr 0, has its
        earlier events replayed when the consumer meets it at a seq nr above the one it saw
        (its offsets report the gap)."""
        after = self.updated(update).include_entity_ids
        before = self.include_entity_ids
        return tuple(
            EntityReplay(entity_id, seq_nr)
            for entity_id, seq_nr in sorted(after.items())
            if seq_nr >= 1 and before.get(entity_id) != seq_nr
        )

    def matches(self, entity_id: str, tags: frozenset[str]) -> bool:
        """Whether an event of the entity `entity_id` with `tags` passes this filter: no
        exclude matches it, or some include does."""
        compiled = self._compiled
        if not compiled.excludes:
            return True
        exclude_regexes = compiled.exclude_regexes
        if not (
            entity_id in self.exclude_entity_ids
            or not tags.isdisjoint(self.exclude_tags)
            or (exclude_regexes is not None and exclude_regexes(entity_id))
        ):
            return True
        include_regexes, include_topics = compiled.include_regexes, compiled.include_topics
        return bool(
            entity_id in compiled.include_ids
            or not tags.isdisjoint(self.include_tags)
            or (include_topics is not None and include_topics(tags))
            or (include_regexes is not None and include_regexes(entity_id))
        )

    def matches_envelope(self, envelope: EventEnvelope[object]) -> bool:
        """`matches` for the entity id (`EventEnvelope.entity_id`) and tags of `envelope`."""
        return self.matches(envelope.entity_id, envelope.tags)

    @property
    def empty(self) -> bool:
        """Whether the filter holds no criteria (everything passes)."""
        return self == _EMPTY

    def criteria(self) -> tuple[FilterCriterion, ...]:
        """Criteria that build this filter from no criteria (`Filter.of(f.criteria()) == f`):
        what a consumer sends to describe its whole filter. One criterion per non-empty part,
        and one `IncludeEntityIds` per seq nr, in a fixed order."""
        found: list[FilterCriterion] = [
            criterion(getattr(self, part))
            for part, criterion in _PART_CRITERIA.items()
            if getattr(self, part)
        ]
        by_seq_nr: dict[int, set[str]] = {}
        for entity_id, seq_nr in self.include_entity_ids.items():
            by_seq_nr.setdefault(seq_nr, set()).add(entity_id)
        found += [IncludeEntityIds(ids, seq_nr) for seq_nr, ids in sorted(by_seq_nr.items())]
        return tuple(found)

    def to_data(self) -> dict[str, Any]:
        """The filter as plain data (dicts, lists, strings, ints), sorted, for any encoder:
        `Filter.from_data(f.to_data()) == f`."""
        data: dict[str, Any] = msgspec.to_builtins(self._as_stored())
        return data

    def to_json(self) -> bytes:
        """The filter as JSON (the same for equal filters): its persisted form,
        `Filter.from_json(f.to_json()) == f`."""
        return stored_to_json(self._as_stored())

    @classmethod
    def from_data(cls, data: object) -> Filter:
        """The filter `to_data` gave `data`; raises `InvalidFilterData` for anything else."""
        return cls._from_stored(stored_from_data(data))

    @classmethod
    def from_json(cls, text: bytes | str) -> Filter:
        """The filter `to_json` gave `text`; raises `InvalidFilterData` for anything else."""
        return cls._from_stored(stored_from_json(text))

    def _as_stored(self) -> StoredFilter:
        return StoredFilter(
            exclude_tags=sorted(self.exclude_tags),
            include_tags=sorted(self.include_tags),
            exclude_entity_ids=sorted(self.exclude_entity_ids),
            include_entity_ids=dict(sorted(self.include_entity_ids.items())),
            exclude_regexes=sorted(self.exclude_regexes),
            include_regexes=sorted(self.include_regexes),
            include_topics=sorted(self.include_topics),
        )

    @classmethod
    def _from_stored(cls, stored: StoredFilter) -> Filter:
        try:
            return cls(
                exclude_tags=frozenset(stored.exclude_tags),
                include_tags=frozenset(stored.include_tags),
                exclude_entity_ids=frozenset(stored.exclude_entity_ids),
                include_entity_ids=stored.include_entity_ids,
                exclude_regexes=frozenset(stored.exclude_regexes),
                include_regexes=frozenset(stored.include_regexes),
                include_topics=frozenset(stored.include_topics),
            )
        except InvalidFilterCriterion as error:
            raise InvalidFilterData(f"stored filter refused: {error}") from error


_CRITERION_CLASSES = (
    ExcludeTags,
    RemoveExcludeTags,
    IncludeTags,
    RemoveIncludeTags,
    ExcludeEntityIds,
    RemoveExcludeEntityIds,
    IncludeEntityIds,
    RemoveIncludeEntityIds,
    ExcludeRegexEntityIds,
    RemoveExcludeRegexEntityIds,
    IncludeRegexEntityIds,
    RemoveIncludeRegexEntityIds,
    IncludeTopics,
    RemoveIncludeTopics,
)
_EMPTY = Filter()


def criteria_of(update: FilterCriteriaUpdate) -> tuple[FilterCriterion, ...]:
    """The criteria of `update` (one criterion, or an iterable of them), in order, as a
    tuple; `InvalidFilterCriterion` for anything among them that is not a criterion."""
    criteria = (update,) if isinstance(update, _CRITERION_CLASSES) else tuple(update)
    for criterion in criteria:
        if not isinstance(criterion, _CRITERION_CLASSES):
            raise InvalidFilterCriterion(
                type(criterion).__name__, criterion, "is not a filter criterion"
            )
    return criteria


_FIELDS = tuple(field.name for field in attrs.fields(Filter) if field.init)


def evaluate_filters(
    entity_id: str, tags: frozenset[str], *, consumer: Filter, producer: Filter | None = None
) -> FilterVerdict:
    """The verdict on one event of the entity `entity_id` with `tags`: the `producer`'s filter
    first (None: it drops nothing), then the `consumer`'s."""
    if producer is not None and not producer.matches(entity_id, tags):
        return FilterVerdict.PRODUCER_DROPS
    if not consumer.matches(entity_id, tags):
        return FilterVerdict.CONSUMER_EXCLUDES
    return FilterVerdict.PASSES
