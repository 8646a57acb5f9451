"""`handle_until_idle`: each received value handled, the deadline only over the receive, and
a value that comes as the deadline passes handled all the same."""

from __future__ import annotations

import trio
import trio.testing

from fluvial.grpc._idle import handle_until_idle


async def test_it_handles_what_comes_and_returns_at_the_first_deadline_a_receive_waited_past(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, receive = trio.open_memory_channel[int](0)
    handled: list[tuple[int, float]] = []

    async def handle(value: int) -> None:
        handled.append((value, trio.current_time()))

    async def produce() -> None:
        for value in (1, 2, 3):
            await trio.sleep(4)  # each within the 5 s its receive waits at most
            await send.send(value)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(produce)
        await handle_until_idle(receive.receive, handle, lambda: trio.current_time() + 5)
        # Idle 5 s after it began to wait for a fourth, however long the three took.
        assert trio.current_time() == 17
    assert handled == [(1, 4), (2, 8), (3, 12)]


async def test_handling_is_not_under_the_deadline(autojump_clock: trio.testing.MockClock) -> None:
    send, receive = trio.open_memory_channel[int](1)
    send.send_nowait(1)
    handled: list[int] = []

    async def handle(value: int) -> None:
        await trio.sleep(60)  # far past the deadline of the receive that brought it
        handled.append(value)

    await handle_until_idle(receive.receive, handle, lambda: trio.current_time() + 5)
    assert handled == [1]
    assert trio.current_time() == 65


async def test_a_value_that_comes_as_the_deadline_passes_is_handled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handled: list[int] = []
    values = [1, 2]

    async def receive() -> int:
        if not values:
            await trio.sleep_forever()
        value = values.pop(0)
        # The value is taken (as a memory channel's receive of a waiting send: then a yield
        # that cannot be cancelled), and the deadline passes before this task runs on.
        autojump_clock.jump(10)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return value

    async def handle(value: int) -> None:
        await trio.lowlevel.checkpoint()
        handled.append(value)

    await handle_until_idle(receive, handle, lambda: trio.current_time() + 5)
    assert handled == [1, 2]
    assert trio.current_time() == 25  # the third receive waited its 5 s


async def test_errors_come_out_as_themselves() -> None:
    async def receive() -> int:
        return 1

    async def handle(value: int) -> None:
        raise KeyError(value)

    try:
        await handle_until_idle(receive, handle, lambda: trio.current_time() + 5)
    except KeyError as error:
        assert error.args == (1,)
    else:
        raise AssertionError("no KeyError")


async def test_a_deadline_that_passed_while_handling_goes_before_values_that_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # As a short batch that is due goes before query batches ready behind it.
    send, receive = trio.open_memory_channel[int](10)
    for value in range(5):
        send.send_nowait(value)
    handled: list[int] = []

    async def handle(value: int) -> None:
        await trio.sleep(3)
        handled.append(value)

    await handle_until_idle(receive.receive, handle, lambda: 5.0)  # an absolute deadline
    assert handled == [0, 1]  # the second ended at 6, past it
    assert trio.current_time() == 6
