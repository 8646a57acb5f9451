"""Filters against the reference filter (tests/property/filter_reference.py), under hypothesis.

- Evaluation: for any filter built by any updates, and any event, `Filter.matches` answers what
  the reference answers; `evaluate_filters` puts the producer's filter first; the topic matcher
  and the combined regexes answer what level-by-level matching and one `re.fullmatch` per pattern
  answer.
- The fold: a filter built by updates holds what the reference holds; applying an update again
  changes nothing; updating with a list is updating with each criterion in turn; a removal
  after an addition of the same values is the removal alone, and an addition after a removal
  the addition alone; additions to sets commute.
- Replays: each entity an update includes by id with a seq nr >= 1 that the filter did not
  hold, and nothing else; none when the same update comes again.
- The persisted form and `criteria()` rebuild an equal filter.
- A state machine applies updates, invalid ones among them, and checks after each step that
  the filter is the reference's and that a refused update left it as it was.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from fluvial.core.filters import Filter, FilterVerdict, evaluate_filters
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
)
from fluvial.core.filters_regexes import RegexMatcher
from fluvial.core.topics import TopicMatcher
from property.filter_reference import (
    ReferenceFilter,
    criteria,
    entity_ids,
    filter_updates,
    reference_regex_matches,
    reference_topic_matches,
    regexes,
    tag_sets,
    topic_expressions,
    topics,
    updates,
)

# An addition and the removal of the same part.
_REMOVAL_OF: dict[type, Callable[[frozenset[str]], FilterCriterion]] = {
    ExcludeTags: RemoveExcludeTags,
    IncludeTags: RemoveIncludeTags,
    ExcludeEntityIds: RemoveExcludeEntityIds,
    IncludeEntityIds: RemoveIncludeEntityIds,
    ExcludeRegexEntityIds: RemoveExcludeRegexEntityIds,
    IncludeRegexEntityIds: RemoveIncludeRegexEntityIds,
    IncludeTopics: RemoveIncludeTopics,
}
additions = criteria.filter(lambda c: type(c) in _REMOVAL_OF)
events = st.lists(st.tuples(entity_ids, tag_sets), min_size=1, max_size=8)


def _reference(updates: list[FilterCriterion]) -> ReferenceFilter:
    reference = ReferenceFilter()
    for criterion in updates:
        reference.apply(criterion)
    return reference


def _removal(addition: FilterCriterion) -> FilterCriterion:
    return _REMOVAL_OF[type(addition)](addition.values)


@settings(max_examples=400)
@given(filter_updates, events)
def test_a_filter_passes_what_the_reference_passes(
    updates: list[FilterCriterion], events: list[tuple[str, frozenset[str]]]
) -> None:
    filter_, reference = Filter.of(updates), _reference(updates)
    # Built by the constructor: compiled whole, not part by part as the updates compiled it.
    rebuilt = Filter.from_json(filter_.to_json())
    for entity_id, tags in events:
        assert filter_.matches(entity_id, tags) == reference.matches(entity_id, tags)
        assert rebuilt.matches(entity_id, tags) == reference.matches(entity_id, tags)


@given(filter_updates, filter_updates, events)
def test_the_producers_filter_comes_first_and_the_consumer_cannot_override_it(
    producer_updates: list[FilterCriterion],
    consumer_updates: list[FilterCriterion],
    events: list[tuple[str, frozenset[str]]],
) -> None:
    producer, consumer = Filter.of(producer_updates), Filter.of(consumer_updates)
    for entity_id, tags in events:
        if not _reference(producer_updates).matches(entity_id, tags):
            expected = FilterVerdict.PRODUCER_DROPS
        elif not _reference(consumer_updates).matches(entity_id, tags):
            expected = FilterVerdict.CONSUMER_EXCLUDES
        else:
            expected = FilterVerdict.PASSES
        assert evaluate_filters(entity_id, tags, consumer=consumer, producer=producer) is expected


@settings(max_examples=400)
@given(st.frozensets(topic_expressions, max_size=12), st.lists(topics, min_size=1, max_size=8))
def test_the_topic_matcher_matches_what_level_by_level_matching_does(
    expressions: frozenset[str], topics: list[str]
) -> None:
    matcher = TopicMatcher(expressions)
    for topic in topics:
        expected = any(reference_topic_matches(e, topic) for e in expressions)
        assert matcher.matches(topic) == expected, topic


@settings(max_examples=400)
@given(st.frozensets(regexes, max_size=8), st.lists(entity_ids, min_size=1, max_size=8))
def test_the_combined_regexes_match_what_one_fullmatch_per_pattern_does(
    patterns: frozenset[str], entity_ids: list[str]
) -> None:
    matcher = RegexMatcher(patterns)
    for entity_id in entity_ids:
        assert bool(matcher.matches(entity_id)) == reference_regex_matches(patterns, entity_id)


@given(updates)
def test_a_filter_holds_what_the_reference_holds(updates: list[FilterCriterion]) -> None:
    assert Filter.of(updates).to_data() == _reference(updates).as_data()


@given(updates, updates)
def test_applying_an_update_again_changes_nothing(
    before: list[FilterCriterion], update: list[FilterCriterion]
) -> None:
    once = Filter.of(before).updated(update)
    assert once.updated(update) == once


@given(updates, updates)
def test_an_update_is_its_criteria_applied_one_by_one(
    before: list[FilterCriterion], update: list[FilterCriterion]
) -> None:
    one_by_one = Filter.of(before)
    for criterion in update:
        one_by_one = one_by_one.updated(criterion)
    assert Filter.of(before).updated(update) == one_by_one


@given(updates, additions)
def test_a_removal_after_an_addition_is_the_removal_alone(
    before: list[FilterCriterion], addition: FilterCriterion
) -> None:
    filter_, removal = Filter.of(before), _removal(addition)
    clean = filter_.updated(removal)
    assert not set(addition.values) & set(getattr(clean, addition.part))
    assert filter_.updated([addition, removal]) == clean
    # So on a filter that did not hold the values, adding and removing them is never adding.
    assert clean.updated([addition, removal]) == clean


@given(updates, additions)
def test_an_addition_after_a_removal_is_the_addition_alone(
    before: list[FilterCriterion], addition: FilterCriterion
) -> None:
    filter_ = Filter.of(before)
    assert filter_.updated([_removal(addition), addition]) == filter_.updated(addition)


@given(updates, st.lists(additions, max_size=4), st.data())
def test_additions_commute_but_the_last_seq_nr_of_an_included_id_wins(
    before: list[FilterCriterion], added: list[FilterCriterion], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(added))
    filter_ = Filter.of(before)
    forward, backward = filter_.updated(added), filter_.updated(shuffled)
    seq_nrs: dict[str, set[int]] = {}
    for criterion in added:
        if isinstance(criterion, IncludeEntityIds):
            for entity_id in criterion.values:
                seq_nrs.setdefault(entity_id, set()).add(criterion.seq_nr)
    if all(len(found) == 1 for found in seq_nrs.values()):
        assert forward == backward
    else:  # the same entities are included, from the seq nr each order gave last
        assert set(forward.include_entity_ids) == set(backward.include_entity_ids)
        assert attrs.evolve(forward, include_entity_ids={}) == attrs.evolve(
            backward, include_entity_ids={}
        )


@given(updates, updates)
def test_an_update_replays_the_entities_it_includes_by_id_with_a_new_seq_nr(
    before: list[FilterCriterion], update: list[FilterCriterion]
) -> None:
    filter_ = Filter.of(before)
    replays = filter_.replays(update)
    held_before = _reference(before).include_entity_ids
    held_after = _reference(before + update).include_entity_ids
    expected = {
        (entity_id, seq_nr)
        for entity_id, seq_nr in held_after.items()
        if seq_nr >= 1 and held_before.get(entity_id) != seq_nr
    }
    assert {(r.entity_id, r.from_seq_nr) for r in replays} == expected
    assert [r.entity_id for r in replays] == sorted(r.entity_id for r in replays)
    # Every replayed entity passes the filter after the update, whatever else it holds.
    after = filter_.updated(update)
    assert all(after.matches(r.entity_id, frozenset()) for r in replays)
    assert after.replays(update) == ()


@given(updates)
def test_the_persisted_form_and_the_criteria_rebuild_the_filter(
    updates: list[FilterCriterion],
) -> None:
    filter_ = Filter.of(updates)
    assert Filter.from_json(filter_.to_json()) == filter_
    assert Filter.from_data(filter_.to_data()) == filter_
    assert Filter.of(filter_.criteria()) == filter_
    # Equal filters persist as the same bytes, however they were built.
    assert Filter.of(filter_.criteria()[::-1]).to_json() == filter_.to_json()


# Each raises InvalidFilterCriterion when called: an update holding one is never applied.
_INVALID_CRITERIA: list[Callable[[], FilterCriterion]] = [
    lambda: IncludeRegexEntityIds({"(unclosed"}),
    lambda: ExcludeRegexEntityIds({"*"}),
    lambda: IncludeTopics({"a/#/b"}),
    lambda: IncludeTopics({"a//b"}),
    lambda: IncludeTopics({"a+"}),
    lambda: IncludeEntityIds({"a"}, -1),
    lambda: ExcludeTags("red"),
]


class FilterMachine(RuleBasedStateMachine):
    """Updates, valid and refused, applied to a filter and to the reference side by side."""

    def __init__(self) -> None:
        super().__init__()
        self.filter = Filter()
        self.reference = ReferenceFilter()
        self.last: list[FilterCriterion] = []

    @rule(update=updates)
    def update(self, update: list[FilterCriterion]) -> None:
        self.filter = self.filter.updated(update)
        for criterion in update:
            self.reference.apply(criterion)
        self.last = update

    @rule()
    def update_again(self) -> None:
        again = self.filter.updated(self.last)
        assert again == self.filter

    @rule(
        good=updates,
        bad=st.sampled_from(_INVALID_CRITERIA),
    )
    def refused_update(
        self, good: list[FilterCriterion], bad: Callable[[], FilterCriterion]
    ) -> None:
        before = self.filter
        try:
            self.filter = self.filter.updated([*good, bad()])
        except InvalidFilterCriterion:
            pass
        else:
            raise AssertionError("an invalid criterion was accepted")
        assert self.filter is before

    @invariant()
    def holds_what_the_reference_holds(self) -> None:
        assert self.filter.to_data() == self.reference.as_data()

    @invariant()
    def passes_what_the_reference_passes(self) -> None:
        for entity_id in ("a", "b-1", "ab", "\n"):
            for tags in (frozenset(), frozenset({"red"}), frozenset({"t:a/b", "blue"})):
                assert self.filter.matches(entity_id, tags) == self.reference.matches(
                    entity_id, tags
                )


TestFilterMachine = FilterMachine.TestCase
TestFilterMachine.settings = settings(max_examples=60, stateful_step_count=12)
