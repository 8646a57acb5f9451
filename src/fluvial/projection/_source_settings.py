"""How a projection reads the local journal: page size, backtracking, live path."""

from __future__ import annotations

import attrs


@attrs.frozen
class SourceSettings:
    """`page_size` events per query; backtracking every `backtracking_interval` seconds over
    the `backtracking_span` seconds of event time behind the query (None: off); `live`
    subscribes to the in-process live path, buffering at most `live_buffer` events.

    An exactly-once handler commits one page per transaction while it catches up, and each
    commit also writes the offsets of every slice the page touched; 4,000 events a page
    amortize that: benchmarks/bench_projection.py measured ~49,000 events/s at 1,000, ~55,000
    at 2,000 and ~62,000 at 4,000. Events arriving live come in small batches regardless."""

    page_size: int = 4000
    backtracking_interval: float | None = 5.0
    backtracking_span: float = 2.0
    live: bool = True
    live_buffer: int = 10_000
