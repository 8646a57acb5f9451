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
matched literally. Topics themselves are tags and are not checked: a tag ``"t:a//b"`` has an
empty middle level, which ``a/+/b`` matches. Unlike MQTT, topics starting with ``$`` are not
special.
"""

from __future__ import annotations

from collections.abc import Iterable

TOPIC_TAG_PREFIX = "t:"
SEPARATOR = "/"
ONE_LEVEL = "+"
REST = "#"


def topic_expression_error(expression: str) -> str | None:
    """Why `expression` is not a valid topic expression, or None if it is one."""
    if not isinstance(expression, str):
        return f"a topic expression is a string, not {type(expression).__name__}"
    levels = expression.split(SEPARATOR)
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
    whether an expression ends here (`ends`) or ends here with ``#`` (`rest`)."""

    __slots__ = ("children", "ends", "one_level", "rest")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.one_level: _Node | None = None
        self.ends = False
        self.rest = False


class TopicMatcher:
    """Matches topics against a set of valid topic expressions, built once per set.

    The expressions share a tree of levels, so matching a topic walks its levels once, in
    time proportional to its depth times the wildcard branches that stay open, whatever the
    number of expressions. Checking the expressions is the caller's (`topic_expression_error`);
    a matcher never changes once built.
    """

    __slots__ = ("_root",)

    def __init__(self, expressions: Iterable[str]) -> None:
        self._root = _Node()
        for expression in expressions:
            node = self._root
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

    def matches(self, topic: str) -> bool:
        """Whether some expression matches `topic` (a topic, without the tag prefix)."""
        nodes = [self._root]
        for level in topic.split(SEPARATOR):
            below: list[_Node] = []
            for node in nodes:
                if node.rest:
                    return True
                child = node.children.get(level)
                if child is not None:
                    below.append(child)
                if node.one_level is not None:
                    below.append(node.one_level)
            if not below:
                return False
            nodes = below
        # Every level matched: an expression ends here, or goes on with `#` (its parent level).
        return any(node.ends or node.rest for node in nodes)

    def matches_tags(self, tags: Iterable[str]) -> bool:
        """Whether some expression matches one of the topics among `tags`."""
        prefix, start = TOPIC_TAG_PREFIX, len(TOPIC_TAG_PREFIX)
        return any(tag.startswith(prefix) and self.matches(tag[start:]) for tag in tags)
