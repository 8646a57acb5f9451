"""Receive-and-handle loops that end when a receive waits past its deadline (a heartbeat's,
a short batch's, a silent stream's), under one cancel scope for many receives.

A stream's tasks wait for their next message under a deadline, and a cancel scope per receive
(`trio.move_on_at`) costs ~58,000 instructions under callgrind, about two scheduler turns;
moving the deadline of one scope that stays open, there and back around a receive, costs about
half of that, and a new scope is needed only when a deadline passes.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

_T = TypeVar("_T")


async def handle_until_idle(
    receive: Callable[[], Awaitable[_T]],
    handle: Callable[[_T], Awaitable[object]],
    deadline: Callable[[], float],
) -> None:
    """`await handle(await receive())` again and again; return once a `receive` has waited
    until `deadline()` (asked before each receive; inf: no deadline) without a value.

    Only the receive is under the deadline: `handle` is never cut short by it (a send cut
    short would lose what it sent, or break its call), and a value that comes just as the
    deadline passes is handled before this returns. A deadline that passed while `handle`
    ran goes before a value that waits already, as under a new `move_on_at`. Errors of either
    come out as themselves.
    """
    while True:
        with trio.CancelScope() as waiting:
            while True:
                at = deadline()
                if at <= trio.current_time():
                    # An open scope's deadline set in the past cancels only at the next
                    # scheduler turn: a value waiting already would be received first.
                    return
                # Set only when it changes: a set costs about a quarter of a new scope.
                if at != waiting.deadline:
                    waiting.deadline = at
                value = await receive()
                # The deadline may have passed after the value came and before this task ran
                # on: the scope is cancelled then, and `handle` would raise Cancelled in it.
                if waiting.cancel_called:
                    break
                if waiting.deadline != math.inf:
                    waiting.deadline = math.inf
                await handle(value)
        if waiting.cancelled_caught:
            return
        await handle(value)
