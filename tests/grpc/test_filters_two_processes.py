"""A consumer's dynamic filters between two OS processes over loopback gRPC, each with its own
SQLite file (tests/grpc/filter_processes.py has both; the test drives each through commands on
its standard input): an entity included mid-stream arrives whole, its history then its live
events, exactly once, in order; excluded again, nothing more of it arrives while the offsets
move past its events; a consumer killed with SIGKILL and started again on its file keeps the
filter it stored; an update the producer refuses (a bad regex) leaves the old filter, and the
stream goes on.

The producer appends to the entities of `BACKGROUND` all along; each filtered entity has one of
them in its slice, so that slice's stored offset moving past the filtered entity's events shows
that the consumer went past them (and did not get them)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from consumer_helpers import ORDERED_PROJECTION, applied
from filter_processes import (
    ANSWER,
    BACKGROUND,
    criteria_json,
    filter_of,
    twin_of,
)

from fluvial.core.filters import Filter
from fluvial.core.filters_criteria import (
    ExcludeEntityIds,
    FilterCriterion,
    IncludeEntityIds,
    IncludeRegexEntityIds,
    RemoveIncludeEntityIds,
)
from fluvial.core.ids import slice_for
from fluvial.examples.demo_services import ServiceProcess, running
from producer_fixtures import ENTITY_TYPE

pytestmark = pytest.mark.slow

TESTS = Path(__file__).parents[1]
IMPORT_PATHS = (TESTS, TESTS / "grpc")
TIME_LIMIT = 60  # seconds for a whole test; ~5-10 s on a quiet machine
WAIT = 20  # seconds for one thing to happen in the other process


@asynccontextmanager
async def producing(tmp_path: Path) -> AsyncIterator[ServiceProcess]:
    """The producer process on its file, once it serves."""
    args = ("producer", str(tmp_path / "producer.db"))
    async with running("producer", "filter_processes", *args, import_paths=IMPORT_PATHS) as p:
        await p.wait_until(lambda: p.port is not None, "it served")
        yield p


def consuming(
    tmp_path: Path, producer: ServiceProcess, initial: Sequence[FilterCriterion]
) -> AbstractAsyncContextManager[ServiceProcess]:
    """The consumer process on its file, with `initial` as its initial filter."""
    args = (str(tmp_path / "consumer.db"), str(producer.port), json.dumps(criteria_json(initial)))
    return running("consumer", "filter_processes", "consumer", *args, import_paths=IMPORT_PATHS)


async def ask(service: ServiceProcess, command: dict[str, Any]) -> dict[str, Any]:
    """Send `command` and wait for its answer (one at a time)."""
    seen = len(service.lines)

    def answers() -> list[str]:
        return [line for line in service.lines[seen:] if line.startswith(ANSWER)]

    await service.send_line(json.dumps(command))
    with trio.fail_after(WAIT):
        await service.wait_until(lambda: bool(answers()), f"it answered {command}")
    answered: dict[str, Any] = json.loads(answers()[0].removeprefix(ANSWER))
    return answered


async def append(producer: ServiceProcess, entity_id: str, count: int) -> int:
    """Append `count` events of `entity_id` in the producer; the last one's timestamp."""
    answered = await ask(producer, {"append": entity_id, "count": count})
    timestamp: int = answered["timestamp"]
    return timestamp


async def until(
    holds: Callable[[], bool], what: Callable[[], object], *services: ServiceProcess
) -> None:
    """Until `holds()` (at most `WAIT` s), while every one of `services` runs. Polls: the
    other process's file is the only signal there is."""
    with trio.move_on_after(WAIT):
        while not holds():
            for service in services:
                assert not service.ended, f"the {service.name} exited"
            await trio.sleep(0.02)
        return
    raise AssertionError(f"not in {WAIT} s: {what()}")


async def until_applied(path: Path, consumer: ServiceProcess, **counts: int) -> None:
    """Until each entity named has `count` events applied; then that they are its seq nrs
    1..count, each once, in order."""
    await until(
        lambda: all(len(applied(path).get(e, [])) >= n for e, n in counts.items()),
        lambda: {e: applied(path).get(e) for e in counts},
        consumer,
    )
    await trio.sleep(0.3)  # a duplicate applied late would show now
    now = applied(path)
    for entity_id, count in counts.items():
        assert now[entity_id] == list(range(1, count + 1)), (entity_id, now[entity_id])


def slice_offset(path: Path, entity_id: str) -> int:
    """The consumer's stored offset (a timestamp) in `entity_id`'s slice; 0 for none yet."""
    try:
        connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    except sqlite3.OperationalError:  # not created yet
        return 0
    query = "SELECT timestamp FROM projection_offset WHERE projection_name = ? AND slice = ?"
    try:
        row = connection.execute(
            query, (ORDERED_PROJECTION.name, slice_for(f"{ENTITY_TYPE}|{entity_id}"))
        ).fetchone()
    except sqlite3.OperationalError:  # no table yet
        return 0
    finally:
        connection.close()
    return 0 if row is None else int(row[0])


async def until_past(path: Path, consumer: ServiceProcess, entity_id: str, timestamp: int) -> None:
    """Until the consumer's stored offset of `entity_id`'s slice is past `timestamp` (the
    twin's events move it)."""
    await until(
        lambda: slice_offset(path, entity_id) > timestamp,
        lambda: f"the offset of {entity_id}'s slice {slice_offset(path, entity_id)} <= {timestamp}",
        consumer,
    )


def stored_filter(path: Path) -> Filter | None:
    """The filter the consumer's file holds for the stream."""
    connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        row = connection.execute("SELECT filter FROM consumer_filter").fetchone()
    finally:
        connection.close()
    return None if row is None else Filter.from_json(row[0])


def test_every_filtered_entity_has_a_background_twin_in_its_slice() -> None:
    for entity_id in ("x", "y"):
        assert twin_of(entity_id) in BACKGROUND
        assert slice_for(f"{ENTITY_TYPE}|{twin_of(entity_id)}") == slice_for(
            f"{ENTITY_TYPE}|{entity_id}"
        )


async def test_an_entity_included_mid_stream_arrives_whole_then_live_and_excluded_again_stops(
    tmp_path: Path,
) -> None:
    reports = tmp_path / "consumer.db"
    with trio.fail_after(TIME_LIMIT):
        async with producing(tmp_path) as producer:
            await append(producer, "x", 3)
            async with consuming(tmp_path, producer, [ExcludeEntityIds({"x"})]) as consumer:
                last_excluded = await append(producer, "x", 2)  # mid-stream, still excluded
                await until_past(reports, consumer, "x", last_excluded)
                assert "x" not in applied(reports)
                # Included by id from seq nr 1: no event of it comes live to make the consumer
                # ask, so the producer's replay in the stream is what brings its 5 events.
                answered = await ask(
                    consumer, {"update": criteria_json([IncludeEntityIds({"x"}, seq_nr=1)])}
                )
                assert filter_of(answered) == Filter.of(
                    [ExcludeEntityIds({"x"}), IncludeEntityIds({"x"}, seq_nr=1)]
                )
                await until_applied(reports, consumer, x=5)
                await append(producer, "x", 3)  # live
                await until_applied(reports, consumer, x=8)

                # Excluded again: nothing more of it, while the others' events go on and the
                # offsets move past its events.
                answered = await ask(
                    consumer, {"update": criteria_json([RemoveIncludeEntityIds({"x"})])}
                )
                assert filter_of(answered) == Filter.of(ExcludeEntityIds({"x"}))
                background_before = len(applied(reports)["b"])
                last_excluded = await append(producer, "x", 3)
                await until_past(reports, consumer, "x", last_excluded)
                await trio.sleep(0.3)  # an event of it sent late would show now
                now = applied(reports)
                assert now["x"] == list(range(1, 9))
                assert len(now["b"]) > background_before
                assert now["b"] == list(range(1, len(now["b"]) + 1))
            assert stored_filter(reports) == Filter.of(ExcludeEntityIds({"x"}))


async def test_a_consumer_killed_and_started_again_keeps_the_filter_it_stored(
    tmp_path: Path,
) -> None:
    reports = tmp_path / "consumer.db"
    initial: list[FilterCriterion] = [ExcludeEntityIds({"y"})]
    # Makes the stored filter differ from the initial one in both directions: the initial
    # filter again would let x's events pass and keep y's out.
    update: list[FilterCriterion] = [ExcludeEntityIds({"x"}), IncludeEntityIds({"y"}, seq_nr=1)]
    with trio.fail_after(TIME_LIMIT):
        async with producing(tmp_path) as producer:
            await append(producer, "x", 2)
            await append(producer, "y", 2)
            async with consuming(tmp_path, producer, initial) as consumer:
                await until_applied(reports, consumer, x=2)
                answered = await ask(consumer, {"update": criteria_json(update)})
                assert filter_of(answered) == Filter.of([*initial, *update])
                await until_applied(reports, consumer, x=2, y=2)
                consumer.kill()  # SIGKILL
            # While it is down (the query brings these), and after it is up again (live).
            x_down = await append(producer, "x", 2)
            await append(producer, "y", 2)
            async with consuming(tmp_path, producer, initial) as consumer:  # the same arguments
                await until_applied(reports, consumer, y=4)
                await until_past(reports, consumer, "x", x_down)
                x_live = await append(producer, "x", 1)
                await append(producer, "y", 1)
                await until_applied(reports, consumer, y=5)
                await until_past(reports, consumer, "x", x_live)
                assert applied(reports)["x"] == [1, 2]
                assert filter_of(await ask(consumer, {"filter": None})) == Filter.of(
                    [*initial, *update]
                )


async def test_an_update_the_producer_refuses_leaves_the_old_filter_and_the_stream_goes_on(
    tmp_path: Path,
) -> None:
    reports = tmp_path / "consumer.db"
    initial = Filter.of(ExcludeEntityIds({"x"}))
    with trio.fail_after(TIME_LIMIT):
        async with producing(tmp_path) as producer:
            await append(producer, "x", 2)
            async with consuming(tmp_path, producer, initial.criteria()) as consumer:
                await until(lambda: "b" in applied(reports), lambda: "no event of b", consumer)
                # The consumer's regex is valid; on the wire it is one the producer cannot
                # compile (a consumer whose rules are not the producer's): refused, by it.
                update: list[FilterCriterion] = [
                    IncludeEntityIds({"y"}),
                    IncludeRegexEntityIds({"x"}),
                ]
                answered = await ask(
                    consumer, {"update": criteria_json(update), "wire_regexes": ["(unclosed"]}
                )
                assert answered["refused"]["index"] == 1
                assert "unclosed" in answered["refused"]["reason"]
                assert filter_of(await ask(consumer, {"filter": None})) == initial
                assert stored_filter(reports) == initial
                # The stream goes on with the old filter: past x's new events, without them.
                last_excluded = await append(producer, "x", 2)
                await until_past(reports, consumer, "x", last_excluded)
                assert "x" not in applied(reports)
                # And it takes the next update: x's history is replayed.
                answered = await ask(
                    consumer, {"update": criteria_json([IncludeEntityIds({"x"}, seq_nr=1)])}
                )
                assert "filter" in answered
                await until_applied(reports, consumer, x=4)
