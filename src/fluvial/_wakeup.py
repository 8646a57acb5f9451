"""Waking waiting tasks: `SingleWaiter`, where one task waits until another wakes it,
`Signal`, a counter of occurrences (commits, appends) that any number of tasks wait to see move,
and `send_eagerly`, a memory channel's send that hands over without a schedule point.

A command parks and wakes two tasks (the entity for its mail, the caller for its reply), so
`SingleWaiter` uses trio's low-level parking directly: a trio Event or memory channel adds a
schedule point to every send and receive, which doubled the cost of a command in the entity
benchmark. `Signal` is notified on every commit, so notifying nobody costs an increment and a
test, and its Event exists only while some task waits.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

import trio

_T = TypeVar("_T")


class SingleWaiter:
    """A place where at most one task at a time waits until `wake`."""

    __slots__ = ("_task",)

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None

    @property
    def waiting(self) -> bool:
        """Whether a task waits here now."""
        return self._task is not None

    def wake(self) -> None:
        """Wake the waiting task, if any; a wake with no task waiting is lost."""
        task = self._task
        if task is not None:
            self._task = None
            trio.lowlevel.reschedule(task)

    def wait(self) -> Coroutine[Any, Any, None]:
        """Wait until `wake`: `await waiter.wait()`, at once, in the task that waits (it is
        the task calling `wait` that `wake` reschedules). Cancelled, the wait leaves no trace
        (a later wake is lost).

        Not an `async def`: the caller awaits trio's own coroutine, one coroutine less per
        wait; the entity benchmark under callgrind measured 0.6% of a command's instructions
        for that (two waits per command)."""
        assert self._task is None, "a second task waits on a SingleWaiter"
        self._task = trio.lowlevel.current_task()
        return trio.lowlevel.wait_task_rescheduled(self._abort)  # noqa: ASYNC105 (see above)

    def _abort(self, _raise_cancel: Any) -> trio.lowlevel.Abort:
        self._task = None
        return trio.lowlevel.Abort.SUCCEEDED


class Signal:
    """A count of occurrences; tasks wait for it to move past the count they saw."""

    __slots__ = ("_moved", "count")

    def __init__(self) -> None:
        self.count = 0
        self._moved: trio.Event | None = None  # exists only while some task waits

    def notify(self, occurrences: int = 1) -> None:
        """Count `occurrences` more and wake every waiting task (0 wakes them all the same: a
        spurious wake-up, which `wait` allows)."""
        self.count += occurrences
        moved = self._moved
        if moved is not None:
            self._moved = None
            moved.set()

    async def wait(self, seen: int, *, at_most: float | None = None) -> None:
        """Return once `count` differs from `seen` (at once if it does now), or after `at_most`
        seconds: a poll, for occurrences that notify nobody here (other processes' commits to a
        shared file). Callers look again after it returns: a wake-up may be spurious."""
        if self.count != seen:
            await trio.lowlevel.checkpoint()
            return
        if self._moved is None:
            self._moved = trio.Event()
        moved = self._moved
        if at_most is None:
            await moved.wait()
            return
        with trio.move_on_after(at_most):
            await moved.wait()


async def send_eagerly(channel: trio.MemorySendChannel[_T], value: _T) -> None:
    """`await channel.send(value)`, but when `value` can go at once (a task waits to receive
    it, or the buffer has room) it is no schedule point: it raises Cancelled first if this
    task is cancelled (as `trio.lowlevel.checkpoint_if_cancelled`), else hands `value` over
    and runs on. Otherwise it is `channel.send`: cancelled, it sent nothing.

    For a task that hands a value on and then waits for its next one: trio's `send` would
    give up the CPU in between, a scheduler turn (~30,000 instructions under callgrind) that
    gains nothing there, since the task's next wait is a schedule point anyway."""
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        channel.send_nowait(value)
    except trio.WouldBlock:
        await channel.send(value)
