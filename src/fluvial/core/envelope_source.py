"""Which path of a projection's source delivered an event: a value of the core's event model.

Its own module so that both the envelope handlers receive (`fluvial.core.records`) and the
offset tracker, whose verdicts depend on it (`fluvial.core.offset_tracker`), can name it.
"""

from __future__ import annotations

import enum


class EnvelopeSource(enum.Enum):
    """Which of the source's paths delivered an envelope (the verdicts depend on it)."""

    QUERY = "query"  # the timestamp-ordered events-by-slices query
    BACKTRACKING = "backtracking"  # a second query behind the first, for late commits
    LIVE = "live"  # published in-process right after commit
    REPLAY = "replay"  # read by persistence id to fill a gap
