"""What the offset store contract tests are given (`StoreUnderTest`) and what they build with
it: events in the store's journal, trackers that handle them, and a lease clock they move."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import attrs

from fluvial.core.ids import PersistenceId, SliceRange
from fluvial.core.offset_tracker import OffsetTracker
from fluvial.core.records import EventRecord
from fluvial.journal.api import Journal
from fluvial.projection.api import ConsumerFilterStore, OffsetStore
from fluvial.testing.journal_contract import entity_ids, events

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

# A bug in a store's waiting must fail its test, not hang the suite.
TIMEOUT = 10.0

ENTITY_TYPE = "ContractCounter"
OTHER_ENTITY_TYPE = "ContractOther"
PROJECTION = "contract-projection"
OTHER_PROJECTION = "contract-other-projection"
WINDOW = 5 * 60 * 1_000_000  # microseconds: the runner's default


class ManagedOffsetStore(OffsetStore[T_co], ConsumerFilterStore, Protocol[T_co]):
    """An offset store with the management calls beyond the protocol that the contract
    tests too: `backlog` and `wait_until_caught_up`; and a consumer's filters."""

    async def backlog(self, projection: str, entity_type: str, slices: SliceRange) -> int:
        """How many events of `entity_type` in `slices` are behind the stored offsets."""
        ...

    async def wait_until_caught_up(self, projection: str, slices: SliceRange | None = None) -> None:
        """Return once the stored offsets cover what the journal held at the call."""
        ...


class ManualClock:
    """A lease clock that stands still until a test moves it: give it to the store under
    test as its `clock`."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        """The current time, in seconds."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock `seconds` on."""
        self.now += seconds


@attrs.frozen
class StoreUnderTest(Generic[T]):
    """An empty offset store and what the contract needs to test it.

    - `store`: the store, with `clock` as its lease clock.
    - `journal`: the journal whose events the store's management calls read (`skip_event`,
      `set_offset`, `backlog`, `wait_until_caught_up`); the tests append to it.
    - `note(text)`: an exactly-once write through the store's transaction that records `text`
      in a read model (usable as a migration, too); `clear_notes`, a write that empties it;
      `notes()`, the texts that read model holds now (committed writes only), in order.
    """

    store: ManagedOffsetStore[T]
    journal: Journal
    clock: ManualClock
    note: Callable[[str], Callable[[T], None]]
    clear_notes: Callable[[T], None]
    notes: Callable[[], Awaitable[list[str]]]


# What the contract's tests take: their T is the store's, which they never look into.
Fixture = StoreUnderTest[Any]


class _UserError(Exception):
    """What a failing write or migration of the contract tests raises: a user's exception, not
    fluvial's (so private: the error-hierarchy rule is for fluvial's own)."""


async def append(journal: Journal, pid: PersistenceId, first: int, count: int) -> list[EventRecord]:
    """Append events `first` .. `first + count - 1` of `pid`, as stored."""
    return list(await journal.append(events(pid, first, count)))


def pids_in(slices: SliceRange, count: int) -> list[PersistenceId]:
    """`count` entities of ENTITY_TYPE whose slices are in `slices`."""
    return entity_ids(ENTITY_TYPE, slices, count)


def handled(tracker: OffsetTracker, records: Iterable[EventRecord]) -> OffsetTracker:
    """`tracker` after handling `records`, delivered by the query (which moves the slice
    offsets), as the runner records them."""
    for record in records:
        tracker.accept(record)
        tracker.passed(record)
    return tracker


async def load(fixture: Fixture, slices: SliceRange | None = None) -> OffsetTracker:
    """The tracker of PROJECTION over `slices` (default: all), as an instance loads it."""
    return await fixture.store.load(PROJECTION, slices or SliceRange.all(), window=WINDOW)


async def save_handled(fixture: Fixture, records: Sequence[EventRecord]) -> OffsetTracker:
    """Load PROJECTION, handle `records` and save: the tracker after the save."""
    tracker = handled(await load(fixture), records)
    await fixture.store.save(PROJECTION, tracker.slices, tracker.take_changes())
    return tracker
