"""Filters by example: what passes, topics, replays, refusals and the persisted form.

tests/property/test_filter_properties.py checks the same against a reference under hypothesis.
"""

from __future__ import annotations

import pytest

from fluvial import (
    EntityReplay,
    EventEnvelope,
    ExcludeEntityIds,
    ExcludeRegexEntityIds,
    ExcludeTags,
    Filter,
    FilterCriterion,
    FilterVerdict,
    IncludeEntityIds,
    IncludeRegexEntityIds,
    IncludeTags,
    IncludeTopics,
    InvalidFilterCriterion,
    InvalidFilterData,
    RemoveExcludeRegexEntityIds,
    RemoveIncludeEntityIds,
    RemoveIncludeTopics,
    ReplicatedPersistenceId,
    ReplicationMetadata,
    UsageError,
    evaluate_filters,
)
from fluvial.core.errors import DataError
from fluvial.core.records import MAX_SEQ_NR

NO_TAGS: frozenset[str] = frozenset()
EVERYTHING = ExcludeRegexEntityIds({".*"})


def test_no_criteria_pass_everything_and_includes_alone_change_nothing() -> None:
    assert Filter().matches("cart-1", NO_TAGS)
    assert Filter().empty
    only_includes = Filter.of([IncludeEntityIds({"cart-1"}), IncludeTags({"vip"})])
    assert only_includes.matches("cart-2", frozenset({"other"}))


def test_an_exclude_drops_and_any_matching_include_overrides_it() -> None:
    filter_ = Filter.of([ExcludeTags({"test"}), ExcludeEntityIds({"cart-9"}), IncludeTags({"vip"})])
    assert filter_.matches("cart-1", frozenset({"prod"}))
    assert not filter_.matches("cart-1", frozenset({"test"}))
    assert not filter_.matches("cart-9", NO_TAGS)
    assert filter_.matches("cart-9", frozenset({"vip"}))
    assert filter_.matches("cart-1", frozenset({"test", "vip"}))


def test_excluding_everything_leaves_only_the_includes() -> None:
    filter_ = Filter.of(
        [
            EVERYTHING,
            IncludeEntityIds({"cart-1"}),
            IncludeRegexEntityIds({"vip-[0-9]+"}),
            IncludeTopics({"region/eu/#"}),
        ]
    )
    assert filter_.matches("cart-1", NO_TAGS)
    assert filter_.matches("vip-12", NO_TAGS)
    assert filter_.matches("cart-2", frozenset({"t:region/eu/paris"}))
    assert not filter_.matches("cart-2", frozenset({"t:region/us"}))
    assert not filter_.matches("cart-2", frozenset({"region/eu"}))  # a tag, not a topic tag
    # Entity ids with a newline are entity ids too: `.` matches it.
    assert not filter_.matches("cart\n2", NO_TAGS)


def test_regexes_match_the_whole_entity_id() -> None:
    filter_ = Filter.of([EVERYTHING, IncludeRegexEntityIds({"vip-[0-9]+"})])
    assert filter_.matches("vip-1", NO_TAGS)
    assert not filter_.matches("vip-1x", NO_TAGS)
    assert not filter_.matches("a-vip-1", NO_TAGS)
    # `.` matches every character, a newline too.
    assert not Filter.of(ExcludeRegexEntityIds({"cart-.*"})).matches("cart-\n2", NO_TAGS)


@pytest.mark.parametrize(
    ("patterns", "matching", "not_matching"),
    [
        # A back reference counts its own pattern's groups, not the combination's.
        ({"(a)b", "(x)\\1"}, ["xx", "ab"], ["xa", "x"]),
        # Named groups with one name in two patterns, and a global flag.
        ({"(?P<n>a)(?P=n)", "(?P<n>b)c", "(?i)cart"}, ["aa", "bc", "CART"], ["ab", "Cart-1"]),
        # An alternation inside a pattern stays inside it.
        ({"a|b", "c"}, ["a", "b", "c"], ["ab", "bc"]),
    ],
)
def test_patterns_keep_their_meaning_among_other_patterns(
    patterns: set[str], matching: list[str], not_matching: list[str]
) -> None:
    filter_ = Filter.of([EVERYTHING, IncludeRegexEntityIds(patterns)])
    assert [e for e in matching if not filter_.matches(e, NO_TAGS)] == []
    assert [e for e in not_matching if filter_.matches(e, NO_TAGS)] == []


@pytest.mark.parametrize(
    ("expression", "matching", "not_matching"),
    [
        ("sport/tennis", ["sport/tennis"], ["sport", "sport/tennis/final", "sport/golf"]),
        (
            "sport/+/final",
            ["sport/tennis/final", "sport//final"],
            ["sport/final", "sport/a/b/final"],
        ),
        ("sport/#", ["sport", "sport/tennis", "sport/tennis/final"], ["sports", "golf/sport"]),
        ("+", ["sport", ""], ["sport/tennis"]),
        ("#", ["sport", "", "a/b/c"], []),
        ("+/+", ["a/b", "/"], ["a", "a/b/c"]),
        ("sport/+/#", ["sport/tennis", "sport/tennis/final"], ["sport"]),
    ],
)
def test_topic_expressions(expression: str, matching: list[str], not_matching: list[str]) -> None:
    filter_ = Filter.of([EVERYTHING, IncludeTopics({expression})])

    def passes(topic: str) -> bool:
        return filter_.matches("e", frozenset({f"t:{topic}"}))

    assert [t for t in matching if not passes(t)] == []
    assert [t for t in not_matching if passes(t)] == []


def test_expressions_of_up_to_100_levels_and_many_that_share_prefixes_are_matched() -> None:
    deepest = "/".join(["a"] * 100)
    assert Filter.of([EVERYTHING, IncludeTopics({deepest})]).matches(
        "e", frozenset({f"t:{deepest}"})
    )
    with pytest.raises(InvalidFilterCriterion, match="at most 100 levels"):
        IncludeTopics({deepest + "/a"})
    # Each shares its predecessor's characters: too deep to share them in one regex (past the
    # matcher's bound of 200 nested groups, and past what `re` compiles: some 450), so they are
    # matched unshared.
    chain = {"a" * n for n in range(1, 600)}
    filter_ = Filter.of([EVERYTHING, IncludeTopics(chain)])
    assert filter_.matches("e", frozenset({"t:" + "a" * 599}))
    assert not filter_.matches("e", frozenset({"t:" + "a" * 600}))
    assert not filter_.matches("e", frozenset({"t:" + "a" * 599 + "b"}))


def test_a_replicated_entity_is_filtered_by_its_own_id_at_every_replica() -> None:
    filter_ = Filter.of([EVERYTHING, IncludeEntityIds({"cart|1"})])
    for replica in ("A", "B"):
        envelope = EventEnvelope(
            str(ReplicatedPersistenceId("Cart", "cart|1", replica)),
            1,
            "Cart",
            0,
            1,
            None,
            replication=ReplicationMetadata(origin_replica=replica, origin_seq_nr=1),
        )
        assert envelope.entity_id == "cart|1"
        assert filter_.matches_envelope(envelope)


def test_the_producers_filter_comes_first_and_a_consumer_cannot_override_it() -> None:
    producer = Filter.of([ExcludeTags({"internal"})])
    consumer = Filter.of([EVERYTHING, IncludeTags({"internal", "shared"})])

    def verdict(tags: set[str]) -> FilterVerdict:
        return evaluate_filters("e", frozenset(tags), consumer=consumer, producer=producer)

    assert verdict({"internal"}) is FilterVerdict.PRODUCER_DROPS
    assert verdict({"shared"}) is FilterVerdict.PASSES
    assert verdict({"other"}) is FilterVerdict.CONSUMER_EXCLUDES
    assert evaluate_filters("e", frozenset({"internal"}), consumer=consumer) is FilterVerdict.PASSES


def test_updates_fold_idempotently_and_removals_undo_additions() -> None:
    update: list[FilterCriterion] = [EVERYTHING, IncludeTopics({"a/#"})]
    once = Filter.of(update)
    assert once.updated(update) == once
    assert once.updated(update) is once  # nothing changed: the same value, nothing rebuilt
    undone = once.updated([RemoveExcludeRegexEntityIds({".*"}), RemoveIncludeTopics({"a/#"})])
    assert undone == Filter()


def test_an_update_replays_what_it_newly_includes_by_id_from_its_seq_nr() -> None:
    filter_ = Filter.of([EVERYTHING, IncludeEntityIds({"a"}, seq_nr=1)])
    assert Filter().replays([EVERYTHING, IncludeEntityIds({"a"}, seq_nr=1)]) == (
        EntityReplay("a", 1),
    )
    assert filter_.replays(IncludeEntityIds({"a"}, seq_nr=1)) == ()  # already so
    assert filter_.replays(IncludeEntityIds({"a", "b"}, seq_nr=7)) == (
        EntityReplay("a", 7),  # another seq nr replaces the earlier replay
        EntityReplay("b", 7),
    )
    assert filter_.replays(IncludeEntityIds({"c"}, seq_nr=0)) == ()  # only when needed
    assert filter_.replays(IncludeTopics({"#"})) == ()  # no entity is known by a topic
    assert filter_.replays([IncludeEntityIds({"c"}, 1), RemoveIncludeEntityIds({"c"})]) == ()
    assert filter_.updated(IncludeEntityIds({"a"}, seq_nr=0)).include_entity_ids == {"a": 0}


@pytest.mark.parametrize(
    ("build", "criterion", "value"),
    [
        (lambda: IncludeRegexEntityIds({"(unclosed"}), "IncludeRegexEntityIds", "(unclosed"),
        (lambda: ExcludeRegexEntityIds({"*"}), "ExcludeRegexEntityIds", "*"),
        (lambda: IncludeTopics({"a/#/b"}), "IncludeTopics", "a/#/b"),
        (lambda: IncludeTopics({"a/b#"}), "IncludeTopics", "a/b#"),
        (lambda: IncludeTopics({"a+/b"}), "IncludeTopics", "a+/b"),
        (lambda: IncludeTopics({""}), "IncludeTopics", ""),
        (lambda: IncludeTopics({"a//b"}), "IncludeTopics", "a//b"),
        (lambda: IncludeTopics({"/a"}), "IncludeTopics", "/a"),
        (lambda: IncludeTopics({"a/"}), "IncludeTopics", "a/"),
        (lambda: ExcludeTags("vip"), "ExcludeTags", "vip"),
        (lambda: ExcludeEntityIds({1}), "ExcludeEntityIds", 1),  # type: ignore[arg-type]
        (lambda: IncludeEntityIds({"a"}, seq_nr=-1), "IncludeEntityIds", -1),
        (lambda: IncludeEntityIds({"a"}, seq_nr=MAX_SEQ_NR + 1), "IncludeEntityIds", 2**63),
        (lambda: IncludeEntityIds({"a"}, seq_nr=True), "IncludeEntityIds", True),
        (lambda: Filter(exclude_regexes=frozenset({"("})), "ExcludeRegexEntityIds", "("),
        (lambda: Filter(include_entity_ids={"a": -2}), "IncludeEntityIds", -2),
    ],
)
def test_an_invalid_criterion_is_refused_by_name(
    build: object, criterion: str, value: object
) -> None:
    with pytest.raises(InvalidFilterCriterion) as raised:
        build()  # type: ignore[operator]
    assert isinstance(raised.value, UsageError)
    assert (raised.value.criterion, raised.value.value) == (criterion, value)
    assert str(raised.value).startswith(f"{criterion}: {value!r}: ")


def test_an_update_with_an_invalid_criterion_leaves_the_filter_as_it_was() -> None:
    filter_ = Filter.of([EVERYTHING])
    with pytest.raises(InvalidFilterCriterion, match="IncludeRegexEntityIds"):
        filter_ = filter_.updated([IncludeEntityIds({"a"}, 1), IncludeRegexEntityIds({"["})])
    assert filter_ == Filter.of([EVERYTHING])


def test_an_update_of_something_else_than_criteria_is_refused_whole() -> None:
    filter_ = Filter.of([EVERYTHING])
    with pytest.raises(InvalidFilterCriterion, match="str: 'vip': is not a filter criterion"):
        filter_.updated([IncludeTags({"vip"}), "vip"])  # type: ignore[list-item]
    assert filter_ == Filter.of([EVERYTHING])


def test_removing_what_is_not_there_changes_nothing_whatever_it_is() -> None:
    filter_ = Filter.of([EVERYTHING])
    assert filter_.updated(RemoveIncludeTopics({"a/#/b"})) is filter_


def test_the_persisted_form_is_json_that_rebuilds_the_filter() -> None:
    filter_ = Filter.of(
        [
            EVERYTHING,
            ExcludeTags({"test"}),
            IncludeEntityIds({"b", "a"}, 3),
            IncludeEntityIds({"c"}),
            IncludeTopics({"sport/#"}),
        ]
    )
    text = filter_.to_json()
    assert text == (
        b'{"exclude_tags":["test"],"include_tags":[],"exclude_entity_ids":[],'
        b'"include_entity_ids":{"a":3,"b":3,"c":0},"exclude_regexes":[".*"],'
        b'"include_regexes":[],"include_topics":["sport/#"]}'
    )
    assert Filter.from_json(text) == filter_
    assert Filter.from_data(filter_.to_data()) == filter_


@pytest.mark.parametrize(
    "text",
    [
        b"not json",
        b"[]",
        b'{"exclude_tags":[]}',  # parts missing
        Filter().to_json().replace(b"}", b',"exclude_topics":[]}'),  # a part it does not know
        Filter().to_json().replace(b'"include_tags":[]', b'"include_tags":[1]'),
        Filter().to_json().replace(b'"include_regexes":[]', b'"include_regexes":["("]'),
    ],
)
def test_data_that_is_not_a_stored_filter_is_refused(text: bytes) -> None:
    with pytest.raises(InvalidFilterData) as raised:
        Filter.from_json(text)
    assert isinstance(raised.value, DataError)
