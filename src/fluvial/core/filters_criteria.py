"""Filter criteria: the updates a filter is the fold of (see `fluvial.core.filters`).

Each criterion adds values to one part of a filter, or removes them; every kind of criterion
has its removal. Criteria check their values when they are built, so an invalid one never
exists: a bad regex, a bad topic expression, a single string where a collection of strings
belongs, or a seq nr out of range raises `InvalidFilterCriterion`, which names the criterion
and the value; an update is a list of criteria, so a bad one refuses the whole update before
it reaches a filter. Removals do not check the syntax of what they remove: removing a value
the filter does not hold changes nothing, whatever it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import ClassVar

import attrs

from fluvial.core.errors import UsageError
from fluvial.core.filters_regexes import regex_error
from fluvial.core.records import MAX_SEQ_NR
from fluvial.core.topics import topic_expression_error


class InvalidFilterCriterion(UsageError):
    """A filter criterion with a value it cannot hold: the criterion's name is `criterion`,
    the value `value`, why it is refused `reason`. Nothing was applied."""

    def __init__(self, criterion: str, value: object, reason: str) -> None:
        super().__init__(f"{criterion}: {value!r}: {reason}")
        self.criterion = criterion
        self.value = value
        self.reason = reason


class _OneString(frozenset[str]):
    """What the converter makes of a single string given where a collection belongs, so that
    the criterion can refuse it by name (``ExcludeTags("vip")`` would be ``{"v", "i", "p"}``)."""

    text: str


def _string_set(values: Iterable[str]) -> frozenset[str]:
    if isinstance(values, str):
        refused = _OneString()
        refused.text = values
        return refused
    return frozenset(values)


def _no_check(value: str) -> str | None:
    return None


def _check_strings(
    criterion: str, values: frozenset[str], check: Callable[[str], str | None]
) -> None:
    if isinstance(values, _OneString):
        raise InvalidFilterCriterion(
            criterion, values.text, "takes a collection of strings, not one string"
        )
    for value in values:
        if not isinstance(value, str):
            raise InvalidFilterCriterion(criterion, value, "values are strings")
        reason = check(value)
        if reason is not None:
            raise InvalidFilterCriterion(criterion, value, reason)


@attrs.frozen
class _StringsCriterion:
    """A criterion holding a set of strings for one part of the filter (`part`), which it adds
    to (`adds`) or removes from; `_reason` says why one value is invalid, or None."""

    values: frozenset[str] = attrs.field(converter=_string_set)

    part: ClassVar[str]
    adds: ClassVar[bool]

    def __attrs_post_init__(self) -> None:
        _check_strings(type(self).__name__, self.values, self._reason)

    @staticmethod
    def _reason(value: str) -> str | None:
        return None


@attrs.frozen
class ExcludeTags(_StringsCriterion):
    """Exclude the events that carry one of `values` (tags)."""

    part = "exclude_tags"
    adds = True


@attrs.frozen
class RemoveExcludeTags(_StringsCriterion):
    """Stop excluding events by the tags `values`."""

    part = "exclude_tags"
    adds = False


@attrs.frozen
class IncludeTags(_StringsCriterion):
    """Include the events that carry one of `values` (tags), whatever excludes them."""

    part = "include_tags"
    adds = True


@attrs.frozen
class RemoveIncludeTags(_StringsCriterion):
    """Stop including events by the tags `values`."""

    part = "include_tags"
    adds = False


@attrs.frozen
class ExcludeEntityIds(_StringsCriterion):
    """Exclude the events of the entities whose ids are `values`."""

    part = "exclude_entity_ids"
    adds = True


@attrs.frozen
class RemoveExcludeEntityIds(_StringsCriterion):
    """Stop excluding the entities whose ids are `values`."""

    part = "exclude_entity_ids"
    adds = False


@attrs.frozen
class RemoveIncludeEntityIds(_StringsCriterion):
    """Stop including the entities whose ids are `values` (whatever seq nr included them)."""

    part = "include_entity_ids"
    adds = False


@attrs.frozen
class ExcludeRegexEntityIds(_StringsCriterion):
    """Exclude the events of the entities whose id some regex of `values` fully matches
    (`re.fullmatch` with `re.DOTALL`); ``ExcludeRegexEntityIds({".*"})`` excludes everything."""

    part = "exclude_regexes"
    adds = True

    @staticmethod
    def _reason(value: str) -> str | None:
        return regex_error(value)


@attrs.frozen
class RemoveExcludeRegexEntityIds(_StringsCriterion):
    """Stop excluding entities by the regexes `values` (the same strings as added)."""

    part = "exclude_regexes"
    adds = False


@attrs.frozen
class IncludeRegexEntityIds(_StringsCriterion):
    """Include the events of the entities whose id some regex of `values` fully matches,
    whatever excludes them."""

    part = "include_regexes"
    adds = True

    @staticmethod
    def _reason(value: str) -> str | None:
        return regex_error(value)


@attrs.frozen
class RemoveIncludeRegexEntityIds(_StringsCriterion):
    """Stop including entities by the regexes `values` (the same strings as added)."""

    part = "include_regexes"
    adds = False


@attrs.frozen
class IncludeTopics(_StringsCriterion):
    """Include the events with a topic tag that one of the topic expressions `values`
    matches (see `fluvial.core.topics`), whatever excludes them."""

    part = "include_topics"
    adds = True

    @staticmethod
    def _reason(value: str) -> str | None:
        return topic_expression_error(value)


@attrs.frozen
class RemoveIncludeTopics(_StringsCriterion):
    """Stop including events by the topic expressions `values` (the same strings as added)."""

    part = "include_topics"
    adds = False


@attrs.frozen
class IncludeEntityIds:
    """Include the events of the entities whose ids are `values`, whatever excludes them,
    and say where to replay each one's history from: `seq_nr` 1 replays all of it now, n > 1
    replays from n now, 0 replays nothing now (a gap the consumer meets later replays what it
    misses). Including an entity already included with another seq nr replaces that seq nr
    (and replays from the new one); see `Filter.replays`."""

    values: frozenset[str] = attrs.field(converter=_string_set)
    seq_nr: int = 0

    part: ClassVar[str] = "include_entity_ids"
    adds: ClassVar[bool] = True

    def __attrs_post_init__(self) -> None:
        _check_strings("IncludeEntityIds", self.values, _no_check)
        check_seq_nr("IncludeEntityIds", self.seq_nr)


def check_seq_nr(criterion: str, seq_nr: int) -> None:
    """Raise `InvalidFilterCriterion` unless `seq_nr` can be an include's: an int within
    0..MAX_SEQ_NR."""
    if isinstance(seq_nr, bool) or not isinstance(seq_nr, int) or not 0 <= seq_nr <= MAX_SEQ_NR:
        raise InvalidFilterCriterion(criterion, seq_nr, f"seq_nr is an int within 0..{MAX_SEQ_NR}")


FilterCriterion = (
    ExcludeTags
    | RemoveExcludeTags
    | IncludeTags
    | RemoveIncludeTags
    | ExcludeEntityIds
    | RemoveExcludeEntityIds
    | IncludeEntityIds
    | RemoveIncludeEntityIds
    | ExcludeRegexEntityIds
    | RemoveExcludeRegexEntityIds
    | IncludeRegexEntityIds
    | RemoveIncludeRegexEntityIds
    | IncludeTopics
    | RemoveIncludeTopics
)
"""One filter criterion; a filter update is one or a sequence of them."""
