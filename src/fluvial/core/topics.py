"""Topics: MQTT-style expressions over the topic tags of events.

An event's topics are its tags that start with `TOPIC_TAG_PREFIX` (``"t:"``), without the
prefix: the tag ``"t:sport/tennis/final"`` is the topic ``sport/tennis/final``. A topic is a
path of levels separated by ``/``. A topic expression is such a path too, where a level may be
a wildcard:

- ``+`` matches exactly one level, whatever it holds (``sport/+/final`` matches
  ``sport/tennis/final``, not ``sport/final`` nor ``sport/tennis/semi/final``);
- ``#`` matches the parent level and every level below it, so it may only be the last level
  (``sport/#`` matches ``sport``, ``sport/tennis`` and ``sport/tennis/final``; ``#`` alone
  matches every topic).

A wildcard is a whole level: ``sport+`` and ``sport/ten#`` are invalid, as are an expression
with ``#`` before its last level and one with an empty level (``""``, ``/sport``, ``sport/``,
``sport//final``): an empty level in an expression is refused as a likely mistake rather than
matched literally. An expression has at most `MAX_LEVELS` (100) levels. Topics themselves are
tags and are not checked: a tag ``"t:a//b"`` has an empty middle level, which ``a/+/b``
matches. Unlike MQTT, topics starting with ``$`` are not special.
"""

from __future__ import annotations

import os.path
import re
from collections.abc import Iterable

TOPIC_TAG_PREFIX = "t:"
SEPARATOR = "/"
ONE_LEVEL = "+"
REST = "#"
# An expression of more levels is refused: the matcher's regex nests once per level, and `re`
# cannot compile a regex nested some hundreds deep.
MAX_LEVELS = 100


def topic_expression_error(expression: str) -> str | None:
    """Why `expression` is not a valid topic expression, or None if it is one."""
    if not isinstance(expression, str):
        return f"a topic expression is a string, not {type(expression).__name__}"
    levels = expression.split(SEPARATOR)
    if len(levels) > MAX_LEVELS:
        return f"a topic expression has at most {MAX_LEVELS} levels, not {len(levels)}"
    for index, level in enumerate(levels):
        if not level:
            return "a topic expression has no empty level"
        if level == REST and index != len(levels) - 1:
            return f"{REST!r} may only be the last level"
        if level not in (ONE_LEVEL, REST) and (ONE_LEVEL in level or REST in level):
            return f"a wildcard ({ONE_LEVEL!r}, {REST!r}) must be a whole level: {level!r}"
    return None


class _Node:
    """One level of the expressions' tree: the literal levels below it, the ``+`` branch, and
    whether an expression ends here (`ends`) or goes on with ``#`` (`rest`)."""

    __slots__ = ("children", "ends", "one_level", "rest")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.one_level: _Node | None = None
        self.ends = False
        self.rest = False


class TopicMatcher:
    """Matches topic tags against a set of valid topic expressions, built once per set.

    The expressions are put in a tree of levels (expressions that share their first levels
    share a branch), and the tree is compiled into one regex whose alternatives follow its
    branches, so that `re` answers a tag in one call, failing a branch at its first level that
    differs, whatever the number of expressions. Checking the expressions is the caller's
    (`topic_expression_error`); a matcher never changes once built.
    """

    __slots__ = ("_fullmatch",)

    def __init__(self, expressions: Iterable[str]) -> None:
        root = _Node()
        for expression in expressions:
            node = root
            for level in expression.split(SEPARATOR):
                if level == REST:
                    node.rest = True
                    break
                if level == ONE_LEVEL:
                    if node.one_level is None:
                        node.one_level = _Node()
                    node = node.one_level
                else:
                    node = node.children.setdefault(level, _Node())
            else:
                node.ends = True
        # The regex matches the whole tag, prefix included, so that a tag is one call.
        prefix = re.escape(TOPIC_TAG_PREFIX)
        try:
            levels, nesting = _levels_regex(root, first=True)
        except _TooDeep:
            nesting = _MAX_NESTING + 1
        if nesting > _MAX_NESTING:
            # Literals that share prefixes at many depths nest too deep for `re`: without the
            # factoring, the nesting is the levels', at most MAX_LEVELS + 1.
            levels, _ = _levels_regex(root, first=True, factor=False)
        regex = re.compile(prefix + levels, re.DOTALL)
        self._fullmatch = regex.fullmatch

    def matches(self, topic: str) -> bool:
        """Whether some expression matches `topic` (a topic, without the tag prefix)."""
        return self._fullmatch(TOPIC_TAG_PREFIX + topic) is not None

    def matches_tags(self, tags: Iterable[str]) -> bool:
        """Whether some expression matches one of the topics among `tags`."""
        fullmatch = self._fullmatch
        for tag in tags:  # noqa: SIM110 -- a loop, not any() over a generator: faster per event
            if fullmatch(tag) is not None:
                return True
        return False


# The deepest nesting of groups the factored regex may have: `re` compiles recursively, about
# two frames per group, so 200 groups stay far below the interpreter's recursion limit whatever
# the caller's stack; a deeper factoring is given up for the flat one (an explicit bound rather
# than a RecursionError, whose threshold would depend on the caller's stack depth and whose cost
# grows with the depth reached before it).
_MAX_NESTING = 2 * MAX_LEVELS


class _TooDeep(Exception):
    """The factoring would nest deeper than `_MAX_NESTING`."""


def _levels_regex(node: _Node, *, first: bool = False, factor: bool = True) -> tuple[str, int]:
    """The regex of what may follow the levels that led to `node` (the whole topic, for the
    root, `first`), with how deep its groups nest: the end of the topic if an expression ends
    there, anything if one goes on with ``#`` (the parent level, or ``/`` and more), otherwise
    ``/`` and one of the levels below. With `factor`, the literal levels below share their
    common leading characters, so that ``re`` leaves a branch at its first character that
    differs instead of trying each; `_TooDeep` if that would nest deeper than `_MAX_NESTING`."""
    if node.rest:
        return (".*", 0) if first else ("(?:/.*)?", 1)
    separator = "" if first else re.escape(SEPARATOR)
    branches: list[tuple[str, int]] = [("", 0)] if node.ends else []
    literals = [
        (level, _levels_regex(child, factor=factor))
        for level, child in sorted(node.children.items())
    ]
    if literals:
        if factor:
            regex, nesting = _factored(literals, depth=0)
            branches.append((separator + regex, nesting))
        else:
            branches += [
                (separator + re.escape(level) + then[0], then[1]) for level, then in literals
            ]
    if node.one_level is not None:
        then, nesting = _levels_regex(node.one_level, factor=factor)
        branches.append((f"{separator}[^{re.escape(SEPARATOR)}]*" + then, nesting))
    return _alternation(branches)


def _factored(literals: list[tuple[str, tuple[str, int]]], *, depth: int) -> tuple[str, int]:
    """The regex of ``literal + then`` for each `(literal, then)` (`then` a regex and its
    nesting), the literals written as a tree of their characters: a common prefix once, then
    the alternatives after it. `depth` is how many groups the calls above opened or may open
    around it; `_TooDeep` before it would pass `_MAX_NESTING`."""
    if depth + max(nesting for _, (_, nesting) in literals) > _MAX_NESTING:
        raise _TooDeep
    branches: list[tuple[str, int]] = []
    by_first: dict[str, list[tuple[str, tuple[str, int]]]] = {}
    for literal, then in literals:
        if literal:
            by_first.setdefault(literal[0], []).append((literal, then))
        else:
            branches.append(then)
    for group in by_first.values():
        if len(group) == 1:
            literal, (only, nesting) = group[0]
            branches.append((re.escape(literal) + only, nesting))
            continue
        # Characters, not path components, are what is shared here.
        prefix = os.path.commonprefix([literal for literal, _ in group])  # noqa: RUF071
        rest = [(literal[len(prefix) :], then) for literal, then in group]
        regex, nesting = _factored(rest, depth=depth + 1)
        branches.append((re.escape(prefix) + regex, nesting))
    return _alternation(branches)


def _alternation(branches: list[tuple[str, int]]) -> tuple[str, int]:
    if not branches:
        return "(?!)", 0  # no expression: nothing matches
    if len(branches) == 1:
        return branches[0]
    nesting = 1 + max(nesting for _, nesting in branches)
    return "(?:" + "|".join(regex for regex, _ in branches) + ")", nesting
