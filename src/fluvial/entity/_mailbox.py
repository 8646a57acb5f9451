"""The entity's mailbox and the reply slot of one command, each a `SingleWaiter`.

An ask costs two task switches: the entity wakes for the mail, and the caller wakes with the
reply, which the journal's commit callback sends (see `fluvial._wakeup` for why not trio's
memory channels or Events).
"""

from __future__ import annotations

from collections import deque
from typing import Any

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
    on it for the answer."""

    __slots__ = ("_error", "_settled", "_value", "command")

    def __init__(self, command: object) -> None:
        self._task = None  # `SingleWaiter.__init__`, without a call per command
        self.command = command
        self._settled = False
        self._value: Any = None
        self._error: BaseException | None = None

    @property
    def answered(self) -> bool:
        """Whether the reply (or the error) is set."""
        return self._settled

    def answer(self, value: object) -> None:
        """Set the reply and wake the caller; a later answer or failure is ignored."""
        if not self._settled:
            self._settled, self._value = True, value
            self.wake()

    def fail(self, error: BaseException) -> None:
        """Set the error the caller raises and wake it; a later answer or failure is ignored."""
        if not self._settled:
            self._settled, self._error = True, error
            self.wake()

    async def reply(self) -> Any:
        """The reply, or raise the error. A cancelled caller stops waiting; the command is
        carried out all the same (see `EntityRef.ask`)."""
        if self._settled:
            await trio.lowlevel.checkpoint()
        else:
            await self.wait()
        if self._error is None:
            return self._value
        error, self._error = self._error, None
        try:
            raise error
        finally:
            del error  # the traceback holds this frame: no cycle through it


class Mailbox:
    """A bounded queue of asks with one receiver (the entity task) and many senders."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: deque[Ask] = deque()
        self._receiver = SingleWaiter()  # the entity task, waiting for mail
        self._room = trio.lowlevel.ParkingLot()
        self.closed = False
        self.held = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def idle(self) -> bool:
        """The entity is waiting for mail, none is queued, and nothing holds it."""
        return self._receiver.waiting and not self._items and not self.held

    def hold(self) -> None:
        """Keep the receiver waiting, mail or not, until `release` (while a write is out)."""
        self.held = True

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
        if len(self._items) >= self._capacity or self.closed:
            return False
        self.put_nowait(ask)
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
        if self._room:
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
