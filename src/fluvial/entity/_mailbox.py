"""The entity's mailbox and the reply slot of one command, each a `SingleWaiter`.

An ask costs two task switches: the entity wakes for the mail, and the caller wakes with the
reply, which the journal's commit callback sends (see `fluvial._wakeup` for why not trio's
memory channels or Events).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Coroutine
from typing import Any

import outcome
import trio

from fluvial._wakeup import SingleWaiter
from fluvial.entity._errors import EntityStopped


class MailboxClosed(EntityStopped):
    """The entity behind this mailbox stopped; deliver to its next incarnation.

    The runtime catches it; were it ever to reach a caller, it would be what it means there:
    the entity stopped.
    """


class Ask(SingleWaiter):
    """One command on its way to an entity, and the slot its answer goes to; its caller waits
    on it for the answer.

    The answer travels in the caller's wake-up (the outcome trio resumes it with), so that the
    wait is trio's own coroutine: an `async def reply` around it cost a coroutine per command.
    An answer that comes while nobody waits is kept for the next `reply`.
    """

    __slots__ = ("_answer", "command")

    def __init__(self, command: object) -> None:
        self._task = None  # `SingleWaiter.__init__`, without a call per command
        self.command = command
        self._answer: outcome.Outcome[Any] | None = None  # kept while nobody waits

    @property
    def answered(self) -> bool:
        """Whether the reply (or the error) is set."""
        return self._answer is not None

    def answer(self, value: object) -> None:
        """Set the reply and wake the caller; a later answer or failure is ignored."""
        # `_settle`, written out: one call less per command.
        if self._answer is None:
            task = self._task
            if task is None:
                self._answer = outcome.Value(value)
            else:
                self._answer, self._task = _DELIVERED, None
                trio.lowlevel.reschedule(task, outcome.Value(value))

    def fail(self, error: BaseException) -> None:
        """Set the error the caller raises and wake it; a later answer or failure is ignored."""
        self._settle(outcome.Error(error))

    def _settle(self, answer: outcome.Outcome[Any]) -> None:
        if self._answer is None:
            task = self._task
            if task is None:
                self._answer = answer  # nobody waits (yet): `reply` takes it
            else:
                # Not kept here: the caller's frame holds this ask, and an error's traceback
                # that frame.
                self._answer, self._task = _DELIVERED, None
                trio.lowlevel.reschedule(task, answer)

    def reply(self) -> Coroutine[Any, Any, Any]:
        """The reply, or raise the error: `await ask.reply()`, at once, in the caller's task.
        A cancelled caller stops waiting; the command is carried out all the same (see
        `EntityRef.ask`). Not an `async def`: see `SingleWaiter.wait`."""
        answer = self._answer
        if answer is None:
            return self.wait()
        self._answer = _DELIVERED
        return _answered(answer)


# What an ask keeps once its answer went to its caller: answered, and nothing held.
_DELIVERED: outcome.Outcome[Any] = outcome.Value(None)


async def _answered(answer: outcome.Outcome[Any]) -> Any:
    """An answer that came before its caller waited: a checkpoint, then the answer."""
    await trio.lowlevel.checkpoint()
    try:
        return answer.unwrap()
    finally:
        del answer  # an error's traceback holds this frame: no cycle through it


class Mailbox:
    """A bounded queue of asks with one receiver (the entity task) and many senders."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: deque[Ask] = deque()
        self._receiver = SingleWaiter()  # the entity task, waiting for mail
        self._room = trio.lowlevel.ParkingLot()
        self.closed = False
        # Set, the receiver waits, mail or not, until `release` (while a write is out).
        self.held = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def idle(self) -> bool:
        """The entity is waiting for mail, none is queued, and nothing holds it."""
        return self._receiver.waiting and not self._items and not self.held

    def release(self) -> None:
        """Let the receiver take its mail again, waking it if some is queued."""
        self.held = False
        if self._items:
            self._receiver.wake()

    async def put(self, ask: Ask) -> None:
        """Queue `ask`, waiting while the mailbox is full. Raises MailboxClosed."""
        while len(self._items) >= self._capacity and not self.closed:
            await self._room.park()
        if self.closed:
            raise MailboxClosed
        self.put_nowait(ask)

    @trio.lowlevel.enable_ki_protection  # called from callers' tasks: never half done
    def offer(self, ask: Ask) -> bool:
        """Queue `ask` if there is room; False if the mailbox is full or closed."""
        items = self._items
        if len(items) >= self._capacity or self.closed:
            return False
        items.append(ask)  # `put_nowait`, written out: one call less per command
        if not self.held:
            self._receiver.wake()
        return True

    @trio.lowlevel.enable_ki_protection  # called from callers' tasks: never half done
    def put_nowait(self, ask: Ask) -> None:
        """Queue `ask` regardless of capacity (for commands handed over on a restart)."""
        if self.closed:
            raise MailboxClosed
        self._items.append(ask)
        if not self.held:
            self._receiver.wake()

    async def take_all(self) -> list[Ask]:
        """Every queued ask, waiting while none is queued or the mailbox is held. Returns []
        once closed."""
        if (self.held or not self._items) and not self.closed:
            await self._receiver.wait()
        batch = list(self._items)
        self._items.clear()
        # Senders wait for room only while the mailbox holds `capacity` asks or more, and it
        # only grows until taken: a smaller batch leaves none waiting (and `if self._room`
        # is a Python call per batch).
        if len(batch) >= self._capacity:
            self._room.unpark_all()
        return batch

    def close(self) -> list[Ask]:
        """Stop accepting asks; wake the receiver and waiting senders; return queued asks."""
        self.closed = True
        leftovers = list(self._items)
        self._items.clear()
        self._room.unpark_all()
        self._receiver.wake()
        return leftovers
