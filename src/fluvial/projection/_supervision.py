"""Tasks whose first failure ends them all and comes out as itself.

A trio nursery raises its children's exceptions in an ExceptionGroup. The runner restarts an
instance on a storage or source error and lets a `ProjectionConflict` out to the user, so it
needs the exception itself: a `Supervisor` records the first one, cancels its nursery, and
raises it once the nursery has closed. Cancellation from outside passes through unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio


class Status:
    """A task status that remembers whether the task said it has started."""

    def __init__(self, inner: trio.TaskStatus[None]) -> None:
        self._inner = inner
        self.started_ = False

    def started(self, value: None = None) -> None:
        self.started_ = True
        self._inner.started(value)


class Supervisor:
    """See the module docstring; create one with `open_supervisor`."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.failure: Exception | None = None

    def fail(self, error: Exception) -> None:
        """Record `error` (unless one came first) and cancel every task."""
        if self.failure is None:
            self.failure = error
        self._nursery.cancel_scope.cancel()

    # The projection's tasks are fluvial's: a Ctrl-C lands in the user's code, never halfway
    # through a handler, a commit or trio's start_soon (which could strand a task unscheduled).
    @trio.lowlevel.enable_ki_protection
    async def run(self, function: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run `function(*args)` in the current task; its exception ends every task."""
        try:
            await function(*args)
        except Exception as exc:
            self.fail(exc)

    def start_soon(self, function: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start `function(*args)` as a task; its exception ends every task."""
        self._nursery.start_soon(self.run, function, *args)

    async def start(self, function: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Like `nursery.start`: an exception before the task has started is raised here;
        one after it ends every task."""
        await self._nursery.start(self._started, function, args)

    @trio.lowlevel.enable_ki_protection  # see `run`
    async def _started(
        self,
        function: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        *,
        task_status: trio.TaskStatus[None],
    ) -> None:
        status = Status(task_status)
        try:
            await function(*args, task_status=status)
        except Exception as exc:
            if not status.started_:
                raise
            self.fail(exc)


@contextlib.asynccontextmanager
async def open_supervisor() -> AsyncIterator[Supervisor]:
    """A supervisor over a new nursery; the first failure is raised as itself at exit.

    The body must only start tasks and await them through the supervisor (an exception of
    the body itself would come out of the nursery in an ExceptionGroup).
    """
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery)
        yield supervisor
    if supervisor.failure is not None:
        raise supervisor.failure
