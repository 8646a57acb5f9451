"""Entity-id regexes: Python `re` patterns that must match a whole entity id.

Patterns are compiled with `re.DOTALL`, so that ``.`` matches every character and ``.*``
matches every entity id (the filter's "exclude everything"), newlines included. A set of
patterns is matched as one combined regex, ``(?:p1)|(?:p2)|...``, which `re.fullmatch`
answers in one call: a whole-string match of an alternation is a whole-string match of one
of its branches, because the engine backtracks into the next branch when one cannot reach
the end. Patterns whose meaning would change inside the combination stay on their own:
those with numbered back references or conditionals (``\\1``, ``(?(1)...)``: numbers shift),
named groups (two patterns may use the same name), or global inline flags (``(?i)`` must
open the whole regex).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

FLAGS = re.DOTALL
# `.*` under DOTALL matches every string: the matcher answers it without running a regex.
MATCH_ALL = ".*"
# Syntax that refers to groups by number (back references, conditionals): conservative, so a
# literal backslash followed by a digit keeps its pattern out of the combination too.
_REFERS_TO_GROUPS = re.compile(r"\\[1-9]|\(\?\(")


def regex_error(pattern: str) -> str | None:
    """Why `pattern` is not a valid entity-id regex, or None if it is one."""
    if not isinstance(pattern, str):
        return f"a regex is a string, not {type(pattern).__name__}"
    try:
        re.compile(pattern, FLAGS)
    except re.error as error:
        return f"invalid regex: {error}"
    except (OverflowError, RecursionError) as error:  # too deeply nested or too large for re
        return f"invalid regex: {error!r}"
    return None


def _combinable(pattern: str) -> bool:
    if re.compile(pattern, FLAGS).groupindex or _REFERS_TO_GROUPS.search(pattern):
        return False
    try:
        re.compile(f"(?:{pattern})", FLAGS)
    except re.error:  # a global inline flag that must stay at the start
        return False
    return True


def _always(text: str) -> bool:
    return True


class RegexMatcher:
    """Answers whether some pattern of a set fully matches a string; built once per set.

    The patterns must be valid (`regex_error`). One combined regex holds those that keep their
    meaning in it (see the module docstring); the others are tried one by one after it.
    `matches` is chosen when the matcher is built: ``.*`` answers without a regex, and a set
    that combines whole is the combined regex's own `fullmatch` (a match object is true).
    """

    __slots__ = ("_combined", "_separate", "matches")

    def __init__(self, patterns: Iterable[str]) -> None:
        patterns = sorted(set(patterns))
        combinable = [p for p in patterns if _combinable(p)]
        separate = [re.compile(p, FLAGS).fullmatch for p in patterns if p not in combinable]
        combined: Callable[[str], object] | None = None
        if combinable:
            try:
                combined = re.compile("|".join(f"(?:{p})" for p in combinable), FLAGS).fullmatch
            except (re.error, OverflowError, RecursionError):
                separate = [re.compile(p, FLAGS).fullmatch for p in patterns]
        self._combined = combined
        self._separate = tuple(separate)
        self.matches: Callable[[str], object]
        """Whether some pattern matches the whole of a string: a true value if one does."""
        if MATCH_ALL in patterns:
            self.matches = _always
        elif combined is not None and not separate:
            self.matches = combined
        else:
            self.matches = self._matches_one_by_one

    def _matches_one_by_one(self, text: str) -> bool:
        if self._combined is not None and self._combined(text) is not None:
            return True
        return any(fullmatch(text) is not None for fullmatch in self._separate)
