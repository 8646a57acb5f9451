"""`projection_lag` on each journal (memory, SQLite, PostgreSQL in a fresh schema of `test`)
with its own offset store: per slice-range instance, the stored offset's timestamp against the
journal's latest event timestamp, before any event, before the projection has stored an
offset, once it has caught up, and with new events it has not handled yet."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from fluvial import (
    AtLeastOnce,
    EventEnvelope,
    EventRecord,
    InstanceLag,
    Projection,
    SerializerRegistry,
    SliceRange,
    SourceSettings,
    UnknownProjection,
    UsageError,
    projection_lag,
    serve_projection,
    slice_ranges,
)
from fluvial.journal.postgres import PostgresJournal, open_postgres_journal
from fluvial.journal.sqlite import SqliteJournal, open_sqlite_journal
from fluvial.projection.api import Batch, SourceProvider
from fluvial.testing import MemoryJournal
from fluvial.testing.journal_contract import entity_ids
from postgres_server import DSN, postgres_schema

__all__ = ["postgres_schema"]  # the fixture, imported for pytest

TIMEOUT = 20.0
ENTITY_TYPE = "Lagging"
LOW, HIGH = slice_ranges(2)
Journal = MemoryJournal | SqliteJournal | PostgresJournal


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def open_journal(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[[], AbstractAsyncContextManager[Journal]]:
    if request.param == "memory":

        @contextlib.asynccontextmanager
        async def memory() -> AsyncIterator[Journal]:
            yield MemoryJournal()

        return memory
    if request.param == "sqlite":
        return lambda: open_sqlite_journal(tmp_path / "journal.db")
    schema = request.getfixturevalue("postgres_schema")  # skips (or fails in CI) without a server
    return lambda: open_postgres_journal(DSN, schema=schema, poll_interval=0.05)


async def _ignore(envelope: EventEnvelope[Any]) -> None:
    pass


# Saving every event: what the instance handled is what its stored offset says.
COUNTING = Projection[Any](
    name="counting",
    entity_type=ENTITY_TYPE,
    handler=AtLeastOnce(_ignore, save_every=1),
    source=SourceSettings(backtracking_interval=None),
)


@attrs.frozen
class Noted:
    n: int


REGISTRY = SerializerRegistry()
REGISTRY.register(Noted, "lag.Noted")


async def _append(journal: Journal, slices: SliceRange, first: int) -> Sequence[EventRecord]:
    """Two events of each of two entities in `slices`, from seq nr `first`."""
    stored: list[EventRecord] = []
    for pid in entity_ids(ENTITY_TYPE, slices, 2):
        stored += await journal.append(
            [
                EventRecord(
                    str(pid), seq_nr, ENTITY_TYPE, pid.slice, REGISTRY.encode(Noted(seq_nr))
                )
                for seq_nr in (first, first + 1)
            ]
        )
    return stored


async def _run_until_caught_up(journal: Journal) -> None:
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for slices in (LOW, HIGH):
                await nursery.start(serve_projection, journal, REGISTRY, COUNTING, slices)
            await journal.offset_store().wait_until_caught_up(COUNTING.name)
            nursery.cancel_scope.cancel()


async def test_the_lag_of_each_instance_is_its_stored_offset_behind_the_latest_event(
    open_journal: Callable[[], AbstractAsyncContextManager[Journal]],
) -> None:
    async with open_journal() as journal:
        await journal.offset_store().register(COUNTING.name, ENTITY_TYPE)
        # No events: nothing to be behind.
        assert await projection_lag(journal, COUNTING, [LOW, HIGH]) == [
            InstanceLag(slices=LOW, offset_timestamp=None, latest_timestamp=None),
            InstanceLag(slices=HIGH, offset_timestamp=None, latest_timestamp=None),
        ]
        assert [lag.lag_seconds for lag in await projection_lag(journal, COUNTING)] == [0.0]

        low = await _append(journal, LOW, 1)
        high = await _append(journal, HIGH, 1)
        # Events, no offset yet: behind all of them, by no measure of time.
        before = await projection_lag(journal, COUNTING, [LOW, HIGH])
        assert [(lag.offset_timestamp, lag.latest_timestamp) for lag in before] == [
            (None, low[-1].timestamp),
            (None, high[-1].timestamp),
        ]
        assert [lag.lag_seconds for lag in before] == [None, None]

        await _run_until_caught_up(journal)
        caught_up = await projection_lag(journal, COUNTING, [LOW, HIGH])
        assert caught_up == [
            InstanceLag(
                slices=LOW, offset_timestamp=low[-1].timestamp, latest_timestamp=low[-1].timestamp
            ),
            InstanceLag(
                slices=HIGH,
                offset_timestamp=high[-1].timestamp,
                latest_timestamp=high[-1].timestamp,
            ),
        ]
        assert [lag.lag_seconds for lag in caught_up] == [0.0, 0.0]

        # New events in one range, not handled yet: that instance is behind by their time.
        later = await _append(journal, HIGH, 3)
        behind = await projection_lag(journal, COUNTING, [LOW, HIGH, SliceRange.all()])
        assert behind[0] == caught_up[0]
        assert (behind[1].offset_timestamp, behind[1].latest_timestamp) == (
            high[-1].timestamp,
            later[-1].timestamp,
        )
        expected = (later[-1].timestamp - high[-1].timestamp) / 1_000_000
        assert behind[1].lag_seconds == expected > 0
        # One instance over all slices would be where the newest stored offset is.
        assert behind[2].lag_seconds == expected


async def test_an_unknown_projection_and_a_source_that_cannot_tell_are_refused(
    open_journal: Callable[[], AbstractAsyncContextManager[Journal]],
) -> None:
    async with open_journal() as journal:
        with pytest.raises(UnknownProjection):
            await projection_lag(journal, COUNTING)
        await journal.offset_store().register(COUNTING.name, ENTITY_TYPE)
        with pytest.raises(UsageError, match=r"_Blind.*latest event timestamp"):
            await projection_lag(_Blind(), COUNTING, offsets=journal.offset_store())


class _BlindSource:
    """A source without `latest_event_timestamp`."""

    first_sight: Any = None

    async def run(
        self, offset: Any, send: trio.MemorySendChannel[Batch], *, task_status: Any = None
    ) -> None:
        raise NotImplementedError

    async def replay(self, persistence_id: str, from_seq_nr: int, to_seq_nr: int) -> list[Any]:
        raise NotImplementedError

    async def load_event(self, persistence_id: str, seq_nr: int) -> None:
        raise NotImplementedError

    async def event_timestamp(self, persistence_id: str, seq_nr: int) -> None:
        raise NotImplementedError


class _Blind(SourceProvider):
    def source(self, entity_type: str, slices: SliceRange, settings: SourceSettings) -> Any:
        return _BlindSource()
