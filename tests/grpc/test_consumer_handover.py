"""The consumer stream's hand-over to the runner (`_Handover`): in order, the resume offset
moved past what the runner took, a batch given at once from the receiving task when nothing
waits before it, and nothing given by a cancelled put."""

from __future__ import annotations

import trio
import trio.testing

from fluvial.core.envelope_source import EnvelopeSource
from fluvial.core.offsets import TimestampOffset
from fluvial.grpc._consumer_stream import _Handover
from fluvial.projection.api import Batch, SourceMessage
from schedule_points import assert_no_schedule_points

LIVE = EnvelopeSource.LIVE


def batch() -> Batch:
    """A batch told apart from others by identity: its records do not matter here."""
    return ([], LIVE)


class Runner:
    """The runner's channel and the offsets the hand-over moved."""

    def __init__(self, capacity: int, *, reading_on: bool = False) -> None:
        self.send, self.receive = trio.open_memory_channel[SourceMessage](capacity)
        self.moved: list[TimestampOffset] = []
        self.reading_on = reading_on
        self.handover = _Handover(self.send, self.moved.append, lambda: self.reading_on)

    def taken(self) -> list[SourceMessage]:
        taken = []
        while True:
            try:
                taken.append(self.receive.receive_nowait())
            except trio.WouldBlock:
                return taken


async def test_with_nothing_waiting_a_batch_goes_at_once_from_the_receiving_task() -> None:
    runner = Runner(1)
    first, offset = batch(), TimestampOffset(7)
    with trio.fail_after(5), assert_no_schedule_points():
        await runner.handover.put(first, offset)  # no `serve` runs
    assert runner.moved == [offset]
    [taken] = runner.taken()
    assert taken is first


async def test_a_cancelled_put_gave_nothing_and_moved_no_offset() -> None:
    runner = Runner(1)
    with trio.CancelScope() as scope:
        scope.cancel()
        await runner.handover.put(batch(), TimestampOffset(7))
    assert scope.cancelled_caught
    assert runner.taken() == []
    assert runner.moved == []


async def test_a_batch_put_while_another_waits_for_the_runner_goes_after_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runner = Runner(1, reading_on=True)  # put returns at once, the batch queued for `serve`
    earlier = batch()
    runner.send.send_nowait(earlier)  # the runner's channel is full
    first, second = batch(), batch()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.handover.serve)
        await runner.handover.put(first, TimestampOffset(1))  # queued: no room
        # The runner takes one before `serve` ran: there is room as `second` comes.
        assert runner.receive.receive_nowait() is earlier
        await runner.handover.put(second, TimestampOffset(2))
        await trio.testing.wait_all_tasks_blocked()
        assert runner.receive.receive_nowait() is first
        await trio.testing.wait_all_tasks_blocked()
        assert runner.receive.receive_nowait() is second
        nursery.cancel_scope.cancel()
    assert runner.moved == [TimestampOffset(1), TimestampOffset(2)]


async def test_while_not_reading_on_a_put_waits_until_the_runner_took_its_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runner = Runner(0)  # nobody receives yet: no room
    first = batch()
    returned_at: list[float] = []

    async def put() -> None:
        await runner.handover.put(first, None)
        returned_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.handover.serve)
        nursery.start_soon(put)
        await trio.sleep(10)
        assert returned_at == []
        assert await runner.receive.receive() is first
        await trio.testing.wait_all_tasks_blocked()
        assert returned_at == [10]
        nursery.cancel_scope.cancel()
