"""Failures leave no trace: failing handlers, journals and snapshots, on the memory journal
(held at a gate where a write must be in flight) and on SQLite."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import msgspec
import pytest
import trio
import trio.testing

from entity.entity_fixtures import (
    REGISTRY,
    BadReply,
    Crash,
    Forget,
    GatedJournal,
    Ignore,
    Note,
    Notebook,
    Noted,
    NotesCommand,
    Read,
    SnappyCart,
    Storage,
    ask_recording,
    stored_events,
    stored_texts,
)
from fluvial.core.behavior import SnapshotPolicy
from fluvial.core.ids import slice_for
from fluvial.core.records import EventRecord, SnapshotRecord
from fluvial.entity import CommandFailed, MissingReply, UnhandledCommand, open_entities
from fluvial.examples.shopping_cart import (
    AddItem,
    CartCommand,
    Get,
    ItemUpdated,
    ShoppingCart,
    Summary,
)
from fluvial.journal.api import JournalConflict, JournalError
from fluvial.testing import MemoryJournal


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
            nursery.start_soon(ask_recording, notes, outcomes, name, command)
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
            nursery.start_soon(ask_recording, cart, outcomes, name, command)
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


async def test_after_a_failed_write_the_commands_that_failed_on_its_events_share_its_error() -> (
    None
):
    # Unhandled in a state, or raising in it: that state held events that were never stored,
    # so the answer the caller gets is the write's error, not what the unstored state said.
    journal = GatedJournal()
    pid = "Notebook|n"
    outcomes: dict[str, object] = {}
    async with (
        open_entities(journal, REGISTRY, [Notebook]) as entities,
        trio.open_nursery() as nursery,
    ):
        notes = entities.ref(Notebook, "n")

        journal.hold()
        queued: list[tuple[str, NotesCommand]] = [
            ("a", Note(("a",))),  # held in its write (seq nr 1); the others form the next batch
            ("ignored before", Ignore()),
            ("b", Note(("b",))),
            ("ignored after", Ignore()),
            ("crash after", Crash()),
        ]
        for name, command in queued:
            nursery.start_soon(ask_recording, notes, outcomes, name, command)
            await trio.testing.wait_all_tasks_blocked()
        journal.release()
        journal.hold()
        await trio.testing.wait_all_tasks_blocked()
        assert journal.held == 1
        other = Noted("other writer")
        record = EventRecord(pid, 2, "Notebook", slice_for(pid), REGISTRY.encode(other))
        await MemoryJournal.append(journal, [record])
        journal.release()

    assert outcomes == {
        "a": ("a",),
        "ignored before": UnhandledCommand,
        "b": JournalConflict,
        "ignored after": JournalConflict,
        "crash after": JournalConflict,
    }
    assert await stored_texts(journal, "n") == ["a", "other writer"]


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
