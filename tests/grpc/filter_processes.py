"""The two OS processes of tests/grpc/test_filters_two_processes.py, each on its own SQLite
file, run by `fluvial.examples.demo_services.running` as `python -m filter_processes ROLE`:

- `producer DB`: serves the stream "accounts" (`serve_producer`, no backtracking: it would
  bring an included entity's recent events again and hide whether the producer's own replays
  did their part) and appends an event to each of `BACKGROUND`'s entities every 10 ms, until
  its standard input closes; the command `{"append": entity, "count": n}` appends n more events
  to `entity` and answers the seq nrs and the last event's timestamp.
- `consumer DB PORT INITIAL`: projects the stream with `ORDERED_PROJECTION` (each event's
  entity and seq nr, in the order applied) under the initial filter INITIAL (criteria, as
  `criteria_json` writes them), its filters stored in its own file; the command
  `{"update": criteria}` is `update_filter` (with `"wire_regexes": [...]` the regexes of the
  update travel as those instead: a consumer whose regex rules are not the producer's, say of
  another version), `{"filter": null}` answers the current filter.

Each command is one line of JSON on standard input; its answer one line on standard output,
`answer ` and JSON. Standard input closing stops either process.
"""

from __future__ import annotations

import json
import sys
import typing
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from fluvial.core.filters import Filter
from fluvial.core.filters_criteria import FilterCriterion, IncludeEntityIds
from fluvial.core.ids import slice_for
from fluvial.core.projection_errors import ProjectionLeaseHeld
from fluvial.examples.demo_process import HOST, run_service, say
from fluvial.grpc import (
    ConsumerSettings,
    FilterUpdateRefused,
    GrpcConsumer,
    ProducerSettings,
    ProducerStreamSettings,
    Reconnect,
    _consumer_filters,
    open_grpc_consumer,
    serve_producer,
)
from fluvial.grpc._consumer_filter_wire import wire_criteria
from fluvial.grpc._proto.fluvial import v1 as pb
from fluvial.journal.sqlite._journal import open_sqlite_journal
from fluvial.projection import SourceSettings, serve_projection
from producer_fixtures import ENTITY_TYPE

STREAM = "accounts"
ANSWER = "answer "


def twin_of(entity_id: str) -> str:
    """An entity of `entity_id`'s slice: its events move that slice's offset."""
    target = slice_for(f"{ENTITY_TYPE}|{entity_id}")
    return next(
        f"twin-of-{entity_id}-{n}"
        for n in range(100_000)
        if slice_for(f"{ENTITY_TYPE}|twin-of-{entity_id}-{n}") == target
    )


# The entities whose filters the tests change, and those whose events always flow (a twin of
# each in its slice, whose offset thus keeps moving past the filtered entity's events).
FILTERED = ("x", "y")
BACKGROUND = ("b", *(twin_of(entity_id) for entity_id in FILTERED))
LEASE_DURATION = 0.5  # a killed consumer's lease blocks the next one for at most this long


# --- criteria as JSON, for the commands --------------------------------------------------------

_CRITERIA: dict[str, type[FilterCriterion]] = {
    kind.__name__: kind for kind in typing.get_args(FilterCriterion)
}


def criteria_json(criteria: Sequence[FilterCriterion]) -> list[dict[str, Any]]:
    return [
        {"kind": type(c).__name__, "values": sorted(c.values)}
        | ({"seq_nr": c.seq_nr} if isinstance(c, IncludeEntityIds) else {})
        for c in criteria
    ]


def criteria_from_json(data: list[dict[str, Any]]) -> list[FilterCriterion]:
    return [
        _CRITERIA[c["kind"]](frozenset(c["values"]), *([c["seq_nr"]] if "seq_nr" in c else []))
        for c in data
    ]


# --- commands on standard input ----------------------------------------------------------------


async def commands() -> AsyncIterator[dict[str, Any]]:
    """Each line of standard input as JSON, until it closes."""
    while line := await trio.to_thread.run_sync(sys.stdin.buffer.readline, abandon_on_cancel=True):
        yield json.loads(line)


def answer(value: object) -> None:
    say(ANSWER + json.dumps(value))


# --- the producer ------------------------------------------------------------------------------

PRODUCER_SETTINGS = ProducerSettings(
    stream=ProducerStreamSettings(source=SourceSettings(backtracking_interval=None)),
    heartbeat_interval=0.2,
)


async def produce(path: Path) -> None:
    from producer_fixtures import INTERNAL, SOURCE, Appender

    async with open_sqlite_journal(path) as journal, trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_producer(
                journal,
                [SOURCE],
                serializers=INTERNAL,
                host=HOST,
                settings=PRODUCER_SETTINGS,
                task_status=task_status,
            )
        )
        say(f"serving stream {STREAM!r} on {HOST}:{port}")
        appender = Appender(journal)
        nursery.start_soon(_background, appender)
        async for command in commands():
            stored = await appender.append(command["append"], *range(command["count"]))
            answer({"seq_nrs": [r.seq_nr for r in stored], "timestamp": stored[-1].timestamp})
        nursery.cancel_scope.cancel()


async def _background(appender: Any) -> None:
    n = 0
    while True:
        for entity_id in BACKGROUND:
            await appender.append(entity_id, n)
        n += 1
        await trio.sleep(0.01)


# --- the consumer ------------------------------------------------------------------------------

CONSUMER_SETTINGS = ConsumerSettings(
    reconnect=Reconnect(initial=0.05, maximum=0.5), heartbeat_timeout=5.0, call_timeout=5.0
)


async def consume(path: Path, port: int, initial: list[FilterCriterion]) -> None:
    async with (
        open_sqlite_journal(path) as local,
        open_grpc_consumer(
            HOST,
            port,
            settings=CONSUMER_SETTINGS,
            filters={STREAM: initial},
            filter_store=local.offset_store(),
        ) as consumer,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(_project, consumer, local)
        say(f"consuming {STREAM!r} from {HOST}:{port}")
        async for command in commands():
            if "update" in command:
                answer(await _update(consumer, command))
            else:
                answer({"filter": (await consumer.filter(STREAM)).to_json().decode()})
        nursery.cancel_scope.cancel()


async def _project(consumer: GrpcConsumer, local: Any) -> None:
    from consumer_helpers import CONSUMER_REGISTRY, ORDERED_PROJECTION

    projection = attrs.evolve(ORDERED_PROJECTION, lease_duration=LEASE_DURATION)
    while True:
        try:
            await serve_projection(
                consumer, CONSUMER_REGISTRY, projection, offsets=local.offset_store()
            )
        except ProjectionLeaseHeld as held:  # a killed consumer's, until it expires
            await trio.sleep(held.expires_in)


async def _update(consumer: GrpcConsumer, command: dict[str, Any]) -> dict[str, Any]:
    update = criteria_from_json(command["update"])
    with _regexes_on_the_wire(command.get("wire_regexes")):
        try:
            after = await consumer.update_filter(STREAM, update)
        except FilterUpdateRefused as refused:
            return {"refused": {"index": refused.criterion_index, "reason": refused.reason}}
    return {"filter": after.to_json().decode()}


@contextmanager
def _regexes_on_the_wire(regexes: list[str] | None) -> Iterator[None]:
    """While in the block, an update's regexes travel as `regexes` (None: as they are)."""
    if regexes is None:
        yield
        return

    def lying(criteria: Sequence[FilterCriterion]) -> list[pb.FilterCriterion]:
        wire = wire_criteria(criteria)
        for criterion in wire:
            for part in (criterion.include_regexes, criterion.exclude_regexes):
                if part is not None:
                    part.regexes = list(regexes)
        return wire

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_consumer_filters, "wire_criteria", lying)
        yield


def filter_of(answered: dict[str, Any]) -> Filter:
    """The filter an answer carries."""
    return Filter.from_json(answered["filter"])


if __name__ == "__main__":
    role, db, *rest = sys.argv[1:]
    if role == "producer":
        run_service(lambda: produce(Path(db)))
    else:
        criteria = criteria_from_json(json.loads(rest[1]))
        run_service(lambda: consume(Path(db), int(rest[0]), criteria))
