"""`fluvial demo`: two services on loopback, replicating events over gRPC with no broker.

The carts service (`cart_producer`, a process of its own) runs shopping carts on its SQLite
journal and publishes their events; the reporting service (`cart_consumer`, another process)
consumes them over gRPC into an exactly-once read model in its own SQLite file. This module
starts both, prints what each says (its live count of events) with its name, SIGKILLs the
consumer mid-stream and starts it again (it resumes from its stored offsets), and at the end
checks that the consumer's read model is the fold of the producer's journal: every event
applied exactly once.

The demo writes two database files (and SQLite's `-wal` / `-shm` beside them): the journal
at `--db FILE` and the consumer's file beside it (`consumer_file`). It marks each as its own
with a `fluvial_demo` table, so that a later run replaces demo files and nothing else: any
other file at either path (a user's journal, another database, a text file) is refused with
`DemoFileRefused` and left as it is.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

import fluvial
from fluvial import FluvialError, SerializerRegistry, UsageError, open_sqlite_journal
from fluvial.core.records import MAX_SEQ_NR
from fluvial.examples.cart_consumer import CartsView, read_view
from fluvial.examples.demo_process import MARKER_TABLE, MARKER_TEXT, say
from fluvial.examples.shopping_cart import ENTITY_TYPE, CartState, apply_event, register_cart

# SQLite's files beside a database: the write-ahead log, its index, a rollback journal.
_SIDECARS = ("-wal", "-shm", "-journal")
_SQLITE_HEADER = b"SQLite format 3\x00"
# How long the whole demo may take before it gives up (it takes ~15 s).
_TIME_LIMIT = 120.0
# The consumer is killed once it projected this many events (or the producer is done).
_KILL_AT_EVENTS = 300


class DemoFileRefused(UsageError):
    """`fluvial demo --db FILE` found a file that the demo did not write; nothing was changed."""


class DemoFailed(FluvialError):
    """A service of the demo exited early, the demo ran past its time limit, or the consumer's
    read model is not the fold of the producer's journal (the message says which)."""


def consumer_file(journal: Path) -> Path:
    """The consumer's database, beside the producer's journal: `shop.db` -> `shop-consumer.db`."""
    return journal.with_name(f"{journal.stem}-consumer{journal.suffix}")


def is_demo_journal(path: Path) -> bool:
    """Whether `path` is a journal that `fluvial demo` wrote (it holds the demo's marker).

    Reads without creating anything: a file that is not SQLite is not opened as a database,
    and a database without both a write-ahead log and its index is opened immutable (a
    read-only open of a log without its `-shm` would create one). Any file SQLite cannot read
    (locked, corrupt) answers False.
    """
    if not path.is_file():
        return False
    with path.open("rb") as file:
        if file.read(len(_SQLITE_HEADER)) != _SQLITE_HEADER:
            return False
    # With a log and its index (a demo killed while running), the marker may still be in the
    # log: read through SQLite's usual read-only path, which needs both to create nothing.
    log_and_index = all(path.with_name(path.name + s).exists() for s in ("-wal", "-shm"))
    uri = path.resolve().as_uri() + ("?mode=ro" if log_and_index else "?mode=ro&immutable=1")
    try:
        connection = sqlite3.connect(uri, uri=True)
        try:
            row = connection.execute(f"SELECT note FROM {MARKER_TABLE}").fetchone()
        finally:
            connection.close()
    except sqlite3.Error:
        return False
    return row is not None and row[0] == MARKER_TEXT


def clear_previous_demo(*paths: Path) -> None:
    """Delete the demo databases at `paths` (and their SQLite sidecar files) from an earlier
    run.

    Raises `DemoFileRefused`, deleting nothing at any of the paths, if one exists and is not a
    demo database, or if a sidecar file of one is there without its database (a log of
    something else). A path that does not exist is left so.
    """
    for path in paths:
        _check_is_demo_file_or_nothing(path)
    for path in paths:
        for file in [path, *_sidecars(path)]:
            file.unlink(missing_ok=True)


def _sidecars(path: Path) -> list[Path]:
    return [path.with_name(path.name + suffix) for suffix in _SIDECARS]


def _check_is_demo_file_or_nothing(path: Path) -> None:
    if not path.exists():
        orphans = [str(s) for s in _sidecars(path) if s.exists()]
        if orphans:
            raise DemoFileRefused(
                f"{', '.join(orphans)} exists without {path}: not removed; "
                "delete it yourself or choose another --db"
            )
    elif not is_demo_journal(path):
        raise DemoFileRefused(
            f"{path} exists and is not a journal written by `fluvial demo`: left unchanged; "
            "choose another --db (or delete the file yourself)"
        )


def _resolved(path: Path) -> Path:
    """`path` with its symlinks followed, even to a file that does not exist yet."""
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop (RuntimeError before 3.13)
        raise DemoFileRefused(f"{path} cannot be resolved: {exc}; choose another --db") from exc


@attrs.define(eq=False)
class ServiceProcess:
    """A service of the demo running as a child process. Its lines are printed with its name;
    the last count of events it printed, its port and whether it is done shopping are kept."""

    name: str
    process: trio.Process
    events: int = 0
    port: int | None = None
    done_shopping: bool = False
    ended: bool = False
    _changed: trio.Event = attrs.field(factory=trio.Event)

    async def follow(self) -> None:
        """Print and read its lines until it closes its output."""
        assert self.process.stdout is not None
        buffer = b""
        while chunk := await self.process.stdout.receive_some():
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                self._read(line.decode(errors="replace"))
        self.ended = True
        self._notify()

    def _read(self, line: str) -> None:
        say(f"  {self.name} | {line}")
        if served := re.search(r"serving stream .* on [\d.]+:(\d+)", line):
            self.port = int(served.group(1))
        if count := re.search(r"(\d+) events", line):
            self.events = int(count.group(1))
        self.done_shopping = self.done_shopping or line.startswith("done shopping")
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        """Until `condition` holds, after one of its lines; DemoFailed if it exits first."""
        while not condition():
            if self.ended:
                raise DemoFailed(f"the {self.name} exited before {what}")
            await self._changed.wait()

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, as a crash or a power cut."""
        self.process.kill()


@asynccontextmanager
async def running(name: str, module: str, *args: str) -> AsyncIterator[ServiceProcess]:
    """Run `python -m module args` for the block; then close its stdin, which stops it (or
    kill it after 5 s). Its own process group: a Ctrl-C reaches the demo, which stops it."""
    env = {**os.environ, "PYTHONPATH": str(Path(fluvial.__file__).parents[1])}
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", module, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
        env=env,
    )
    try:
        service = ServiceProcess(name, process)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.follow)
            try:
                yield service
            finally:
                with trio.CancelScope(shield=True):
                    await _stop(process)
    finally:
        process.kill()  # does nothing to one that has exited


async def _stop(process: trio.Process) -> None:
    assert process.stdin is not None
    await process.stdin.aclose()
    with trio.move_on_after(5):
        await process.wait()
        return
    process.kill()


async def journal_view(path: Path, upto: Mapping[str, int] | None = None) -> CartsView:
    """What the consumer's read model must hold: the fold of every event in the producer's
    journal (each cart's state by the cart's own event handler), each event once.

    With `upto` (cart id -> count), only the first `count` events of those carts: what a
    consumer that has applied that many of each must hold (the crash tests' check mid-stream).
    """
    registry = register_cart(SerializerRegistry())
    events: dict[str, int] = {}
    items: dict[tuple[str, str], int] = {}
    checked_out: set[str] = set()
    async with open_sqlite_journal(path) as journal:
        if upto is None:
            pids = await journal.database.read(
                lambda c: [
                    row[0] for row in c.execute("SELECT DISTINCT persistence_id FROM event_journal")
                ]
            )
        else:
            pids = [f"{ENTITY_TYPE}|{cart_id}" for cart_id in upto]
        for pid in pids:
            cart_id = pid.split("|", 1)[1]
            state = CartState()
            last = MAX_SEQ_NR if upto is None else upto[cart_id]
            records = await journal.read_events(pid, 1, last, 1_000_000)
            for record in records:
                assert record.payload is not None
                event = registry.decode(record.payload, persistence_id=pid, seq_nr=record.seq_nr)
                state = apply_event(state, event)
            events[cart_id] = len(records)
            items.update({(cart_id, item): n for item, n in state.items.items()})
            if state.checked_out:
                checked_out.add(cart_id)
    return CartsView(events, items, frozenset(checked_out))


async def consumer_view(path: Path) -> CartsView:
    """The consumer's read model, as its file holds it."""
    async with open_sqlite_journal(path) as local:
        return await local.database.read(read_view)


async def run_demo(path: Path, carts: int) -> None:
    """Run the demo with `carts` shoppers: the journal at `path`, the consumer's file beside it.

    A symlink at `path` is resolved once, first: the journal (and SQLite's files beside it) is
    its target, replaced or refused as a file there would be, and the link is left as it is.
    Demo files already at either path are replaced; any other file there makes it raise
    `DemoFileRefused` before anything is written and before any process is started (see
    `clear_previous_demo`). Raises `DemoFailed` if a service exits early, the demo takes more
    than 120 s, or the read model is not the fold of the journal.
    """
    path = await trio.to_thread.run_sync(_resolved, path)
    reports = consumer_file(path)
    await trio.to_thread.run_sync(clear_previous_demo, path, reports)
    await trio.to_thread.run_sync(lambda: path.parent.mkdir(parents=True, exist_ok=True))
    say("fluvial demo — two services on loopback, events replicated over gRPC, no broker")
    say(f"  producer: shopping carts, journal {path}")
    say(f"  consumer: an exactly-once read model of the carts, in {reports}\n")

    with trio.move_on_after(_TIME_LIMIT) as limit:
        await _replicate(path, reports, carts)
    if limit.cancelled_caught:
        raise DemoFailed(f"the demo did not finish in {_TIME_LIMIT:.0f}s")

    expected, projected = await journal_view(path), await consumer_view(reports)
    if projected != expected:
        raise DemoFailed(
            f"the consumer's read model is not the fold of the producer's journal: "
            f"{projected.total_events} events projected, {expected.total_events} in the journal"
        )
    say(
        f"\nthe consumer's read model equals the fold of the producer's journal: "
        f"{expected.total_events} events of {len(expected.events)} carts, each applied once, "
        f"{len(expected.checked_out)} carts checked out"
    )
    say(f"done. Inspect the files with: sqlite3 {path}  /  sqlite3 {reports}")


async def _replicate(journal: Path, reports: Path, carts: int) -> None:
    producer_args = ["--db", str(journal), "--carts", str(carts), "--intro"]
    async with running("producer", "fluvial.examples.cart_producer", *producer_args) as producer:
        await producer.wait_until(lambda: producer.port is not None, "serving")
        consumer_args = ["--db", str(reports), "--port", str(producer.port)]
        consumer_module = "fluvial.examples.cart_consumer"
        async with running("consumer", consumer_module, *consumer_args) as consumer:
            await consumer.wait_until(
                lambda: (
                    consumer.events >= _KILL_AT_EVENTS
                    or (producer.done_shopping and consumer.events > 0)
                ),
                "projecting events",
            )
            consumer.kill()
            say(f"\n  demo     | SIGKILL to the consumer at {consumer.events} events projected\n")
        await trio.sleep(1)  # the producer goes on meanwhile
        say("  demo     | the consumer starts again, from the offsets it stored\n")
        async with running("consumer", consumer_module, *consumer_args) as consumer:
            await producer.wait_until(lambda: producer.done_shopping, "it was done shopping")
            await consumer.wait_until(
                lambda: consumer.events >= producer.events, "it projected every event"
            )
            say("\n  demo     | stopping both services")
