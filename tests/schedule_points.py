"""`assert_no_schedule_points`: the current task did not give up the CPU in a block.

trio's `assert_no_checkpoints` counts cancel points too, which the eager hand-overs keep (as
`trio.lowlevel.checkpoint_if_cancelled`): this counts the task's steps only."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio


class _StepsOf(trio.abc.Instrument):
    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.count = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.count += 1


@contextmanager
def assert_no_schedule_points() -> Iterator[None]:
    """Fail if the current task gave up the CPU (a schedule point) inside the block."""
    steps = _StepsOf(trio.lowlevel.current_task())
    trio.lowlevel.add_instrument(steps)
    try:
        yield
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert steps.count == 0, f"the block gave up the CPU {steps.count} time(s)"
