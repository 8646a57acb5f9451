"""A reference filter, simple enough to be obviously right, and hypothesis strategies for
filter criteria, entity ids, tags, topics and regexes.

The reference keeps each part of a filter in a plain set (and the included ids in a dict), applies
a criterion by adding or removing its values, and evaluates an event by reading the rule out
loud: excluded if an exclude matches, then passed anyway if an include matches. Regexes are
tried one by one with `re.fullmatch`; a topic expression is compared with the topic level by
level. It shares no code with `fluvial.core.filters`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import attrs
from hypothesis import strategies as st

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


def reference_topic_matches(expression: str, topic: str) -> bool:
    """MQTT matching, one level at a time."""
    wanted, levels = expression.split("/"), topic.split("/")
    for index, level in enumerate(wanted):
        if level == "#":
            return True  # the levels before matched: the parent and everything below it
        if index >= len(levels):
            return False
        if level != "+" and level != levels[index]:
            return False
    return len(wanted) == len(levels)


def reference_regex_matches(patterns: Iterable[str], entity_id: str) -> bool:
    return any(re.fullmatch(p, entity_id, re.DOTALL) for p in patterns)


@attrs.define
class ReferenceFilter:
    exclude_tags: set[str] = attrs.Factory(set)
    include_tags: set[str] = attrs.Factory(set)
    exclude_entity_ids: set[str] = attrs.Factory(set)
    include_entity_ids: dict[str, int] = attrs.Factory(dict)
    exclude_regexes: set[str] = attrs.Factory(set)
    include_regexes: set[str] = attrs.Factory(set)
    include_topics: set[str] = attrs.Factory(set)

    def apply(self, criterion: FilterCriterion) -> None:
        values = set(criterion.values)
        if isinstance(criterion, ExcludeTags):
            self.exclude_tags |= values
        elif isinstance(criterion, RemoveExcludeTags):
            self.exclude_tags -= values
        elif isinstance(criterion, IncludeTags):
            self.include_tags |= values
        elif isinstance(criterion, RemoveIncludeTags):
            self.include_tags -= values
        elif isinstance(criterion, ExcludeEntityIds):
            self.exclude_entity_ids |= values
        elif isinstance(criterion, RemoveExcludeEntityIds):
            self.exclude_entity_ids -= values
        elif isinstance(criterion, IncludeEntityIds):
            for entity_id in values:
                self.include_entity_ids[entity_id] = criterion.seq_nr
        elif isinstance(criterion, RemoveIncludeEntityIds):
            for entity_id in values:
                self.include_entity_ids.pop(entity_id, None)
        elif isinstance(criterion, ExcludeRegexEntityIds):
            self.exclude_regexes |= values
        elif isinstance(criterion, RemoveExcludeRegexEntityIds):
            self.exclude_regexes -= values
        elif isinstance(criterion, IncludeRegexEntityIds):
            self.include_regexes |= values
        elif isinstance(criterion, RemoveIncludeRegexEntityIds):
            self.include_regexes -= values
        elif isinstance(criterion, IncludeTopics):
            self.include_topics |= values
        elif isinstance(criterion, RemoveIncludeTopics):
            self.include_topics -= values
        else:
            raise AssertionError(criterion)

    def matches(self, entity_id: str, tags: frozenset[str]) -> bool:
        excluded = (
            any(tag in self.exclude_tags for tag in tags)
            or entity_id in self.exclude_entity_ids
            or reference_regex_matches(self.exclude_regexes, entity_id)
        )
        if not excluded:
            return True
        topics = [tag[len("t:") :] for tag in tags if tag.startswith("t:")]
        return (
            any(tag in self.include_tags for tag in tags)
            or entity_id in self.include_entity_ids
            or reference_regex_matches(self.include_regexes, entity_id)
            or any(
                reference_topic_matches(expression, topic)
                for expression in self.include_topics
                for topic in topics
            )
        )

    def as_data(self) -> dict[str, object]:
        return {
            "exclude_tags": sorted(self.exclude_tags),
            "include_tags": sorted(self.include_tags),
            "exclude_entity_ids": sorted(self.exclude_entity_ids),
            "include_entity_ids": dict(sorted(self.include_entity_ids.items())),
            "exclude_regexes": sorted(self.exclude_regexes),
            "include_regexes": sorted(self.include_regexes),
            "include_topics": sorted(self.include_topics),
        }


# Small alphabets, so that generated criteria and events meet often.
# Levels that share leading characters ("a", "ab", "abc"), as the matcher's regex shares them.
levels = st.sampled_from(["a", "ab", "abc", "b", "", "+x"])
topics = st.lists(levels, min_size=1, max_size=4).map("/".join)
topic_expressions = st.builds(
    lambda head, rest: "/".join([*head, *rest]),
    st.lists(st.sampled_from(["a", "ab", "abc", "b", "+"]), max_size=3),
    st.sampled_from([[], ["#"]]),
).filter(bool)
entity_ids = st.one_of(
    st.sampled_from(["a", "b", "ab", "a-1", "b\n"]),
    st.text(alphabet="ab-1\n", min_size=1, max_size=4),
)
plain_tags = st.sampled_from(["red", "blue", "t:", "t:a"])
tags = st.one_of(plain_tags, topics.map(lambda topic: f"t:{topic}"))
tag_sets = st.frozensets(tags, max_size=4)


def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


def _group(inner: str) -> str:
    return f"({inner})"


_atoms = st.sampled_from(["a", "b", "1", "-", ".", "[ab]", "\\d", "\n", "a*", "b?", ".*", ""])
regexes = st.recursive(
    _atoms,
    lambda inner: st.one_of(
        st.tuples(inner, inner).map("".join),
        st.tuples(inner, inner).map("|".join),
        inner.map(_group),
        inner.map(lambda r: f"(?:{r})+"),
        inner.map(lambda r: f"({r})\\1"),  # a back reference: numbers shift if combined
        inner.map(lambda r: f"(?P<g>{r})"),  # a named group: names clash if combined
        inner.map(lambda r: f"(?i){r}"),  # a global flag: must open the regex
        inner.map(lambda r: f"(?>{r})b?"),  # an atomic group
    ),
    max_leaves=4,
).filter(lambda pattern: _compiles(pattern))

_value_sets = {
    "tags": st.frozensets(tags, min_size=1, max_size=3),
    "ids": st.frozensets(entity_ids, min_size=1, max_size=3),
    "regexes": st.frozensets(regexes, min_size=1, max_size=3),
    "topics": st.frozensets(topic_expressions, min_size=1, max_size=3),
}
_criteria_classes = {
    "tags": [ExcludeTags, RemoveExcludeTags, IncludeTags, RemoveIncludeTags],
    "ids": [ExcludeEntityIds, RemoveExcludeEntityIds, RemoveIncludeEntityIds],
    "regexes": [
        ExcludeRegexEntityIds,
        RemoveExcludeRegexEntityIds,
        IncludeRegexEntityIds,
        RemoveIncludeRegexEntityIds,
    ],
    "topics": [IncludeTopics, RemoveIncludeTopics],
}

criteria: st.SearchStrategy[FilterCriterion] = st.one_of(
    *[
        st.builds(cls, values)
        for kind, classes in _criteria_classes.items()
        for cls in classes
        for values in [_value_sets[kind]]
    ],
    st.builds(IncludeEntityIds, _value_sets["ids"], st.sampled_from([0, 1, 2, 5])),
)
updates = st.lists(criteria, max_size=4)
# Updates that often start by excluding everything, so that the includes decide often too.
filter_updates = st.builds(
    lambda everything, rest: [ExcludeRegexEntityIds({".*"})] * everything + rest,
    st.booleans(),
    st.lists(criteria, max_size=8),
)
