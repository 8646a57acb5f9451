"""The waiting primitives: a task parked on a `SingleWaiter` until woken, tasks waiting for a
`Signal`'s count to move (or, polling, at most a given time), and `send_eagerly`."""

from __future__ import annotations

import functools

import pytest
import trio
import trio.testing

from fluvial._wakeup import Signal, SingleWaiter, send_eagerly
from schedule_points import assert_no_schedule_points


async def test_a_waiter_returns_once_woken_and_waits_no_more() -> None:
    waiter = SingleWaiter()
    woken: list[str] = []

    async def wait() -> None:
        await waiter.wait()
        woken.append("woken")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        assert waiter.waiting and woken == []
        waiter.wake()
        assert not waiter.waiting
        waiter.wake()  # nobody waits now: lost, not a second reschedule of the task
    assert woken == ["woken"]


async def test_a_wake_with_nobody_waiting_is_lost(autojump_clock: trio.abc.Clock) -> None:
    waiter = SingleWaiter()
    waiter.wake()
    with trio.move_on_after(60) as scope:
        await waiter.wait()
    assert scope.cancelled_caught


async def test_a_cancelled_wait_leaves_no_trace_and_the_next_wait_is_woken() -> None:
    waiter = SingleWaiter()
    with trio.move_on_after(0):
        await waiter.wait()
    assert not waiter.waiting
    waiter.wake()  # would reschedule a task that is not waiting, were the cancel remembered

    async def wait() -> None:
        await waiter.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        waiter.wake()


async def test_a_signal_wait_returns_at_once_if_the_count_moved_past_what_was_seen(
    autojump_clock: trio.abc.Clock,
) -> None:
    signal = Signal()
    seen = signal.count
    signal.notify()
    with trio.fail_after(60), trio.testing.assert_checkpoints():
        await signal.wait(seen)
    assert signal.count == seen + 1


async def test_a_notify_wakes_every_waiter_and_counts_its_occurrences(
    autojump_clock: trio.abc.Clock,
) -> None:
    signal = Signal()
    woken: list[int] = []

    async def wait(index: int) -> None:
        await signal.wait(0)
        woken.append(index)

    with trio.fail_after(60):  # virtual time: jumps once every task waits
        async with trio.open_nursery() as nursery:
            for index in range(3):
                nursery.start_soon(wait, index)
            await trio.testing.wait_all_tasks_blocked()
            assert woken == []
            signal.notify(2)
    assert sorted(woken) == [0, 1, 2]
    assert signal.count == 2
    # Woken once, not for good: the next wait waits for the next notify.
    with trio.move_on_after(60) as scope:
        await signal.wait(2)
    assert scope.cancelled_caught


async def test_notifying_no_occurrence_wakes_the_waiters_spuriously(
    autojump_clock: trio.abc.Clock,
) -> None:
    signal = Signal()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(signal.wait, 0)
            await trio.testing.wait_all_tasks_blocked()
            signal.notify(0)
    assert signal.count == 0


async def test_a_signal_wait_without_a_poll_waits_for_a_notify(
    autojump_clock: trio.abc.Clock,
) -> None:
    signal = Signal()
    with trio.move_on_after(3600) as scope:
        await signal.wait(0)
    assert scope.cancelled_caught


async def test_a_polling_wait_returns_after_at_most_its_interval(
    autojump_clock: trio.abc.Clock,
) -> None:
    signal = Signal()
    started = trio.current_time()
    with trio.fail_after(60):
        await signal.wait(0, at_most=0.5)
    assert trio.current_time() - started == 0.5
    assert signal.count == 0


async def test_a_notify_ends_a_polling_wait_before_its_interval(
    autojump_clock: trio.abc.Clock,
) -> None:
    signal = Signal()
    with trio.fail_after(60):  # before the poll, an hour later
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(signal.wait, 0, at_most=3600))
            await trio.testing.wait_all_tasks_blocked()
            signal.notify()
    assert signal.count == 1


async def test_an_eager_send_to_a_waiting_receiver_hands_over_without_a_schedule_point() -> None:
    send, receive = trio.open_memory_channel[int](0)
    received: list[int] = []

    async def take() -> None:
        received.append(await receive.receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take)
        await trio.testing.wait_all_tasks_blocked()
        with assert_no_schedule_points():
            await send_eagerly(send, 1)
    assert received == [1]


async def test_an_eager_send_with_no_room_waits_for_it(autojump_clock: trio.abc.Clock) -> None:
    send, receive = trio.open_memory_channel[int](1)
    await send_eagerly(send, 1)  # room in the buffer: at once
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_eagerly, send, 2)
        await trio.sleep(1)
        assert receive.receive_nowait() == 1
        await trio.testing.wait_all_tasks_blocked()
        assert receive.receive_nowait() == 2


async def test_a_cancelled_eager_send_sent_nothing(autojump_clock: trio.abc.Clock) -> None:
    send, receive = trio.open_memory_channel[int](1)
    with trio.CancelScope() as scope:
        scope.cancel()
        await send_eagerly(send, 1)  # room in the buffer, but cancelled first
    send.send_nowait(2)  # the buffer's one place was left free
    with trio.move_on_after(1):
        await send_eagerly(send, 3)  # no room: it waits, and is cancelled there
    send.close()
    assert [value async for value in receive] == [2]


async def test_an_eager_send_to_a_closed_receiver_raises_as_a_send_does() -> None:
    send, receive = trio.open_memory_channel[int](0)
    receive.close()
    with pytest.raises(trio.BrokenResourceError):
        await send_eagerly(send, 1)
