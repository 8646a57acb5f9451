"""How a projection hands envelopes to user code, and what happens when that code fails.

Four kinds, typed over the event type `E`; the exactly-once ones also over `T`, the type of
the offset store's transaction that they write through (`sqlite3.Connection` for the SQLite
store). `T` is contravariant and defaults to `object`: a handler of `T = object` (or an
at-least-once projection, which writes through none) runs on any store, and `serve_projection`
refuses, for mypy, a projection whose `T` is not its store's.
- `ExactlyOnce`: a synchronous function that writes through the store's transaction it is
  given; its writes and the offsets commit in one transaction, so each event is applied
  exactly once. It runs once per attempt (a retry after it raised runs it again), in a
  transaction of its own (on SQLite in the writer thread, after the appends handed over with
  it), so it must do nothing but write through that transaction. `migrations` create and
  migrate the tables it writes (see `OffsetStore.migrate_read_model`).
- `GroupedExactlyOnce`: the same for a group of envelopes at once.
- `AtLeastOnce`: an async function per envelope; offsets are saved every `save_every` envelopes
  or `save_after` seconds, so after a crash the envelopes since the last save come again.
- `GroupedAtLeastOnce`: an async function per group.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Generic, TypeAlias, TypeVar

import attrs
from typing_extensions import TypeVar as TypeVarWithDefault

from fluvial.core.errors import UsageError
from fluvial.core.records import EventEnvelope

E = TypeVar("E")
# The offset store's transaction that exactly-once handlers and their migrations write through.
T = TypeVarWithDefault("T", contravariant=True, default=object)

Migration: TypeAlias = Callable[[T], None]


def _migrations(migrations: Iterable[Migration[T]]) -> tuple[Migration[T], ...]:
    return tuple(migrations)


_positive_int = attrs.validators.gt(0)
_positive_float = attrs.validators.gt(0.0)


@attrs.frozen
class ExactlyOnce(Generic[E, T]):
    """`handle(txn, envelope)` writes the read model for one envelope through `txn`, the
    transaction that stores the offsets (a `sqlite3.Connection` on the SQLite store).
    `migrations` create and migrate its tables: the instance runs those the store has not run
    yet (in order, once per store) before it starts; on SQLite a sqlite3 error of one comes
    out of `serve_projection` as ReadModelMigrationFailed."""

    handle: Callable[[T, EventEnvelope[E]], None]
    migrations: tuple[Migration[T], ...] = attrs.field(default=(), converter=_migrations)


@attrs.frozen
class GroupedExactlyOnce(Generic[E, T]):
    """`handle(txn, envelopes)` for up to `max_size` envelopes, collected for at most
    `max_wait` seconds after the first; otherwise as `ExactlyOnce`."""

    handle: Callable[[T, Sequence[EventEnvelope[E]]], None]
    max_size: int = attrs.field(default=500, validator=_positive_int)
    max_wait: float = attrs.field(default=0.5, validator=_positive_float)
    migrations: tuple[Migration[T], ...] = attrs.field(default=(), converter=_migrations)


@attrs.frozen
class AtLeastOnce(Generic[E]):
    """`await handle(envelope)` per envelope; the offsets are saved every `save_every`
    envelopes, `save_after` seconds after the first unsaved one, and when the instance is
    cancelled (a clean stop), so envelopes come again only after a crash or a failure."""

    handle: Callable[[EventEnvelope[E]], Awaitable[None]]
    save_every: int = attrs.field(default=100, validator=_positive_int)
    save_after: float = attrs.field(default=1.0, validator=_positive_float)


@attrs.frozen
class GroupedAtLeastOnce(Generic[E]):
    """`await handle(envelopes)` for up to `max_size` envelopes, collected for at most
    `max_wait` seconds after the first; the offsets are saved after each group."""

    handle: Callable[[Sequence[EventEnvelope[E]]], Awaitable[None]]
    max_size: int = attrs.field(default=500, validator=_positive_int)
    max_wait: float = attrs.field(default=0.5, validator=_positive_float)


Handler: TypeAlias = (
    ExactlyOnce[E, T] | GroupedExactlyOnce[E, T] | AtLeastOnce[E] | GroupedAtLeastOnce[E]
)


@attrs.frozen
class RecoveryStrategy:
    """What to do when the handler raises: retry `retries` times (with backoff), then fail
    (the projection instance restarts from its stored offset) or skip (log a warning, mark
    the envelopes handled and go on)."""

    retries: int = 0
    skip: bool = False

    @classmethod
    def fail(cls) -> RecoveryStrategy:
        """No retry: the first failure restarts the instance (the default)."""
        return cls()

    @classmethod
    def retry_and_fail(cls, retries: int) -> RecoveryStrategy:
        """Retry the envelope `retries` times with backoff, then restart the instance."""
        return cls(retries=retries)

    @classmethod
    def retry_and_skip(cls, retries: int) -> RecoveryStrategy:
        """Retry the envelope `retries` times with backoff, then log a warning, count it as
        handled and go on: the one way an event is skipped, and only on purpose."""
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
