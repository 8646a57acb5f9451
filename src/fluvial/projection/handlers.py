"""How a projection hands envelopes to user code, and what happens when that code fails.

Four kinds, typed over the event type:
- `ExactlyOnce`: a synchronous function that writes through the SQLite connection it is given;
  its writes and the offsets commit in one transaction, so each event is applied exactly once.
  It runs in the writer thread and may be run again if the transaction is retried, so it must
  do nothing but write through that connection.
- `GroupedExactlyOnce`: the same for a group of envelopes at once.
- `AtLeastOnce`: an async function per envelope; offsets are saved every `save_every` envelopes
  or `save_after` seconds, so after a crash the envelopes since the last save come again.
- `GroupedAtLeastOnce`: an async function per group.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import attrs

from fluvial.core.errors import UsageError
from fluvial.core.records import EventEnvelope

E = TypeVar("E")


_positive_int = attrs.validators.gt(0)
_positive_float = attrs.validators.gt(0.0)


@attrs.frozen
class ExactlyOnce(Generic[E]):
    handle: Callable[[sqlite3.Connection, EventEnvelope[E]], None]


@attrs.frozen
class GroupedExactlyOnce(Generic[E]):
    handle: Callable[[sqlite3.Connection, Sequence[EventEnvelope[E]]], None]
    max_size: int = attrs.field(default=500, validator=_positive_int)
    max_wait: float = attrs.field(default=0.5, validator=_positive_float)


@attrs.frozen
class AtLeastOnce(Generic[E]):
    handle: Callable[[EventEnvelope[E]], Awaitable[None]]
    save_every: int = attrs.field(default=100, validator=_positive_int)
    save_after: float = attrs.field(default=1.0, validator=_positive_float)


@attrs.frozen
class GroupedAtLeastOnce(Generic[E]):
    handle: Callable[[Sequence[EventEnvelope[E]]], Awaitable[None]]
    max_size: int = attrs.field(default=500, validator=_positive_int)
    max_wait: float = attrs.field(default=0.5, validator=_positive_float)


Handler = ExactlyOnce[E] | GroupedExactlyOnce[E] | AtLeastOnce[E] | GroupedAtLeastOnce[E]


@attrs.frozen
class RecoveryStrategy:
    """What to do when the handler raises: retry `retries` times (with backoff), then fail
    (the projection instance restarts from its stored offset) or skip (log a warning, mark
    the envelopes handled and go on)."""

    retries: int = 0
    skip: bool = False

    @classmethod
    def fail(cls) -> RecoveryStrategy:
        return cls()

    @classmethod
    def retry_and_fail(cls, retries: int) -> RecoveryStrategy:
        return cls(retries=retries)

    @classmethod
    def retry_and_skip(cls, retries: int) -> RecoveryStrategy:
        return cls(retries=retries, skip=True)

    def __attrs_post_init__(self) -> None:
        if self.retries < 0:
            raise UsageError(f"retries must be >= 0: {self.retries}")


@attrs.frozen
class Backoff:
    """Exponential backoff on the trio clock: `min`, `min*factor`, … capped at `max`.

    Used between handler retries and between restarts of a failed projection instance;
    `max_restarts` (None: no limit) restarts in a row make `serve_projection` raise.
    """

    min: float = 0.2
    max: float = 10.0
    factor: float = 2.0
    max_restarts: int | None = None

    def delay(self, attempt: int) -> float:
        """The delay before retry number `attempt` (0-based)."""
        return float(min(self.max, self.min * self.factor**attempt))
