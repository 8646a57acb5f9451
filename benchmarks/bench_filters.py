"""Filter evaluation, events/s: a filter with 1,000 entity-id criteria, 100 regexes and 100
topic expressions, against evaluating nothing, in one run.

The events are 100,000 of 20,000 entities, half of them with a topic tag. Two filters:

- "only includes": exclude everything (`.*`), include 1,000 entity ids, 100 entity-id regexes
  and 100 topic expressions; about 10% of the events pass. Each excluded event goes through
  every include.
- "excludes": exclude 1,000 entity ids and 100 regexes, include 100 topic expressions: every
  event goes through the combined exclude regex.

The baseline is the same loop over the events calling a function that evaluates nothing
(returns True); the loop without a call and the empty filter are shown beside it. Two
more rows show what the compiled forms save: the 100 regexes as 100 `re.fullmatch` calls
instead of one combined regex, and the 100 topic expressions as 100 regexes instead of one tree.
The last row is the cost of one update of the big filter (it rebuilds its compiled form).

Run: .venv/bin/python benchmarks/bench_filters.py   (or `just bench-filters`)
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from _table import print_table

from fluvial import (
    ExcludeEntityIds,
    ExcludeRegexEntityIds,
    Filter,
    IncludeEntityIds,
    IncludeRegexEntityIds,
    IncludeTopics,
)

EVENTS = 100_000
ENTITIES = 20_000
ROUNDS = 3  # the best of: the machine is noisy


def _events() -> list[tuple[str, frozenset[str]]]:
    events = []
    for i in range(EVENTS):
        n = (i * 7919) % ENTITIES  # entities interleaved, as in a stream
        kind = ("cart", "order", "vip", "device")[n % 4]
        tags = {"prod", f"shard-{n % 8}"}
        if n % 2:
            tags.add(f"t:region/r{n % 500}/site{n % 13}")
        events.append((f"{kind}-{n}", frozenset(tags)))
    return events


# Regexes over entity ids that are all of the same shape as the events': each must be tried.
_REGEXES = {f"vip-{k}0[0-9]" for k in range(100)}
_TOPICS = {f"region/r{k}/+" for k in range(50)} | {f"region/r{k}/site1/#" for k in range(50, 100)}
_IDS = {f"cart-{4 * k}" for k in range(1000)}

ONLY_INCLUDES = Filter.of(
    [
        ExcludeRegexEntityIds({".*"}),
        IncludeEntityIds(_IDS, seq_nr=1),
        IncludeRegexEntityIds(_REGEXES),
        IncludeTopics(_TOPICS),
    ]
)
EXCLUDES = Filter.of(
    [ExcludeEntityIds(_IDS), ExcludeRegexEntityIds(_REGEXES), IncludeTopics(_TOPICS)]
)


def _rate(
    evaluate: Callable[[str, frozenset[str]], object], events: list[tuple[str, frozenset[str]]]
) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for entity_id, tags in events:
            evaluate(entity_id, tags)
        best = min(best, time.perf_counter() - started)
    return len(events) / best


def _nothing(entity_id: str, tags: frozenset[str]) -> object:
    return True


def _bare_loop(events: list[tuple[str, frozenset[str]]]) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _entity_id, _tags in events:
            pass
        best = min(best, time.perf_counter() - started)
    return len(events) / best


def _one_by_one_regexes() -> Callable[[str, frozenset[str]], object]:
    fullmatches = [re.compile(p, re.DOTALL).fullmatch for p in sorted(_REGEXES)]
    return lambda entity_id, tags: any(m(entity_id) for m in fullmatches)


def _one_regex_per_topic() -> Callable[[str, frozenset[str]], object]:
    def as_regex(expression: str) -> str:
        levels = expression.split("/")
        body = "/".join("[^/]*" if lvl == "+" else re.escape(lvl) for lvl in levels if lvl != "#")
        return f"{body}(?:/.*)?" if levels[-1] == "#" else body

    fullmatches = [re.compile(as_regex(e), re.DOTALL).fullmatch for e in sorted(_TOPICS)]
    return lambda entity_id, tags: any(
        m(tag[2:]) for tag in tags if tag.startswith("t:") for m in fullmatches
    )


def _update_cost() -> float:
    rounds = 200
    started = time.perf_counter()
    for i in range(rounds):
        ONLY_INCLUDES.updated(IncludeEntityIds({f"new-{i}"}))
    return (time.perf_counter() - started) / rounds


def main() -> None:
    events = _events()
    passing = sum(ONLY_INCLUDES.matches(e, t) for e, t in events) / len(events)
    baseline = _rate(_nothing, events)
    rows: list[list[object]] = []

    def row(name: str, rate: float) -> None:
        rows.append([name, rate, baseline, f"{rate / baseline:.3f}"])

    row("the loop alone (no call)", _bare_loop(events))
    row("empty filter", _rate(Filter().matches, events))
    row(f"only includes ({passing:.0%} pass)", _rate(ONLY_INCLUDES.matches, events))
    row("excludes (1,000 ids + 100 regexes) + 100 topics", _rate(EXCLUDES.matches, events))
    row("  for comparison: 100 regexes one by one", _rate(_one_by_one_regexes(), events))
    row("  for comparison: combined regexes alone", _rate(_combined_alone(), events))
    row("  for comparison: 100 topics as 100 regexes", _rate(_one_regex_per_topic(), events))
    row("  for comparison: topic tree alone", _rate(_topics_alone(), events))
    print_table(
        f"filter evaluation, events/s ({EVENTS:,} events, best of {ROUNDS})",
        ["what is evaluated", "events/s", "evaluating nothing (a call returning True)", "ratio"],
        rows,
    )
    print(f"\n  one update of the 'only includes' filter: {_update_cost() * 1e6:,.0f} us")


def _combined_alone() -> Callable[[str, frozenset[str]], object]:
    only_regexes = Filter.of([ExcludeRegexEntityIds({".*"}), IncludeRegexEntityIds(_REGEXES)])
    return only_regexes.matches


def _topics_alone() -> Callable[[str, frozenset[str]], object]:
    only_topics = Filter.of([ExcludeRegexEntityIds({".*"}), IncludeTopics(_TOPICS)])
    return only_topics.matches


if __name__ == "__main__":
    main()
