"""What docs/entities.md promises about `Effect.none()` and about when snapshots are taken
while commands are batched: an entity takes every waiting command at once, so one append can
hold several commands' events."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import pytest
import trio
import trio.testing

from fluvial.core.behavior import Command, Effect, EventSourcedBehavior, SnapshotPolicy
from fluvial.core.records import EventRecord, SnapshotRecord
from fluvial.core.serialization import SerializerRegistry
from fluvial.entity import MissingReply, open_entities
from fluvial.testing import MemoryJournal


@attrs.frozen
class Add(Command[int]):
    """Persist `Added(amount)`, reply with the new total."""

    amount: int


@attrs.frozen
class Nothing(Command[int]):
    """`CounterEffect.none()`: no events, no reply."""


@attrs.frozen
class Peek(Command[int]):
    """`CounterEffect.none().then_reply(...)`: no events, reply from the current state."""


@attrs.frozen
class Added:
    amount: int


Counted = Add | Nothing | Peek


CounterEffect = Effect[Added, int]


def on_command(total: int, command: Counted) -> CounterEffect:
    match command:
        case Add(amount):
            return CounterEffect.persist(Added(amount)).then_reply(command, lambda new: new)
        case Nothing():
            return CounterEffect.none()
        case Peek():
            return CounterEffect.none().then_reply(command, lambda current: current)


def counter(policy: SnapshotPolicy[Added]) -> EventSourcedBehavior[Counted, Added, int]:
    return EventSourcedBehavior[Counted, Added, int](
        entity_type="Counter",
        empty_state=0,
        command_handler=on_command,
        event_handler=lambda total, event: total + event.amount,
        command_types=(Add, Nothing, Peek),
        snapshot_policy=policy,
    )


REGISTRY = SerializerRegistry()
REGISTRY.register(Added, "counter.Added")
REGISTRY.register(int, "counter.Total")
PID = "Counter|c"


class RecordingJournal(MemoryJournal):
    """A memory journal that logs appends and snapshot saves in order, and whose appends
    can be held (so that commands pile up in the mailbox and form one batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, tuple[int, ...]]] = []
        self.gate: trio.Event | None = None
        self.snapshot_delay = 0.0

    async def append(self, events: Sequence[EventRecord]) -> Sequence[EventRecord]:
        if self.gate is not None:
            await self.gate.wait()
        stored = await super().append(events)
        self.log.append(("append", tuple(e.seq_nr for e in events)))
        return stored

    async def save_snapshot(self, snapshot: SnapshotRecord, *, keep: int) -> None:
        await trio.sleep(self.snapshot_delay)
        await super().save_snapshot(snapshot, keep=keep)
        self.log.append(("snapshot", (snapshot.seq_nr,)))


async def test_effect_none_persists_nothing_and_ask_raises_missing_reply() -> None:
    journal = MemoryJournal()
    Counter = counter(SnapshotPolicy())
    async with open_entities(journal, REGISTRY, [Counter]) as entities:
        ref = entities.ref(Counter, "c")
        assert await ref.ask(Add(2)) == 2
        with pytest.raises(MissingReply, match="has no reply"):
            await ref.ask(Nothing())
        # The entity goes on, unchanged; a reply from the state needs `then_reply`.
        assert await ref.ask(Peek()) == 2
        assert await ref.ask(Add(1)) == 3
    assert await journal.highest_seq_nr(PID) == 2


async def batch_of_adds(
    journal: RecordingJournal, behavior: EventSourcedBehavior[Counted, Added, int], n: int
) -> list[int]:
    """Run `Add(1)`, then `n` more `Add(1)`s that wait while its append is held: those `n`
    are decided together and persisted in one append. Returns the replies, sorted."""
    replies: list[int] = []
    async with open_entities(journal, REGISTRY, [behavior], snapshots=journal) as entities:
        ref = entities.ref(behavior, "c")
        journal.gate = trio.Event()

        async def add_one() -> None:
            replies.append(await ref.ask(Add(1)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(add_one)
            await trio.testing.wait_all_tasks_blocked()  # seq nr 1 is held in its append
            for _ in range(n):
                nursery.start_soon(add_one)
            await trio.testing.wait_all_tasks_blocked()  # the others wait in the mailbox
            journal.gate.set()
            journal.gate = None
        assert await ref.ask(Peek()) == n + 1  # waits for a snapshot the batch triggered
    return sorted(replies)


async def test_a_batch_crossing_every_takes_one_snapshot_at_its_last_seq_nr() -> None:
    journal = RecordingJournal()
    replies = await batch_of_adds(journal, counter(SnapshotPolicy(every=3)), 4)
    assert replies == [1, 2, 3, 4, 5]
    # Seq nrs 2..5 in one append cross 3: one snapshot, of the state after the whole batch
    # (seq nr 5), not one at 3.
    assert journal.log == [("append", (1,)), ("append", (2, 3, 4, 5)), ("snapshot", (5,))]
    snapshot = await journal.load_snapshot(PID)
    assert snapshot is not None
    assert REGISTRY.decode(snapshot.payload, persistence_id=PID, seq_nr=5) == 5


async def test_a_batch_crossing_two_multiples_of_every_still_takes_one_snapshot() -> None:
    journal = RecordingJournal()
    await batch_of_adds(journal, counter(SnapshotPolicy(every=2)), 4)
    assert journal.log == [("append", (1,)), ("append", (2, 3, 4, 5)), ("snapshot", (5,))]


async def test_when_in_the_middle_of_a_batch_snapshots_the_state_after_the_batch() -> None:
    journal = RecordingJournal()
    behavior = counter(SnapshotPolicy(when=lambda event: event.amount == 1))
    await batch_of_adds(journal, behavior, 3)
    assert journal.log == [
        ("append", (1,)),
        ("snapshot", (1,)),
        ("append", (2, 3, 4)),
        ("snapshot", (4,)),
    ]


async def test_the_snapshot_is_saved_before_the_next_command_is_decided(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = RecordingJournal()
    journal.snapshot_delay = 1.0  # a slow save: the next command must still wait for it
    Counter = counter(SnapshotPolicy(every=2))
    async with open_entities(journal, REGISTRY, [Counter], snapshots=journal) as entities:
        ref = entities.ref(Counter, "c")
        assert [await ref.ask(Add(1)) for _ in range(3)] == [1, 2, 3]
    assert journal.log == [
        ("append", (1,)),
        ("append", (2,)),
        ("snapshot", (2,)),
        ("append", (3,)),
    ]
