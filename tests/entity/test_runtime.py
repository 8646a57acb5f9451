"""The entity runtime, on the in-memory journal and on real SQLite files.

Tests that need to hold the runtime at a point (a write in flight, a full mailbox) use a memory
journal whose appends wait for a gate, and `trio.testing.wait_all_tasks_blocked` to know that
everything has reached that point; those never touch SQLite, whose writes run in a thread.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, assert_never, assert_type

import attrs
import msgspec
import outcome
import pytest
import trio
import trio.testing

from fluvial.core.behavior import (
    Command,
    Effect,
    EventSourcedBehavior,
    SnapshotPolicy,
)
from fluvial.core.errors import UsageError
from fluvial.core.ids import slice_for
from fluvial.core.records import EventRecord, SnapshotRecord
from fluvial.core.serialization import PayloadDecodeError, SerializerRegistry, UnknownManifest
from fluvial.entity.errors import (
    CommandFailed,
    CommandTypeError,
    EntityStopped,
    MissingReply,
    UnhandledCommand,
    UnknownEntityType,
)
from fluvial.entity.runtime import open_entities
from fluvial.examples.shopping_cart import (
    AddItem,
    CartClosed,
    CartCommand,
    CartState,
    CheckedOut,
    Checkout,
    EmptyCart,
    Get,
    ItemUpdated,
    RemoveItem,
    ShoppingCart,
    Summary,
    register_cart,
)
from fluvial.journal.api import MAX_SEQ_NR, Journal, JournalConflict, JournalError
from fluvial.journal.sqlite_journal import SqliteJournal, open_sqlite_journal
from fluvial.testing import MemoryJournal


# -- a notebook: an entity with every kind of effect --------------------------------------------
@attrs.frozen
class Note(Command[tuple[str, ...]]):
    """Persist one `Noted` per text (atomically), then reply with all texts."""

    texts: tuple[str, ...]


@attrs.frozen
class Read(Command[tuple[str, ...]]):
    pass


@attrs.frozen
class Crash(Command[None]):
    """The command handler raises."""


@attrs.frozen
class Ignore(Command[None]):
    """Effect.unhandled()."""


@attrs.frozen
class Forget(Command[None]):
    """Persist, but forget to reply."""


@attrs.frozen
class BadReply(Command[int]):
    """Persist, then raise while computing the reply."""


@attrs.frozen
class Halt(Command[str]):
    """Effect.stop(), with a reply; with `last_words`, persist them first."""

    last_words: str | None = None


NotesCommand = Note | Read | Crash | Ignore | Forget | BadReply | Halt


@attrs.frozen
class Noted:
    text: str


@attrs.frozen
class Notes:
    texts: tuple[str, ...] = ()


def notes_command(state: Notes, command: NotesCommand) -> Effect[Noted, Notes]:
    match command:
        case Note(texts):
            return Effect.persist_all(Noted(t) for t in texts).then_reply(
                command, lambda s: s.texts
            )
        case Read():
            return Effect.reply(command, state.texts)
        case Crash():
            raise RuntimeError("bug in the command handler")
        case Ignore():
            return Effect.unhandled()
        case Forget():
            return Effect.persist(Noted("forgotten"))
        case BadReply():
            return Effect.persist(Noted("bad reply")).then_reply(command, lambda s: 1 // 0)
        case Halt(last_words):
            if last_words is None:
                return Effect.stop().then_reply(command, lambda s: "halted")
            return (
                Effect.persist(Noted(last_words))
                .then_reply(command, lambda s: "halted")
                .then_stop()
            )
        case _:
            assert_never(command)


def notes_event(state: Notes, event: Noted) -> Notes:
    if event.text == "boom":
        raise ValueError("bug in the event handler")
    return Notes((*state.texts, event.text))


Notebook = EventSourcedBehavior[NotesCommand, Noted, Notes](
    entity_type="Notebook",
    empty_state=Notes(),
    command_handler=notes_command,
    event_handler=notes_event,
    command_types=(Note, Read, Crash, Ignore, Forget, BadReply, Halt),
)

REGISTRY = register_cart(SerializerRegistry())
REGISTRY.register(Noted, "notes.Noted")
REGISTRY.register(Notes, "notes.Notes")


# -- journals -----------------------------------------------------------------------------------
class GatedJournal(MemoryJournal):
    """A memory journal whose appends can be held at a gate, and which counts recoveries."""

    def __init__(self) -> None:
        super().__init__()
        self._gate: trio.Event | None = None
        self._held_pids: set[str] | None = None
        self.held = 0
        self.reads: list[tuple[str, int]] = []

    def hold(self, *persistence_ids: str) -> None:
        """Make appends (of these entities, or of all) wait until `release`."""
        self._gate = trio.Event()
        self._held_pids = set(persistence_ids) or None

    def release(self) -> None:
        assert self._gate is not None
        self._gate.set()
        self._gate = None

    async def append(self, events: Sequence[EventRecord]) -> Sequence[EventRecord]:
        gate = self._gate
        if gate is not None and (
            self._held_pids is None or events[0].persistence_id in self._held_pids
        ):
            self.held += 1
            try:
                await gate.wait()
            finally:
                self.held -= 1
        return await super().append(events)

    async def read_events(
        self, persistence_id: str, from_seq_nr: int, to_seq_nr: int, limit: int
    ) -> list[EventRecord]:
        self.reads.append((persistence_id, from_seq_nr))
        return await super().read_events(persistence_id, from_seq_nr, to_seq_nr, limit)


class Storage:
    """A journal that outlives runtimes: the same MemoryJournal, or the same SQLite file."""

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self.path = directory / "journal.db"
        self._memory = MemoryJournal()

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[MemoryJournal | SqliteJournal]:
        if self.kind == "memory":
            yield self._memory
        else:
            async with open_sqlite_journal(self.path) as journal:
                yield journal


@pytest.fixture(params=["memory", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    return Storage(request.param, tmp_path)


async def stored_events(journal: Journal, persistence_id: str) -> list[Any]:
    records = await journal.read_events(persistence_id, 1, MAX_SEQ_NR, 10_000)
    assert [r.seq_nr for r in records] == list(range(1, len(records) + 1))
    decoded = []
    for record in records:
        assert record.payload is not None
        decoded.append(
            REGISTRY.decode(record.payload, persistence_id=persistence_id, seq_nr=record.seq_nr)
        )
    return decoded


async def stored_texts(journal: Journal, entity_id: str) -> list[str]:
    return [e.text for e in await stored_events(journal, f"Notebook|{entity_id}")]


# -- typed asks and replies ---------------------------------------------------------------------
async def test_asks_return_typed_replies_and_store_events(storage: Storage) -> None:
    async with storage.open() as journal, open_entities(journal, REGISTRY, [ShoppingCart]) as ents:
        cart = ents.ref(ShoppingCart, "cart-1")
        added = await cart.ask(AddItem("apple", 2))
        assert_type(added, Summary)
        assert added == Summary({"apple": 2}, False)
        assert await cart.ask(RemoveItem("apple", 1)) == Summary({"apple": 1}, False)
        assert await cart.ask(Get()) == Summary({"apple": 1}, False)
        assert await cart.ask(Checkout()) == Summary({"apple": 1}, True)

        pid = "ShoppingCart|cart-1"
        records = await journal.read_events(pid, 1, MAX_SEQ_NR, 100)
        assert [r.seq_nr for r in records] == [1, 2, 3]
        assert {(r.entity_type, r.slice) for r in records} == {("ShoppingCart", slice_for(pid))}
        assert [r.tags for r in records] == [frozenset(), frozenset(), frozenset({"checkout"})]
        assert await stored_events(journal, pid) == [
            ItemUpdated("apple", 2),
            ItemUpdated("apple", -1),
            CheckedOut(),
        ]


async def test_a_closed_cart_refuses_changes_with_cart_closed() -> None:
    journal = MemoryJournal()
    async with open_entities(journal, REGISTRY, [ShoppingCart]) as entities:
        cart = entities.ref(ShoppingCart, "closed")
        with pytest.raises(EmptyCart):
            await cart.ask(Checkout())
        await cart.ask(AddItem("apple", 1))
        await cart.ask(Checkout())
        for command in [AddItem("pear", 1), RemoveItem("apple", 1), Checkout()]:
            with pytest.raises(CartClosed):
                await cart.ask(command)
        assert await cart.ask(Get()) == Summary({"apple": 1}, True)
    assert await stored_events(journal, "ShoppingCart|closed") == [
        ItemUpdated("apple", 1),
        CheckedOut(),
    ]


# -- ordering and concurrency -------------------------------------------------------------------
@pytest.mark.parametrize("mailbox_size", [64, 2])
async def test_commands_to_one_entity_are_handled_one_after_another_in_order(
    mailbox_size: int,
) -> None:
    journal = MemoryJournal()
    sent: list[str] = []
    replies: dict[str, Summary] = {}
    async with open_entities(journal, REGISTRY, [ShoppingCart], mailbox_size=mailbox_size) as ents:
        cart = ents.ref(ShoppingCart, "busy")

        async def caller(item: str) -> None:
            # With room in the mailbox, ask queues the command before its first checkpoint, so
            # this is the order of sending (trio runs the callers in a shuffled order).
            sent.append(item)
            replies[item] = await cart.ask(AddItem(item, 1))

        async with trio.open_nursery() as nursery:
            for k in range(40):
                nursery.start_soon(caller, f"item-{k:02}")

    order = [e.item_id for e in await stored_events(journal, "ShoppingCart|busy")]
    assert sorted(order) == sorted(sent)
    if mailbox_size == 64:  # never full: nobody waited for room
        assert order == sent
    # Each command saw exactly the commands stored before it: they ran one at a time.
    for position, item in enumerate(order):
        assert replies[item] == Summary(dict.fromkeys(order[: position + 1], 1), False)


async def test_different_entities_run_concurrently() -> None:
    journal = GatedJournal()
    journal.hold("ShoppingCart|slow")
    slow_replies: list[Summary] = []
    async with (
        open_entities(journal, REGISTRY, [ShoppingCart]) as entities,
        trio.open_nursery() as nursery,
    ):

        async def slow_caller() -> None:
            slow_replies.append(await entities.ref(ShoppingCart, "slow").ask(AddItem("a", 1)))

        nursery.start_soon(slow_caller)
        await trio.testing.wait_all_tasks_blocked()
        assert journal.held == 1

        with trio.fail_after(5):  # would hang if entities shared one task
            fast = await entities.ref(ShoppingCart, "fast").ask(AddItem("b", 1))
        assert fast == Summary({"b": 1}, False)
        assert slow_replies == []
        assert entities.live_count == 2
        journal.release()
    assert slow_replies == [Summary({"a": 1}, False)]


# -- recovery -----------------------------------------------------------------------------------
async def test_state_is_recovered_after_the_runtime_is_reopened(storage: Storage) -> None:
    async with storage.open() as journal, open_entities(journal, REGISTRY, [ShoppingCart]) as ents:
        cart = ents.ref(ShoppingCart, "cart-1")
        await cart.ask(AddItem("apple", 2))
        await cart.ask(AddItem("\U0001f600", 1))
        await ents.ref(ShoppingCart, "cart-2").ask(AddItem("pear", 5))
        await cart.ask(Checkout())

    async with storage.open() as journal, open_entities(journal, REGISTRY, [ShoppingCart]) as ents:
        assert ents.live_count == 0
        cart = ents.ref(ShoppingCart, "cart-1")
        assert await cart.ask(Get()) == Summary({"apple": 2, "\U0001f600": 1}, True)
        with pytest.raises(CartClosed):
            await cart.ask(AddItem("fig", 1))
        other = ents.ref(ShoppingCart, "cart-2")
        assert await other.ask(AddItem("pear", 1)) == Summary({"pear": 6}, False)
        assert len(await stored_events(journal, "ShoppingCart|cart-2")) == 2


SnappyCart = attrs.evolve(ShoppingCart, snapshot_policy=SnapshotPolicy(every=3, keep=2))


async def test_snapshots_are_taken_by_policy_and_kept_up_to_keep(storage: Storage) -> None:
    pid = "ShoppingCart|snappy"
    async with (
        storage.open() as journal,
        open_entities(journal, REGISTRY, [SnappyCart], snapshots=journal) as entities,
    ):
        cart = entities.ref(SnappyCart, "snappy")
        for n in range(1, 11):
            await cart.ask(AddItem(f"item-{n}", 1))
            # The snapshot is saved after the reply; the entity's next command waits for it.
            await cart.ask(Get())
            latest = await journal.load_snapshot(pid)
            assert (latest.seq_nr if latest else None) == (3 * (n // 3) or None)

        # Snapshots at 3, 6 and 9; keep=2 deleted the one at 3.
        assert await journal.load_snapshot(pid, max_seq_nr=5) is None
        at_6 = await journal.load_snapshot(pid, max_seq_nr=8)
        at_9 = await journal.load_snapshot(pid)
        assert at_6 is not None
        assert at_9 is not None
        assert at_6.seq_nr == 6
        assert at_9.seq_nr == 9
        expected = CartState({f"item-{n}": 1 for n in range(1, 10)})
        assert REGISTRY.decode(at_9.payload, persistence_id=pid, seq_nr=9) == expected
        assert (at_9.entity_type, at_9.slice) == ("ShoppingCart", slice_for(pid))


async def test_the_cart_snapshots_at_checkout() -> None:
    journal = MemoryJournal()
    async with open_entities(journal, REGISTRY, [ShoppingCart], snapshots=journal) as entities:
        cart = entities.ref(ShoppingCart, "c")
        await cart.ask(AddItem("apple", 1))
        await cart.ask(Get())
        assert await journal.load_snapshot("ShoppingCart|c") is None
        await cart.ask(Checkout())
        await cart.ask(Get())  # the snapshot is saved after the reply, before the next command
    snapshot = await journal.load_snapshot("ShoppingCart|c")
    assert snapshot is not None
    assert snapshot.seq_nr == 2


async def test_recovery_starts_from_the_snapshot_and_reads_only_later_events() -> None:
    journal = GatedJournal()
    pid = "ShoppingCart|snappy"
    async with open_entities(journal, REGISTRY, [SnappyCart], snapshots=journal) as entities:
        cart = entities.ref(SnappyCart, "snappy")
        for n in range(1, 8):
            await cart.ask(AddItem(f"item-{n}", 1))
    assert journal.reads == [(pid, 1)]

    async with open_entities(journal, REGISTRY, [SnappyCart], snapshots=journal) as entities:
        summary = await entities.ref(SnappyCart, "snappy").ask(Get())
    assert summary == Summary({f"item-{n}": 1 for n in range(1, 8)}, False)
    assert journal.reads == [(pid, 1), (pid, 7)]  # the snapshot at 6, then event 7


async def test_recovery_uses_the_stored_snapshot_state(storage: Storage) -> None:
    pid = "ShoppingCart|snappy"
    async with (
        storage.open() as journal,
        open_entities(journal, REGISTRY, [SnappyCart], snapshots=journal) as entities,
    ):
        cart = entities.ref(SnappyCart, "snappy")
        for n in range(1, 8):
            await cart.ask(AddItem(f"item-{n}", 1))
        # Replace the snapshot at 6 by one whose state no fold of the events gives: if
        # recovery reads it, the marker shows; if it replays events 1..6, it does not.
        await journal.save_snapshot(
            SnapshotRecord(
                persistence_id=pid,
                seq_nr=6,
                entity_type="ShoppingCart",
                slice=slice_for(pid),
                payload=REGISTRY.encode(CartState({"from-snapshot": 42})),
            ),
            keep=2,
        )

    async with (
        storage.open() as journal,
        open_entities(journal, REGISTRY, [SnappyCart], snapshots=journal) as entities,
    ):
        cart = entities.ref(SnappyCart, "snappy")
        assert await cart.ask(Get()) == Summary({"from-snapshot": 42, "item-7": 1}, False)
        # And the seq nrs continue after the events, not after the snapshot.
        await cart.ask(AddItem("item-8", 1))
        assert len(await stored_events(journal, pid)) == 8


# -- passivation --------------------------------------------------------------------------------
async def test_an_idle_entity_leaves_memory_and_comes_back_with_its_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = GatedJournal()
    async with open_entities(journal, REGISTRY, [ShoppingCart], passivate_after=60) as entities:
        cart = entities.ref(ShoppingCart, "idle")
        await trio.sleep(7)
        await cart.ask(AddItem("apple", 2))
        # Activity keeps it: 50 s later, another command restarts the idle time.
        await trio.sleep(50)
        await cart.ask(AddItem("pear", 1))
        last = trio.current_time()

        await trio.sleep_until(last + 60 - 0.001)
        assert entities.live_count == 1  # never before 60 s of idleness
        # Idle entities are looked for every quarter of passivate_after.
        await trio.sleep_until(last + 60 * 1.25 + 0.001)
        assert entities.live_count == 0
        assert len(journal.reads) == 1

        assert await cart.ask(Get()) == Summary({"apple": 2, "pear": 1}, False)
        assert entities.live_count == 1
        assert len(journal.reads) == 2  # it was recovered from the journal again


async def test_an_entity_busy_with_a_command_is_not_passivated(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = GatedJournal()
    async with (
        open_entities(journal, REGISTRY, [ShoppingCart], passivate_after=10) as entities,
        trio.open_nursery() as nursery,
    ):
        cart = entities.ref(ShoppingCart, "busy")
        await cart.ask(AddItem("apple", 1))
        journal.hold()
        nursery.start_soon(cart.ask, AddItem("pear", 1))
        await trio.sleep(100)  # its append waits all this time
        assert entities.live_count == 1
        journal.release()
        await trio.sleep(1)
        assert await cart.ask(Get()) == Summary({"apple": 1, "pear": 1}, False)
        assert len(journal.reads) == 1


# -- failures leave no trace --------------------------------------------------------------------
async def test_a_failing_command_handler_gives_command_failed_and_changes_nothing() -> None:
    journal = MemoryJournal()
    async with open_entities(journal, REGISTRY, [Notebook]) as entities:
        notes = entities.ref(Notebook, "n")
        await notes.ask(Note(("first",)))
        with pytest.raises(CommandFailed) as raised:
            await notes.ask(Crash())
        assert not raised.value.persisted
        assert raised.value.persistence_id == "Notebook|n"
        assert isinstance(raised.value.__cause__, RuntimeError)
        assert await notes.ask(Read()) == ("first",)


async def test_an_event_handler_failing_on_the_second_event_persists_and_applies_nothing() -> None:
    journal = MemoryJournal()
    async with open_entities(journal, REGISTRY, [Notebook]) as entities:
        notes = entities.ref(Notebook, "n")
        await notes.ask(Note(("first",)))
        with pytest.raises(CommandFailed) as raised:
            await notes.ask(Note(("second", "boom")))
        assert not raised.value.persisted
        assert isinstance(raised.value.__cause__, ValueError)
        assert await notes.ask(Read()) == ("first",)
        assert await stored_texts(journal, "n") == ["first"]
        # The seq nrs go on without a gap.
        assert await notes.ask(Note(("third",))) == ("first", "third")
    assert await stored_texts(journal, "n") == ["first", "third"]


async def test_a_failing_command_in_a_batch_leaves_the_others_to_succeed_in_order() -> None:
    journal = GatedJournal()
    outcomes: dict[str, object] = {}
    async with (
        open_entities(journal, REGISTRY, [Notebook]) as entities,
        trio.open_nursery() as nursery,
    ):
        notes = entities.ref(Notebook, "n")

        async def send(name: str, command: NotesCommand) -> None:
            try:
                outcomes[name] = await notes.ask(command)
            except Exception as exc:
                outcomes[name] = type(exc)

        journal.hold()
        # The first command's write is held; the others queue behind it and are then decided
        # together, as one batch.
        batch: list[tuple[str, NotesCommand]] = [
            ("first", Note(("first",))),
            ("x", Note(("x",))),
            ("crash", Crash()),
            ("boom", Note(("y", "boom"))),
            ("z", Note(("z",))),
        ]
        for name, command in batch:
            nursery.start_soon(send, name, command)
            await trio.testing.wait_all_tasks_blocked()
        journal.release()

    assert outcomes == {
        "first": ("first",),
        "x": ("first", "x"),
        "crash": CommandFailed,
        "boom": CommandFailed,
        "z": ("first", "x", "z"),
    }
    assert await stored_texts(journal, "n") == ["first", "x", "z"]


async def test_a_failing_reply_function_fails_the_ask_after_persisting() -> None:
    journal = MemoryJournal()
    async with open_entities(journal, REGISTRY, [Notebook]) as entities:
        notes = entities.ref(Notebook, "n")
        with pytest.raises(CommandFailed) as raised:
            await notes.ask(BadReply())
        assert raised.value.persisted
        assert isinstance(raised.value.__cause__, ZeroDivisionError)
        assert await notes.ask(Read()) == ("bad reply",)


async def test_unhandled_command_raises_and_changes_nothing() -> None:
    journal = MemoryJournal()
    async with open_entities(journal, REGISTRY, [Notebook]) as entities:
        notes = entities.ref(Notebook, "n")
        await notes.ask(Note(("first",)))
        with pytest.raises(UnhandledCommand):
            await notes.ask(Ignore())
        assert await notes.ask(Read()) == ("first",)
    assert await stored_texts(journal, "n") == ["first"]


async def test_an_effect_without_reply_raises_missing_reply_but_persists() -> None:
    journal = MemoryJournal()
    async with open_entities(journal, REGISTRY, [Notebook]) as entities:
        notes = entities.ref(Notebook, "n")
        with pytest.raises(MissingReply):
            await notes.ask(Forget())
        assert await notes.ask(Read()) == ("forgotten",)
    assert await stored_texts(journal, "n") == ["forgotten"]


async def test_a_conflicting_writer_fails_the_ask_and_the_entity_reloads(
    storage: Storage,
) -> None:
    pid = "ShoppingCart|c"
    async with (
        storage.open() as journal,
        open_entities(journal, REGISTRY, [ShoppingCart]) as entities,
    ):
        cart = entities.ref(ShoppingCart, "c")
        await cart.ask(AddItem("apple", 1))
        # Another writer (another process, say) stores seq nr 2 behind this entity's back.
        other = ItemUpdated("pear", 5)
        await journal.append(
            [EventRecord(pid, 2, "ShoppingCart", slice_for(pid), REGISTRY.encode(other))]
        )
        with pytest.raises(JournalConflict):
            await cart.ask(AddItem("fig", 1))
        assert await cart.ask(Get()) == Summary({"apple": 1, "pear": 5}, False)
        assert await cart.ask(AddItem("fig", 1)) == Summary(
            {"apple": 1, "pear": 5, "fig": 1}, False
        )
        assert await stored_events(journal, pid) == [
            ItemUpdated("apple", 1),
            other,
            ItemUpdated("fig", 1),
        ]


async def test_after_a_failed_write_no_reply_reports_the_unstored_events() -> None:
    journal = GatedJournal()
    pid = "ShoppingCart|c"
    outcomes: dict[str, object] = {}
    async with (
        open_entities(journal, REGISTRY, [ShoppingCart]) as entities,
        trio.open_nursery() as nursery,
    ):
        cart = entities.ref(ShoppingCart, "c")

        async def send(name: str, command: CartCommand) -> None:
            try:
                outcomes[name] = await cart.ask(command)
            except Exception as exc:
                outcomes[name] = type(exc)

        await cart.ask(AddItem("apple", 1))
        journal.hold()
        # "x" is held in its write (seq nr 2); the others queue and form the next batch.
        queued: list[tuple[str, CartCommand]] = [
            ("x", AddItem("x", 1)),
            ("get before", Get()),
            ("pear", AddItem("pear", 1)),
            ("get after", Get()),
        ]
        for name, command in queued:
            nursery.start_soon(send, name, command)
            await trio.testing.wait_all_tasks_blocked()
        journal.release()  # "x" is written; the next batch is held in turn
        journal.hold()
        await trio.testing.wait_all_tasks_blocked()
        assert journal.held == 1
        # Meanwhile another writer takes seq nr 3, which "pear" is about to be written at.
        other = ItemUpdated("kiwi", 1)
        record = EventRecord(pid, 3, "ShoppingCart", slice_for(pid), REGISTRY.encode(other))
        await MemoryJournal.append(journal, [record])
        journal.release()

    assert outcomes["x"] == Summary({"apple": 1, "x": 1}, False)
    assert outcomes["get before"] == Summary({"apple": 1, "x": 1}, False)
    assert outcomes["pear"] is JournalConflict
    # Decided after "pear", which was never stored: it must not report the pear.
    assert outcomes["get after"] is JournalConflict
    assert await stored_events(journal, pid) == [
        ItemUpdated("apple", 1),
        ItemUpdated("x", 1),
        other,
    ]


class BrokenJournal(MemoryJournal):
    """A memory journal that can be made to fail every append and read, like a lost disk."""

    broken = False

    async def append(self, events: Sequence[EventRecord]) -> Sequence[EventRecord]:
        if self.broken:
            raise JournalError("the disk is gone")
        return await super().append(events)

    async def read_events(
        self, persistence_id: str, from_seq_nr: int, to_seq_nr: int, limit: int
    ) -> list[EventRecord]:
        if self.broken:
            raise JournalError("the disk is gone")
        return await super().read_events(persistence_id, from_seq_nr, to_seq_nr, limit)


async def test_a_journal_failure_fails_the_ask_and_the_entity_recovers_later() -> None:
    journal = BrokenJournal()
    async with open_entities(journal, REGISTRY, [Notebook]) as entities:
        notes = entities.ref(Notebook, "n")
        await notes.ask(Note(("a",)))
        journal.broken = True
        with pytest.raises(JournalError):
            await notes.ask(Note(("b",)))
        with pytest.raises(JournalError):  # a new incarnation cannot recover either
            await notes.ask(Read())
        journal.broken = False
        assert await notes.ask(Read()) == ("a",)
        assert await notes.ask(Note(("c",))) == ("a", "c")
    assert await stored_texts(journal, "n") == ["a", "c"]


def _fussy(event: Noted) -> bool:
    if event.text == "fuss":
        raise RuntimeError("bug in the snapshot predicate")
    return False


FussyNotebook = attrs.evolve(Notebook, snapshot_policy=SnapshotPolicy(when=_fussy))


async def test_a_failing_snapshot_predicate_does_not_stop_the_runtime() -> None:
    journal = MemoryJournal()
    async with open_entities(journal, REGISTRY, [FussyNotebook], snapshots=journal) as entities:
        notes = entities.ref(FussyNotebook, "n")
        assert await notes.ask(Note(("fuss",))) == ("fuss",)  # stored before the predicate ran
        assert await notes.ask(Note(("calm",))) == ("fuss", "calm")
        assert await entities.ref(FussyNotebook, "other").ask(Note(("x",))) == ("x",)
    assert await stored_texts(journal, "n") == ["fuss", "calm"]
    assert await journal.load_snapshot("Notebook|n") is None


async def test_an_unreadable_snapshot_falls_back_to_the_events() -> None:
    journal = MemoryJournal()
    pid = "ShoppingCart|snappy"
    async with open_entities(journal, REGISTRY, [SnappyCart], snapshots=journal) as entities:
        for n in range(1, 5):
            await entities.ref(SnappyCart, "snappy").ask(AddItem(f"item-{n}", 1))
    snapshot = await journal.load_snapshot(pid)
    assert snapshot is not None
    assert snapshot.seq_nr == 3
    garbage = msgspec.structs.replace(snapshot.payload, data=b"\xc1")
    await journal.save_snapshot(msgspec.structs.replace(snapshot, payload=garbage), keep=2)

    async with open_entities(journal, REGISTRY, [SnappyCart], snapshots=journal) as entities:
        summary = await entities.ref(SnappyCart, "snappy").ask(Get())
    assert summary == Summary({f"item-{n}": 1 for n in range(1, 5)}, False)


class SnapshotsFailing(MemoryJournal):
    async def save_snapshot(self, snapshot: SnapshotRecord, *, keep: int) -> None:
        raise JournalError("the snapshot table is full")


async def test_a_failing_snapshot_save_does_not_fail_the_commands() -> None:
    journal = SnapshotsFailing()
    async with open_entities(journal, REGISTRY, [SnappyCart], snapshots=journal) as entities:
        cart = entities.ref(SnappyCart, "c")
        for n in range(1, 8):
            assert await cart.ask(AddItem("apple", 1)) == Summary({"apple": n}, False)
    assert len(await stored_events(journal, "ShoppingCart|c")) == 7


async def test_a_caller_cancelled_after_sending_may_still_see_its_command_carried_out() -> None:
    journal = GatedJournal()
    async with (
        open_entities(journal, REGISTRY, [Notebook]) as entities,
        trio.open_nursery() as nursery,
    ):
        notes = entities.ref(Notebook, "n")
        journal.hold()
        impatient = trio.CancelScope()

        async def send() -> None:
            with impatient:
                await notes.ask(Note(("a",)))

        nursery.start_soon(send)
        await trio.testing.wait_all_tasks_blocked()
        impatient.cancel()
        await trio.testing.wait_all_tasks_blocked()
        journal.release()
        assert await notes.ask(Note(("b",))) == ("a", "b")
    assert impatient.cancelled_caught


@pytest.mark.parametrize(
    ("mailbox_size", "passivate_after"),
    [
        (0, 1.0),
        (-1, 1.0),
        (2.5, 1.0),
        (True, 1.0),
        ("8", 1.0),
        (1, 0.0),
        (1, -1.0),
        (1, float("nan")),
        (1, "60"),
        (1, None),
    ],
)
def test_open_entities_refuses_bad_numbers_at_the_call(
    mailbox_size: Any, passivate_after: Any
) -> None:
    # At the call, not at `async with`, and not later inside an entity task.
    with pytest.raises(UsageError):
        open_entities(
            MemoryJournal(),
            REGISTRY,
            [Notebook],
            mailbox_size=mailbox_size,
            passivate_after=passivate_after,
        )


def test_open_entities_refuses_two_behaviors_of_one_entity_type() -> None:
    with pytest.raises(UsageError, match="'ShoppingCart'"):
        open_entities(MemoryJournal(), REGISTRY, [ShoppingCart, Notebook, SnappyCart])


def test_open_entities_refuses_what_is_not_a_behavior() -> None:
    with pytest.raises(UsageError, match="not an EventSourcedBehavior"):
        open_entities(MemoryJournal(), REGISTRY, [ShoppingCart, "Notebook"])  # type: ignore[list-item]


# -- stopping -----------------------------------------------------------------------------------
async def test_after_stop_the_next_command_starts_a_new_incarnation() -> None:
    journal = GatedJournal()
    async with open_entities(journal, REGISTRY, [Notebook]) as entities:
        notes = entities.ref(Notebook, "n")
        await notes.ask(Note(("a",)))
        assert await notes.ask(Halt()) == "halted"
        await trio.testing.wait_all_tasks_blocked()
        assert entities.live_count == 0
        assert await notes.ask(Read()) == ("a",)
        assert await notes.ask(Note(("b",))) == ("a", "b")
        assert entities.live_count == 1
    assert len(journal.reads) == 2
    assert await stored_texts(journal, "n") == ["a", "b"]


async def test_an_entity_that_persists_then_stops_comes_back_with_those_events(
    storage: Storage,
) -> None:
    async with (
        storage.open() as journal,
        open_entities(journal, REGISTRY, [Notebook]) as entities,
    ):
        notes = entities.ref(Notebook, "n")
        await notes.ask(Note(("a",)))
        assert await notes.ask(Halt(last_words="b")) == "halted"
        assert entities.live_count == 0
        assert await notes.ask(Read()) == ("a", "b")
        assert await notes.ask(Note(("c",))) == ("a", "b", "c")
        assert await stored_texts(journal, "n") == ["a", "b", "c"]


async def test_commands_queued_behind_a_stop_go_to_the_next_incarnation_in_order() -> None:
    journal = GatedJournal()
    replies: dict[str, object] = {}
    async with (
        open_entities(journal, REGISTRY, [Notebook]) as entities,
        trio.open_nursery() as nursery,
    ):
        notes = entities.ref(Notebook, "n")

        async def send(name: str, command: NotesCommand) -> None:
            replies[name] = await notes.ask(command)

        journal.hold()
        # "a" is held in its write; the rest queue behind it and are taken as one batch.
        queued: list[tuple[str, NotesCommand]] = [
            ("a", Note(("a",))),
            ("halt", Halt()),
            ("b", Note(("b",))),
            ("read", Read()),
        ]
        for name, command in queued:
            nursery.start_soon(send, name, command)
            await trio.testing.wait_all_tasks_blocked()
        journal.release()

    assert replies == {"a": ("a",), "halt": "halted", "b": ("a", "b"), "read": ("a", "b")}
    assert len(journal.reads) == 2  # "b" and "read" were handled by a recovered incarnation


# -- backpressure -------------------------------------------------------------------------------
async def test_a_full_mailbox_makes_further_callers_wait() -> None:
    journal = GatedJournal()
    replies: dict[str, tuple[str, ...]] = {}
    third = trio.CancelScope()
    async with (
        open_entities(journal, REGISTRY, [Notebook], mailbox_size=1) as entities,
        trio.open_nursery() as nursery,
    ):
        notes = entities.ref(Notebook, "n")

        async def send(text: str) -> None:
            replies[text] = await notes.ask(Note((text,)))

        async def send_third() -> None:
            with third:
                await send("3")

        journal.hold()
        nursery.start_soon(send, "1")  # taken by the entity, whose write is held
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(send, "2")  # fills the mailbox
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(send_third)  # must wait for room
        await trio.testing.wait_all_tasks_blocked()
        assert (journal.held, replies) == (1, {})
        # Cancelled while waiting for room, the third command was never sent: had it been
        # queued, the entity would carry it out although its caller gave up.
        third.cancel()
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(send, "4")
        await trio.testing.wait_all_tasks_blocked()
        journal.release()

    assert third.cancelled_caught
    assert replies == {"1": ("1",), "2": ("1", "2"), "4": ("1", "2", "4")}
    assert await stored_texts(journal, "n") == ["1", "2", "4"]


# -- misuse -------------------------------------------------------------------------------------
async def test_a_command_of_another_entity_type_is_refused() -> None:
    journal = MemoryJournal()
    async with open_entities(journal, REGISTRY, [ShoppingCart, Notebook]) as entities:
        cart = entities.ref(ShoppingCart, "c")
        with pytest.raises(CommandTypeError):
            await cart.ask(Note(("x",)))
        untyped = entities.ref_by_type("Notebook", "n")
        with pytest.raises(CommandTypeError):
            await untyped.ask(Get())
        assert entities.live_count == 0
        assert await untyped.ask(Note(("x",))) == ("x",)


async def test_an_entity_type_not_given_to_open_entities_is_unknown() -> None:
    journal = MemoryJournal()
    async with open_entities(journal, REGISTRY, [ShoppingCart]) as entities:
        with pytest.raises(UnknownEntityType):
            entities.ref(Notebook, "n")
        with pytest.raises(UnknownEntityType):
            entities.ref(SnappyCart, "c")  # same name, but not the behavior that was given
        with pytest.raises(UnknownEntityType):
            entities.ref_by_type("Notebook", "n")
        by_name = entities.ref_by_type("ShoppingCart", "c")
        assert await by_name.ask(AddItem("apple", 1)) == Summary({"apple": 1}, False)


# -- corrupt data -------------------------------------------------------------------------------
def tamper(path: Path, sql: str, *params: object) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute(sql, params).rowcount == 1
        conn.commit()


def stored_row(path: Path, persistence_id: str, seq_nr: int) -> tuple[Any, ...]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        row: tuple[Any, ...] = conn.execute(
            "SELECT manifest, payload FROM event_journal WHERE persistence_id = ? AND seq_nr = ?",
            (persistence_id, seq_nr),
        ).fetchone()
        return row


@pytest.mark.parametrize(
    ("column", "value", "error"),
    [("payload", b"\xc1\xc1", PayloadDecodeError), ("manifest", "cart.Gone", UnknownManifest)],
)
async def test_a_corrupt_stored_event_fails_the_ask_and_stays_stored(
    tmp_path: Path, column: str, value: object, error: type[Exception]
) -> None:
    path = tmp_path / "journal.db"
    pid = "ShoppingCart|damaged"
    async with (
        open_sqlite_journal(path) as journal,
        open_entities(journal, REGISTRY, [ShoppingCart]) as entities,
    ):
        for item in ["a", "b", "c"]:
            await entities.ref(ShoppingCart, "damaged").ask(AddItem(item, 1))
        await entities.ref(ShoppingCart, "fine").ask(AddItem("a", 1))
    tamper(
        path,
        f"UPDATE event_journal SET {column} = ? WHERE persistence_id = ? AND seq_nr = 2",
        value,
        pid,
    )

    async with (
        open_sqlite_journal(path) as journal,
        open_entities(journal, REGISTRY, [ShoppingCart]) as entities,
    ):
        damaged = entities.ref(ShoppingCart, "damaged")
        for _attempt in range(2):  # every ask tries recovery again, and fails again
            with pytest.raises(error) as raised:
                await damaged.ask(AddItem("d", 1))
            assert isinstance(raised.value, PayloadDecodeError | UnknownManifest)
            assert (raised.value.persistence_id, raised.value.seq_nr) == (pid, 2)
            assert f"{pid} seq nr 2" in str(raised.value)
        fine = entities.ref(ShoppingCart, "fine")
        assert await fine.ask(AddItem("b", 1)) == Summary({"a": 1, "b": 1}, False)
        assert await journal.highest_seq_nr(pid) == 3

    manifest, payload = stored_row(path, pid, 2)
    assert value in (manifest, payload)


# -- closing ------------------------------------------------------------------------------------
class ManualJournal(MemoryJournal):
    """A journal with `append_soon` (as SQLite has) whose appends complete when told to."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[Sequence[EventRecord], Any]] = []

    def append_soon(self, events: Sequence[EventRecord], on_done: Any) -> None:
        self.pending.append((events, on_done))

    async def complete_all(self) -> None:
        pending, self.pending = self.pending, []
        for events, on_done in pending:
            on_done(await outcome.acapture(self.append, events))


async def test_commands_behind_a_stop_are_stopped_when_its_events_commit_after_closing() -> None:
    journal = ManualJournal()
    replies: dict[str, object] = {}
    with trio.fail_after(10):
        async with trio.open_nursery() as callers:
            async with open_entities(journal, REGISTRY, [Notebook]) as entities:
                notes = entities.ref(Notebook, "n")

                async def send(name: str, command: NotesCommand) -> None:
                    try:
                        replies[name] = await notes.ask(command)
                    except EntityStopped:
                        replies[name] = "stopped"

                # "a" is out to the journal; "halt" and "after" wait, then go as one batch.
                queued: list[tuple[str, NotesCommand]] = [
                    ("a", Note(("a",))),
                    ("halt", Halt("b")),
                    ("after", Read()),
                ]
                for name, command in queued:
                    callers.start_soon(send, name, command)
                    await trio.testing.wait_all_tasks_blocked()
                await journal.complete_all()
                await trio.testing.wait_all_tasks_blocked()
                assert len(journal.pending) == 1, "the halt's events are out"
            # The runtime is closed; the halt's events commit only now.
            await journal.complete_all()
    assert replies == {"a": ("a",), "halt": "halted", "after": "stopped"}
    assert await stored_texts(journal, "n") == ["a", "b"]


async def test_closing_the_runtime_stops_waiting_asks_and_leaves_no_task() -> None:
    journal = GatedJournal()
    stopped: list[str] = []
    # A caller nobody answers would wait forever: fail instead.
    with trio.fail_after(10):
        async with (
            trio.open_nursery() as callers,
            open_entities(journal, REGISTRY, [Notebook], mailbox_size=1) as entities,
        ):
            notes = entities.ref(Notebook, "n")

            async def send(text: str) -> None:
                try:
                    await notes.ask(Note((text,)))
                except EntityStopped:
                    stopped.append(text)

            journal.hold()
            for text in ["in the write", "in the mailbox", "waiting for room"]:
                callers.start_soon(send, text)
                await trio.testing.wait_all_tasks_blocked()
            assert journal.held == 1
    # The runtime is closed; its entity tasks are gone, and every caller was answered.
    assert sorted(stopped) == ["in the mailbox", "in the write", "waiting for room"]
    with pytest.raises(EntityStopped):
        await notes.ask(Note(("too late",)))
    assert await journal.highest_seq_nr("Notebook|n") == 0
