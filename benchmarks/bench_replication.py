"""Replication end to end: producer journal -> gRPC -> exactly-once consumer, two processes.

A producer process (`serve_producer` over a SQLite journal) and a consumer process
(`open_grpc_consumer`, an `ExactlyOnce` projection writing one row per event into its own
SQLite file, its offsets in the same transaction) on loopback, plain and with TLS (a CA and a
certificate for 127.0.0.1 made by trustme for the run). This script starts them, each as
`python bench_replication.py --role producer|consumer ...`, and reads what they print.

1. Catch-up: the producer's journal pre-filled with EVENTS events of 100 entities; timed in the
   consumer from `serve_projection`'s start (connecting included) to the last event committed
   in its read model. Baseline in the same round: the same messages (each `StreamEventsResponse`
   the producer sends, encoded once beforehand from the same journal) over one grpclib
   bidirectional call between two plain-asyncio processes, with no fluvial on either side
   (benchmarks/_raw_grpclib_stream.py), timed from before the connection to the last message.
2. Live path: the producer appends RATE events/s (one event per append, round robin over the
   100 entities, to an empty journal) while the consumer follows; for each event, the time from
   its append returning in the producer (the commit) to the consumer's handler invocation, both
   read from CLOCK_MONOTONIC (`time.monotonic_ns()`, one clock for every process of the
   machine), p50 / p99 / max; and from the moment before the append was called (carried in the
   event), which includes the commit itself.

3. Through a filter: the catch-up of the same journal by a consumer whose filter passes 10% of
   the entities (`open_grpc_consumer(..., filters=...)`: exclude every entity id with the
   regex `.*`, include 10 of the 100 ids), beside the unfiltered catch-up of the same round;
   events/s of journal events and of delivered events, and a check of what the consumer
   holds: exactly the included entities' events, each once and in order, and offsets at the
   last of them.

Each row also gives the CPU time per event of each process (`time.process_time()`: every
thread, from serving or connecting to the end), which says where a figure's time went.

Run: .venv/bin/python benchmarks/bench_replication.py [--events 100000] [--rounds 3]
[--rate 1000] [--seconds 5] [--no-tls] [--no-live] [--no-filter] (just bench, just bench-grpc).
"""

from __future__ import annotations

import argparse
import json
import queue
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import trio
from _raw_grpclib_stream import write_messages
from _table import print_table

from fluvial import ExcludeRegexEntityIds, Filter, IncludeEntityIds
from fluvial.core.envelope_source import EnvelopeSource
from fluvial.core.first_sight import FirstSight
from fluvial.core.ids import NUMBER_OF_SLICES, SliceRange, slice_for
from fluvial.core.records import EventEnvelope, EventRecord
from fluvial.core.serialization import SerializerRegistry
from fluvial.journal.sqlite import open_sqlite_journal
from fluvial.projection._source_settings import SourceSettings

HERE = Path(__file__).parent
SCRIPT = HERE / "bench_replication.py"  # what the producer and consumer processes run
ENTITIES = 100
ENTITY_TYPE = "Tick"
STREAM_ID = "ticks"
# The journal's timestamps are commit order (SQLite): no backtracking query.
QUIET = SourceSettings(backtracking_interval=None)


@attrs.frozen
class Tick:
    n: int
    stamp: int  # CLOCK_MONOTONIC ns before its append was called (0: not timed)


REGISTRY = SerializerRegistry()
REGISTRY.register(Tick, "bench.Tick")


def _pid(entity: int) -> str:
    return f"{ENTITY_TYPE}|e{entity}"


def _record(entity: int, seq_nr: int, stamp: int = 0) -> EventRecord:
    pid = _pid(entity)
    return EventRecord(
        pid, seq_nr, ENTITY_TYPE, slice_for(pid), REGISTRY.encode(Tick(seq_nr, stamp))
    )


def _emit(value: object) -> None:
    print(json.dumps(value), flush=True)


# -- the producer process ------------------------------------------------------------------


async def run_producer(db: Path, tls_dir: Path | None, rate: float, seconds: float) -> None:
    """Serve the journal at `db`; with `rate`, append `rate * seconds` events once told "go"
    and print when each append returned. Ends when standard input closes."""
    from fluvial.grpc import (
        EventProducerSource,
        ProducerSettings,
        ProducerStreamSettings,
        ServerSettings,
        TlsSettings,
        serve_producer,
    )

    source: EventProducerSource[Tick, Tick] = EventProducerSource(
        stream_id=STREAM_ID, entity_type=ENTITY_TYPE, serializers=REGISTRY
    )
    tls = None if tls_dir is None else TlsSettings(certificate_chain=tls_dir / "server.pem")
    settings = ProducerSettings(
        server=ServerSettings(tls=tls), stream=ProducerStreamSettings(source=QUIET)
    )
    async with open_sqlite_journal(db) as journal, trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_producer(
                journal, [source], serializers=REGISTRY, settings=settings, task_status=task_status
            )
        )
        _emit({"port": port})
        cpu = time.process_time()
        if rate:
            await trio.to_thread.run_sync(sys.stdin.buffer.readline)  # "go"
            committed: list[tuple[str, int, int]] = []

            async def append(entity: int, seq_nr: int) -> None:
                await journal.append([_record(entity, seq_nr, time.monotonic_ns())])
                committed.append((_pid(entity), seq_nr, time.monotonic_ns()))

            seq_nrs = [0] * ENTITIES
            async with trio.open_nursery() as appending:
                next_at = trio.current_time()
                for n in range(int(rate * seconds)):
                    entity = n % ENTITIES
                    seq_nrs[entity] += 1
                    appending.start_soon(append, entity, seq_nrs[entity])
                    next_at += 1 / rate
                    await trio.sleep_until(next_at)
            _emit({"committed": committed})
        await trio.to_thread.run_sync(sys.stdin.buffer.read)
        _emit({"cpu": time.process_time() - cpu})  # every thread's, since it served
        nursery.cancel_scope.cancel()


# -- the consumer process ------------------------------------------------------------------


_NOTHING = ("", 0, 0, 0)  # what a catch-up's handler leaves: only their number counts


def _create(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE model (pid TEXT, seq_nr INTEGER, n INTEGER)")


def _count(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM model").fetchone()[0])


async def run_consumer(
    db: Path,
    port: int,
    tls_dir: Path | None,
    events: int,
    live: bool,
    included: Sequence[str] = (),
) -> None:
    """Project the producer's stream into `db` until `events` events are committed; print how
    long that took (catch-up) or when each event reached the handler (`live`). With
    `included`, the consumer's filter passes only those entity ids (`passing_only`)."""
    from fluvial.grpc import ChannelSettings, ConsumerSettings, TlsSettings, open_grpc_consumer
    from fluvial.projection import ExactlyOnce, Projection, serve_projection

    handled: list[tuple[str, int, int, int]] = []  # pid, seq nr, its stamp, handler ns
    # Set once the handler has seen every event: no polling in the process being measured.
    all_handled, trio_token = trio.Event(), trio.lowlevel.current_trio_token()

    def handle(conn: sqlite3.Connection, envelope: EventEnvelope[Tick]) -> None:
        # In the consumer journal's writer thread, inside the transaction of its offsets.
        if live:
            handled.append(
                (
                    envelope.persistence_id,
                    envelope.seq_nr,
                    envelope.event.stamp,
                    time.monotonic_ns(),
                )
            )
        else:
            handled.append(_NOTHING)
        if len(handled) == events:
            trio_token.run_sync_soon(all_handled.set)
        conn.execute(
            "INSERT INTO model VALUES (?, ?, ?)",
            (envelope.persistence_id, envelope.seq_nr, envelope.event.n),
        )

    tls = None if tls_dir is None else TlsSettings(trusted_ca=tls_dir / "ca.pem")
    settings = ConsumerSettings(
        channel=ChannelSettings(tls=tls), first_sight=FirstSight.QUERY_IN_COMMIT_ORDER
    )
    projection = Projection[Tick, sqlite3.Connection](
        "bench",
        STREAM_ID,
        ExactlyOnce(handle, migrations=(_create,)),
        source=QUIET,
    )
    if not live:
        # The catch-ups move quiet slices often (QUIET_SLICES_EVERY). The live path keeps the
        # default, as a user's projection does: a move rewrites the offsets of every slice the
        # run leaves quiet (~900 of 1,024 rows here), and at 0.2 s those moves were the live
        # run's worst 1% (12-14 ms each, every 0.2 s).
        projection = attrs.evolve(projection, quiet_slices_every=QUIET_SLICES_EVERY)
    async with (
        open_sqlite_journal(db) as local,
        open_grpc_consumer(
            "127.0.0.1",
            port,
            settings=settings,
            filters=passing_only(included),
            filter_store=local.offset_store() if included else None,  # where a user keeps it
        ) as producer,
        trio.open_nursery() as nursery,
    ):
        started, cpu = time.perf_counter(), time.process_time()
        await nursery.start(
            lambda task_status: serve_projection(
                producer,
                REGISTRY,
                projection,
                offsets=local.offset_store(),
                task_status=task_status,
            )
        )
        if live:
            _emit({"started": True})
        await all_handled.wait()
        # The last transaction's commit: a moment after its handler ran.
        while _count(db) < events:  # noqa: ASYNC110 (another connection)
            await trio.sleep(0.001)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        nursery.cancel_scope.cancel()
    _emit({"handled": handled, "cpu": cpu} if live else {"seconds": elapsed, "cpu": cpu})


# -- the benchmark: child processes and the table --------------------------------------------


class Child:
    """A child process that prints one JSON value a line; its stdin closing stops it."""

    def __init__(self, name: str, args: Sequence[str]) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def message(self, timeout: float = 300.0) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"the {self.name} said nothing for {timeout}s") from None
        if line is None:
            raise RuntimeError(f"the {self.name} exited ({self.process.wait()})")
        value: dict[str, Any] = json.loads(line)
        return value

    def say(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def finish(self) -> dict[str, Any]:
        """Close its stdin and return its last message."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        return self.message()

    def stop(self) -> None:
        assert self.process.stdin is not None
        if not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextmanager
def child(name: str, *args: str) -> Iterator[Child]:
    process = Child(name, args)
    try:
        yield process
    finally:
        if process.process.poll() is None:
            process.stop()


def _tls_args(tls_dir: Path | None) -> list[str]:
    return [] if tls_dir is None else ["--tls-dir", str(tls_dir)]


@attrs.frozen
class Run:
    """One catch-up: events/s, and the CPU time of each process per event (µs, every thread,
    from serving or connecting to the end)."""

    events_per_second: float
    sender_us: float
    receiver_us: float


def consumer_db(tmp: Path, run: int, filtered: bool = False) -> Path:
    return tmp / f"consumer-{run}{'-filtered' if filtered else ''}.db"


def catch_up(
    tmp: Path,
    journal: Path,
    events: int,
    tls_dir: Path | None,
    run: int,
    included: Sequence[str] = (),
) -> Run:
    """One fluvial catch-up of `journal`'s `events`, in two fresh processes; with `included`,
    through a consumer filter passing only those entities (the figures stay per journal event,
    each entity holding an equal share of them)."""
    script = str(SCRIPT)
    db = consumer_db(tmp, run, filtered=bool(included))
    delivered = events * len(included) // ENTITIES if included else events
    producer_args = ["--role", "producer", "--db", str(journal), *_tls_args(tls_dir)]
    with child("producer", script, *producer_args) as producer:
        port = producer.message()["port"]
        consumer_args = ["--role", "consumer", "--db", str(db), "--port", str(port)]
        consumer_args += ["--events", str(delivered), *_tls_args(tls_dir)]
        if included:
            consumer_args += ["--include", ",".join(included)]
        with child("consumer", script, *consumer_args) as consumer:
            result = consumer.message()
        sender_cpu = float(producer.finish()["cpu"])
    return Run(
        events / float(result["seconds"]),
        sender_cpu / events * 1e6,
        float(result["cpu"]) / events * 1e6,
    )


def raw_stream(messages: Path, events: int, tls_dir: Path | None, expected: int) -> Run:
    """The same messages over raw grpclib, in two fresh processes."""
    script = str(HERE / "_raw_grpclib_stream.py")
    with child("raw server", script, "server", str(messages), *_tls_args(tls_dir)) as server:
        port = server.message()["port"]
        with child("raw client", script, "client", str(port), *_tls_args(tls_dir)) as client:
            result = client.message()
        sender_cpu = float(server.finish()["cpu"])
    if result["messages"] != expected:
        raise RuntimeError(f"the raw client read {result['messages']} messages of {expected}")
    return Run(
        events / float(result["seconds"]),
        sender_cpu / events * 1e6,
        float(result["cpu"]) / events * 1e6,
    )


@attrs.frozen
class Latency:
    """One live run: latencies in ms, CPU per event in µs (as `Run`'s)."""

    events: int
    commit_p50: float
    commit_p99: float
    commit_max: float
    append_p50: float
    append_p99: float
    sender_us: float
    receiver_us: float


def live(tmp: Path, tls_dir: Path | None, rate: float, seconds: float, run: int) -> Latency:
    """The live path's latencies at `rate` events/s for `seconds`."""
    script = str(SCRIPT)
    events = int(rate * seconds)
    journal, db = tmp / f"live-producer-{run}.db", tmp / f"live-consumer-{run}.db"
    producer_args = ["--role", "producer", "--db", str(journal), *_tls_args(tls_dir)]
    producer_args += ["--live", "--rate", str(rate), "--seconds", str(seconds)]
    with child("producer", script, *producer_args) as producer:
        port = producer.message()["port"]
        consumer_args = ["--role", "consumer", "--db", str(db), "--port", str(port), "--live"]
        consumer_args += ["--events", str(events), *_tls_args(tls_dir)]
        with child("consumer", script, *consumer_args) as consumer:
            consumer.message()  # started: its stream is open
            producer.say("go")
            committed = {(pid, seq_nr): at for pid, seq_nr, at in producer.message()["committed"]}
            result = consumer.message()
        sender_cpu = float(producer.finish()["cpu"])
    handled = result["handled"]
    from_commit = [(at - committed[pid, seq_nr]) / 1e6 for pid, seq_nr, _, at in handled]
    from_append = [(at - stamp) / 1e6 for _, _, stamp, at in handled]
    commit_cuts = statistics.quantiles(from_commit, n=100)
    append_cuts = statistics.quantiles(from_append, n=100)
    return Latency(
        len(handled),
        commit_cuts[49],
        commit_cuts[98],
        max(from_commit),
        append_cuts[49],
        append_cuts[98],
        sender_cpu / events * 1e6,
        float(result["cpu"]) / events * 1e6,
    )


async def prefill(path: Path, events: int) -> None:
    async with open_sqlite_journal(path) as journal:

        async def one(entity: int) -> None:
            per_entity = events // ENTITIES
            for start in range(0, per_entity, 50):
                last = min(per_entity, start + 50)
                await journal.append([_record(entity, n + 1) for n in range(start, last)])

        async with trio.open_nursery() as nursery:
            for entity in range(ENTITIES):
                nursery.start_soon(one, entity)


async def journal_records(path: Path) -> list[EventRecord]:
    """The journal at `path` as the producer's query reads it, in timestamp order."""
    from fluvial.journal.queries import current_events_by_slices

    async with open_sqlite_journal(path) as journal:
        return [r async for r in current_events_by_slices(journal, ENTITY_TYPE, SliceRange.all())]


async def producer_messages(path: Path) -> list[bytes]:
    """The messages a producer sends for the whole journal at `path`: its query's records in
    batches of `batch_size`, each encoded as the producer's stream encodes it."""
    from fluvial.grpc import ProducerStreamSettings
    from fluvial.grpc._producer_wire import batch_messages
    from fluvial.grpc._proto.fluvial import v1 as pb
    from fluvial.grpc._settings import DEFAULT_MAX_MESSAGE_SIZE

    size = ProducerStreamSettings().batch_size
    records = await journal_records(path)
    return [
        bytes(pb.StreamEventsResponse(batch=batch))
        for start in range(0, len(records), size)
        for batch in batch_messages(
            records[start : start + size], EnvelopeSource.QUERY, max_size=DEFAULT_MAX_MESSAGE_SIZE
        )
    ]


# -- catch-up through a consumer filter that passes 10% of the entities ----------------------

PASSING_SHARE = 10  # the filtered catch-up's filter passes one entity in this many
# The consumer moves the offsets of slices without events this often (in every run, so the
# catch-ups compare): a second's catch-up would otherwise end before the default 5 s, and the
# filtered table's last column says what a restart would read again.
QUIET_SLICES_EVERY = 0.2


def passing_only(included: Sequence[str]) -> dict[str, Filter] | None:
    """The consumer's filters that pass only the entity ids `included` (none: no filter), the
    way docs/filters.md says to pass some entities: exclude everything, include those."""
    if not included:
        return None
    return {STREAM_ID: Filter.of([ExcludeRegexEntityIds({".*"}), IncludeEntityIds(included)])}


def included_entities(records: Sequence[EventRecord]) -> list[str]:
    """Every PASSING_SHARE-th entity id, counted from the one of the journal's last event: the
    consumer's clock stops at the last event it is sent, so the stream has gone through the
    whole journal by then, as in the unfiltered run."""
    last = max(records, key=lambda r: r.timestamp).persistence_id
    first = int(last.rpartition("|e")[2])
    return [f"e{(first + k) % ENTITIES}" for k in range(0, ENTITIES, PASSING_SHARE)]


def check_filtered(records: Sequence[EventRecord], db: Path, included: Sequence[str]) -> str:
    """Raise unless the consumer at `db` handled exactly the events of `included` (each
    entity's once, in seq nr order) and its offsets stand at the last of them: each entity at
    its last seq nr, each slice at the timestamp of its last included event. Say so, with
    what the offsets of the other slices are."""
    passing = {_pid(int(entity_id[1:])) for entity_id in included}
    wanted: dict[str, list[int]] = {}
    slice_ends: dict[int, int] = {}
    for r in records:
        if r.persistence_id in passing:
            wanted.setdefault(r.persistence_id, []).append(r.seq_nr)
            slice_ends[r.slice] = max(slice_ends.get(r.slice, 0), r.timestamp)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT pid, seq_nr FROM model ORDER BY rowid").fetchall()
        offsets = dict(conn.execute("SELECT slice, timestamp FROM projection_offset").fetchall())
        seen = dict(conn.execute("SELECT persistence_id, seq_nr FROM projection_entity"))
    handled: dict[str, list[int]] = {}
    for pid, seq_nr in rows:
        handled.setdefault(pid, []).append(seq_nr)
    if handled != {pid: sorted(seq_nrs) for pid, seq_nrs in wanted.items()}:
        others = sorted(set(handled) - passing)
        raise RuntimeError(f"the filtered consumer handled {len(rows)} events (others: {others})")
    if seen != {pid: max(seq_nrs) for pid, seq_nrs in wanted.items()}:
        raise RuntimeError(f"the filtered consumer's entity offsets are {seen}")
    # A slice's offset stands at its last included event, or past it where the consumer
    # moved the slices the query passed without events of theirs (`quiet_slices_every`).
    behind = {s: t for s, t in slice_ends.items() if offsets.get(s, 0) < t}
    if behind:
        raise RuntimeError(f"the filtered consumer's slice offsets {offsets} are behind {behind}")
    slices = {r.slice for r in records}
    end = max(r.timestamp for r in records)
    resume = min(offsets.values()) if len(offsets) == NUMBER_OF_SLICES else 0
    again = sum(1 for r in records if r.timestamp >= resume)
    return (
        f"{len(rows):,} events of {len(handled)} entities, once, in order; offsets at the last "
        f"of each; {len(slices) - len(slice_ends)} of {len(slices)} slices excluded only; a "
        f"restart reads {again:,} journal events again"
        + (" (resumes at the end)" if resume == end else "")
    )


@attrs.frozen
class Filtered:
    """A catch-up through the filter beside the unfiltered one of the same round."""

    unfiltered: Run
    filtered: Run
    check: str


def filtered_catch_up(
    tmp: Path,
    journal: Path,
    records: Sequence[EventRecord],
    tls_dir: Path | None,
    run: int,
    unfiltered: Run,
) -> Filtered:
    """A catch-up of `journal` whose consumer's filter passes one entity in PASSING_SHARE,
    checked against the journal's `records`."""
    included = included_entities(records)
    filtered = catch_up(tmp, journal, len(records), tls_dir, run, included)
    return Filtered(
        unfiltered,
        filtered,
        check_filtered(records, consumer_db(tmp, run, filtered=True), included),
    )


def print_filtered(events: int, filtered: Sequence[tuple[str, Filtered]]) -> None:
    delivered = events // PASSING_SHARE
    print_table(
        f"catch-up of {events:,} events through a consumer filter passing {delivered:,} "
        f"(exclude '.*', include {ENTITIES // PASSING_SHARE} of {ENTITIES} entity ids), beside "
        "the unfiltered catch-up of the same round (the table above)",
        [
            "round: transport",
            "unfiltered events/s (baseline)",
            "filtered: journal events/s",
            "delivered events/s",
            "ratio (journal events/s)",
            "CPU µs/journal event producer / consumer",
            "what the consumer holds",
        ],
        [
            (
                label,
                f.unfiltered.events_per_second,
                f.filtered.events_per_second,
                f.filtered.events_per_second / PASSING_SHARE,
                f"{f.filtered.events_per_second / f.unfiltered.events_per_second:.2f}",
                f"{f.filtered.sender_us:.1f} / {f.filtered.receiver_us:.1f}",
                f.check,
            )
            for label, f in filtered
        ],
    )


def _tls_files(directory: Path) -> Path:
    import trustme

    directory.mkdir()
    ca = trustme.CA(organization_name="fluvial bench_replication")
    ca.cert_pem.write_to_path(directory / "ca.pem")
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        directory / "server.pem"
    )
    return directory


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _span(values: Sequence[float]) -> str:
    return f"{min(values):,.0f}-{max(values):,.0f}" if len(values) > 1 else f"{values[0]:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="pre-filled, for catch-up")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=1000.0, help="live path, events/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="live path, per round")
    parser.add_argument("--no-tls", action="store_true", help="plain only")
    parser.add_argument("--no-live", action="store_true", help="catch-up only")
    parser.add_argument(
        "--no-filter", action="store_true", help="without the catch-up through a 10%% filter"
    )
    parser.add_argument("--role", choices=["producer", "consumer"], help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tls-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--live", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--include", help=argparse.SUPPRESS)  # the entity ids a filter passes
    args = parser.parse_args()
    if args.role == "producer":
        rate = args.rate if args.live else 0.0
        trio.run(run_producer, args.db, args.tls_dir, rate, args.seconds)
        return
    if args.role == "consumer":
        included = args.include.split(",") if args.include else ()
        trio.run(run_consumer, args.db, args.port, args.tls_dir, args.events, args.live, included)
        return

    events = args.events // ENTITIES * ENTITIES
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        journal, messages = tmp / "producer.db", tmp / "messages.bin"
        print(f"load {_load()}; pre-filling {events:,} events ...", flush=True)
        trio.run(prefill, journal, events)
        encoded = trio.run(producer_messages, journal)
        records = trio.run(journal_records, journal)
        write_messages(messages, encoded)
        transports: list[tuple[str, Path | None]] = [("plain", None)]
        if not args.no_tls:
            transports.append(("TLS", _tls_files(tmp / "tls")))
        rows: list[tuple[object, ...]] = []
        figures: dict[str, list[float]] = {}
        latencies: list[tuple[str, Latency]] = []
        filtered: list[tuple[str, Filtered]] = []
        for round_ in range(1, args.rounds + 1):
            for label, tls_dir in transports:
                raw = raw_stream(messages, events, tls_dir, len(encoded))
                fluvial = catch_up(tmp, journal, events, tls_dir, len(rows))
                ratio = fluvial.events_per_second / raw.events_per_second
                rows.append(
                    (
                        f"{round_}: {label}",
                        events,
                        fluvial.events_per_second,
                        raw.events_per_second,
                        f"{ratio:.3f}",
                        f"{fluvial.sender_us:.1f} / {fluvial.receiver_us:.1f}",
                        f"{raw.sender_us:.2f} / {raw.receiver_us:.2f}",
                    )
                )
                figures.setdefault(label, []).append(fluvial.events_per_second)
                print(
                    f"round {round_} catch-up {label}: fluvial {fluvial.events_per_second:,.0f} "
                    f"events/s, raw grpclib {raw.events_per_second:,.0f} (load {_load()})",
                    flush=True,
                )
                if not args.no_filter:
                    run = filtered_catch_up(tmp, journal, records, tls_dir, len(rows), fluvial)
                    filtered.append((f"{round_}: {label}", run))
                    print(
                        f"round {round_} catch-up {label} through the filter: "
                        f"{run.filtered.events_per_second:,.0f} journal events/s "
                        f"(load {_load()})",
                        flush=True,
                    )
                if not args.no_live:
                    latency = live(tmp, tls_dir, args.rate, args.seconds, len(rows))
                    latencies.append((f"{round_}: {label}", latency))
                    print(
                        f"round {round_} live {label}: p50 {latency.commit_p50:.2f} ms, "
                        f"p99 {latency.commit_p99:.2f} ms (load {_load()})",
                        flush=True,
                    )
    print_table(
        f"catch-up of {events:,} events: producer SQLite -> gRPC (two processes, loopback) -> "
        "exactly-once SQLite handler with offsets; target >= 50,000 events/s",
        [
            "round: transport",
            "events",
            "fluvial events/s",
            "raw grpclib events/s (baseline)",
            "ratio",
            "fluvial CPU µs/event producer / consumer",
            "raw CPU µs/event server / client",
        ],
        rows,
    )
    for label, values in figures.items():
        print(f"  {label}: fluvial {_span(values)} events/s over {len(values)} rounds")
    if filtered:
        print_filtered(events, filtered)
    if latencies:
        print_table(
            f"live path at {args.rate:,.0f} events/s: append returned (commit) -> handler, "
            "CLOCK_MONOTONIC of both processes; target p99 <= 5 ms",
            [
                "round: transport",
                "events",
                "p50 ms",
                "p99 ms",
                "max ms",
                "append called -> handler p50 / p99 ms",
                "CPU µs/event producer / consumer",
            ],
            [
                (
                    label,
                    f.events,
                    f"{f.commit_p50:.2f}",
                    f"{f.commit_p99:.2f}",
                    f"{f.commit_max:.2f}",
                    f"{f.append_p50:.2f} / {f.append_p99:.2f}",
                    f"{f.sender_us:.0f} / {f.receiver_us:.0f}",
                )
                for label, f in latencies
            ],
        )
    print(f"\nload at the end: {_load()}")


if __name__ == "__main__":
    main()
