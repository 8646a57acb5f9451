"""Shared by the consumer's loopback tests: a producer that can be stopped and started again
on its port, a TCP proxy whose faults the test chooses, and a consumer's exactly-once
projection of the producer's public events into the consumer's own SQLite file."""

from __future__ import annotations

import socket
import sqlite3
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from fluvial.core.ids import SliceRange
from fluvial.core.records import EventEnvelope, EventRecord
from fluvial.core.serialization import SerializerRegistry
from fluvial.grpc import EventProducerSource, GrpcConsumer, ProducerSettings, ProducerStreamSettings
from fluvial.grpc._auth import AuthHook
from fluvial.grpc._producer_service import serve_producer
from fluvial.journal.api import Journal
from fluvial.journal.sqlite._journal import SqliteJournal
from fluvial.projection._handlers import Backoff, ExactlyOnce
from fluvial.projection._runner import Projection, serve_projection
from fluvial.projection._source_settings import SourceSettings
from producer_fixtures import INTERNAL, PUBLIC, SOURCE, Appender, Credited

# Quick heartbeats; backtracking on (its payload-less batches are what a consumer loads
# lazily), every 0.5 s.
PRODUCER_SETTINGS = ProducerSettings(
    stream=ProducerStreamSettings(source=SourceSettings(backtracking_interval=0.5)),
    heartbeat_interval=0.2,
)


class RestartableProducer:
    """`serve_producer` on one loopback port that a test stops and starts again."""

    def __init__(
        self,
        nursery: trio.Nursery,
        journal: Journal,
        sources: Sequence[EventProducerSource[Any, Any]] = (SOURCE,),
        settings: ProducerSettings = PRODUCER_SETTINGS,
        auth: AuthHook | None = None,
    ) -> None:
        self.nursery = nursery
        self.auth = auth
        self.journal = journal
        self.sources = sources
        self.settings = settings
        self.port = 0
        self._scope: trio.CancelScope | None = None

    async def start(self) -> int:
        """Serve (on the port it served before, if any); the port."""
        self.port = await self.nursery.start(self._serve)
        return self.port

    async def stop(self) -> None:
        """Stop serving: every stream in flight ends with UNAVAILABLE."""
        assert self._scope is not None
        self._scope.cancel()
        await trio.sleep(0.05)  # let it close its connections

    async def _serve(self, *, task_status: trio.TaskStatus[int]) -> None:
        with trio.CancelScope() as self._scope:
            await serve_producer(
                self.journal,
                self.sources,
                serializers=INTERNAL,
                port=self.port,
                settings=self.settings,
                auth=self.auth,
                task_status=task_status,
            )


@attrs.define(eq=False)
class _Connection:
    scope: trio.CancelScope
    client: trio.SocketStream
    server: trio.SocketStream
    stalled: bool = False
    budget: int | None = None  # server -> client bytes still forwarded, then reset

    def reset(self) -> None:
        """Close both sides with a TCP RST (SO_LINGER 0), as a crashed middlebox does."""
        for stream in (self.client, self.server):
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.scope.cancel()


@attrs.define(eq=False)
class FaultyProxy:
    """A TCP proxy on loopback to `target_port`, whose open connections the test can reset
    (`drop`), stall (forward nothing any more, keep them open: a dead peer behind a NAT), or
    reset after forwarding some more bytes to the client (`reset_after`: mid-message). New
    connections forward normally. `opened` counts the connections made through it."""

    target_port: int
    port: int = 0
    opened: int = 0
    connections: list[_Connection] = attrs.field(factory=list)

    def drop(self) -> None:
        for connection in self.connections:
            connection.reset()

    def stall(self) -> None:
        for connection in self.connections:
            connection.stalled = True

    def reset_after(self, count: int) -> None:
        for connection in self.connections:
            connection.budget = count

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        self.opened += 1
        try:
            server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            await client.aclose()  # the producer is down: refused, as it would be
            return
        with trio.CancelScope() as scope:
            connection = _Connection(scope, client, server)
            self.connections.append(connection)
            async with client, server, trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, connection, client, server, False)
                nursery.start_soon(self._pump, connection, server, client, True)
        self.connections.remove(connection)

    async def _pump(
        self,
        connection: _Connection,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        to_client: bool,
    ) -> None:
        try:
            while data := await source.receive_some(65536):
                if connection.stalled:
                    await trio.sleep_forever()
                if to_client and connection.budget is not None:
                    part = data[: connection.budget]
                    connection.budget -= len(part)
                    if part:
                        await sink.send_all(part)
                    if connection.budget <= 0:
                        connection.reset()
                        return
                    continue
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        connection.scope.cancel()


CREDITS_TABLE = (
    "CREATE TABLE credits (pid TEXT NOT NULL, seq_nr INTEGER NOT NULL, cents INTEGER NOT NULL, "
    "times INTEGER NOT NULL, PRIMARY KEY (pid, seq_nr))"
)

CONSUMER_REGISTRY = SerializerRegistry()
CONSUMER_REGISTRY.register(Credited, "public.Credited")
assert PUBLIC.manifest_of(Credited) == CONSUMER_REGISTRY.manifest_of(Credited)


def create_credits(conn: sqlite3.Connection) -> None:
    conn.execute(CREDITS_TABLE)


def credit(conn: sqlite3.Connection, envelope: EventEnvelope[Credited]) -> None:
    """The consumer's exactly-once handler: one row per event, counting how often it came."""
    conn.execute(
        "INSERT INTO credits VALUES (?, ?, ?, 1) ON CONFLICT (pid, seq_nr) "
        "DO UPDATE SET times = times + 1",
        (envelope.persistence_id, envelope.seq_nr, envelope.event.cents),
    )


def credits_projection(name: str = "credits") -> Projection[Credited, sqlite3.Connection]:
    return Projection(
        name,
        SOURCE.stream_id,  # a consumer's projection names the stream id
        ExactlyOnce(credit, migrations=(create_credits,)),
        backoff=Backoff(min=0.05, max=0.5),
    )


def create_applied(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE applied (n INTEGER PRIMARY KEY AUTOINCREMENT, entity TEXT NOT NULL, "
        "seq_nr INTEGER NOT NULL)"
    )


def apply_in_order(conn: sqlite3.Connection, envelope: EventEnvelope[Credited]) -> None:
    """An exactly-once handler that keeps the order it applied the events in."""
    conn.execute(
        "INSERT INTO applied (entity, seq_nr) VALUES (?, ?)", (envelope.entity_id, envelope.seq_nr)
    )


ORDERED_PROJECTION = Projection(
    "filtered",
    SOURCE.stream_id,
    ExactlyOnce(apply_in_order, migrations=(create_applied,)),
    backoff=Backoff(min=0.05, max=0.5),
)


def applied(path: Path) -> dict[str, list[int]]:
    """Per entity, the seq nrs `ORDERED_PROJECTION` applied, in the order it applied them, as
    the consumer's file holds them (read-only: this may be another process's file)."""
    try:
        connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    except sqlite3.OperationalError:  # not created yet: opening read-only creates nothing
        return {}
    try:
        rows = connection.execute("SELECT entity, seq_nr FROM applied ORDER BY n").fetchall()
    except sqlite3.OperationalError:  # no table yet
        return {}
    finally:
        connection.close()
    by_entity: dict[str, list[int]] = {}
    for entity, seq_nr in rows:
        by_entity.setdefault(entity, []).append(seq_nr)
    return by_entity


def read_credits(path: Path) -> dict[tuple[str, int], tuple[int, int]]:
    """(pid, seq nr) -> (cents, times applied), as the consumer's file holds them."""
    with sqlite3.connect(path) as conn:
        try:
            rows = conn.execute("SELECT pid, seq_nr, cents, times FROM credits").fetchall()
        except sqlite3.OperationalError:  # not created yet
            return {}
    return {(pid, seq_nr): (cents, times) for pid, seq_nr, cents, times in rows}


def fold(stored: Sequence[EventRecord]) -> dict[tuple[str, int], tuple[int, int]]:
    """What the read model holds once every published event was applied once: the public
    events (amount >= 0: the others travel as placeholders), each applied once."""
    model = {}
    for record in stored:
        assert record.payload is not None
        event = INTERNAL.decode(
            record.payload, persistence_id=record.persistence_id, seq_nr=record.seq_nr
        )
        amount = event.amount
        if amount >= 0:
            model[(record.persistence_id, record.seq_nr)] = (amount * 100, 1)
    return model


async def wait_for_model(path: Path, expected: dict[tuple[str, int], tuple[int, int]]) -> None:
    """Until the consumer's read model holds at least as many events as `expected` (at most
    20 s), then compare: one more, or one applied twice, shows there."""
    with trio.move_on_after(20):
        while len(read_credits(path)) < len(expected):  # noqa: ASYNC110 (another file)
            await trio.sleep(0.05)
    await trio.sleep(0.3)  # a duplicate applied late would show now
    assert read_credits(path) == expected


# The entities `World.append` writes to.
ENTITIES = [f"e{n}" for n in range(8)]


@attrs.define
class World:
    """A producer on its own SQLite journal and a consumer's SQLite file, for a test over
    loopback (the `world` fixture of conftest.py); `stored` is what the test appended."""

    producer_journal: SqliteJournal
    consumer_journal: SqliteJournal
    consumer_file: Path
    appender: Appender
    producer: RestartableProducer
    nursery: trio.Nursery
    stored: list[EventRecord] = attrs.field(factory=list)

    async def append(self, rounds: int, pause: float = 0.0) -> None:
        """`rounds` events per entity, one entity after the other; every 4th negative (a
        placeholder on the wire)."""
        for round_ in range(rounds):
            for index, entity in enumerate(ENTITIES):
                amount = -1 if (round_ + index) % 4 == 3 else round_ + index
                self.stored.extend(await self.appender.append(entity, amount))
            if pause:
                await trio.sleep(pause)

    async def project(
        self,
        consumer: GrpcConsumer,
        slices: SliceRange | None = None,
        name: str = "credits",
        *,
        nursery: trio.Nursery | None = None,
    ) -> None:
        """Run projection `name` of `consumer`'s events into the consumer's file, in `nursery`
        (the world's by default: one inside a channel's block stops before it closes)."""
        store = self.consumer_journal.offset_store()
        await (nursery or self.nursery).start(
            lambda task_status: serve_projection(
                consumer,
                CONSUMER_REGISTRY,
                credits_projection(name),
                slices,
                offsets=store,
                task_status=task_status,
            )
        )
