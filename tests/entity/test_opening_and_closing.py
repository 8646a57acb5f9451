"""`open_entities`: the arguments it refuses at the call, and what closing the runtime does to
commands still on their way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import outcome
import pytest
import trio
import trio.testing

from entity.entity_fixtures import (
    REGISTRY,
    GatedJournal,
    Halt,
    Note,
    Notebook,
    NotesCommand,
    Read,
    SnappyCart,
    stored_texts,
)
from fluvial.core.errors import UsageError
from fluvial.core.records import EventRecord
from fluvial.entity import EntityStopped, open_entities
from fluvial.examples.shopping_cart import ShoppingCart
from fluvial.testing import MemoryJournal


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
