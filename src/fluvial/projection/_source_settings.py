"""How a projection reads the local journal: page size, reading behind current time,
backtracking, live path."""

from __future__ import annotations

import attrs


@attrs.frozen
class SourceSettings:
    """`page_size` events per query; backtracking every `backtracking_interval` seconds (None:
    off); `live` subscribes to the in-process live path, buffering at most `live_buffer`
    events.

    The backtracking query reads without payloads, from `backtracking_span` seconds of event
    time behind where the query resumed, on up to the query's position, and never more than
    `backtracking_span` behind it (it skips ahead when it falls further behind, e.g. while the
    query catches up on old events, which no late commit can be among, once it has read the
    span behind where the query resumed).

    For a journal with concurrent writers (`fluvial.journal.api.HasConcurrentWriters`:
    PostgreSQL) the query reads only events at least `behind_current_time` seconds older than
    the journal's clock, so that most transactions that took an earlier timestamp have
    committed when it passes; the backtracking query reads only those at least
    `backtracking_behind_current_time` seconds older, so it finds every event whose
    transaction committed within that time of taking its timestamp. Keep
    `backtracking_span` above `backtracking_behind_current_time + backtracking_interval` (what
    a restart's backtracking must cover again), and the projection's `window` above
    `backtracking_span` (the first-sight rule, docs/projections.md). Journals whose timestamps
    are commit order (SQLite, memory) read up to the newest event: there backtracking finds
    only duplicates, and `backtracking_interval=None` saves its reads. The defaults are the
    reference system's.

    An exactly-once handler commits one page per transaction while it catches up, and each
    commit also writes the offsets of every slice the page touched; 4,000 events a page
    amortize that: benchmarks/bench_projection.py measured ~49,000 events/s at 1,000, ~55,000
    at 2,000 and ~62,000 at 4,000. Events arriving live come in small batches regardless.

    `follow_delay`: with the live path on, the query, once it has caught up, waits this many
    seconds after a commit wakes it before it reads, so that it reads the commits of that
    time in one page instead of one page per commit (each of which it reads only again: the
    live path delivered them). The offsets move that much later; an event the live path
    dropped arrives that much later. 0: it reads at each commit."""

    page_size: int = 4000
    backtracking_interval: float | None = 5.0
    backtracking_span: float = 120.0
    behind_current_time: float = 0.1
    backtracking_behind_current_time: float = 10.0
    live: bool = True
    live_buffer: int = 10_000
    follow_delay: float = attrs.field(default=0.05, validator=attrs.validators.ge(0.0))
