"""The asyncio bridge: one shared loop, trio cancels reach asyncio, errors come out as they are."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import trio
import trio.lowlevel

from fluvial.grpc._asyncio_bridge import (
    _BRIDGE,
    AsyncioReader,
    asyncio_bridge_is_open,
    iterate_asyncio,
    open_asyncio_bridge,
    run_asyncio,
    run_asyncio_eagerly,
    run_trio,
)


def _loop_id() -> int:
    bridge = _BRIDGE.get()
    assert bridge is not None
    return id(bridge.loop)


async def _running_loop_id() -> int:
    return id(asyncio.get_running_loop())


async def test_an_asyncio_coroutine_runs_on_the_bridges_loop_and_returns_its_value() -> None:
    async with open_asyncio_bridge():
        assert await run_asyncio(_running_loop_id) == _loop_id()

        async def add(a: int, b: int) -> int:
            await asyncio.sleep(0)
            return a + b

        assert await run_asyncio(add, 2, b=3) == 5
    assert not asyncio_bridge_is_open()


async def test_nested_and_concurrent_users_share_one_loop_which_outlives_its_opener() -> None:
    loops: list[int] = []
    opener_left = trio.Event()
    other_entered = trio.Event()

    async def opener() -> None:
        async with open_asyncio_bridge():
            loops.append(_loop_id())
            async with open_asyncio_bridge():  # nested in the same task
                loops.append(_loop_id())
            await other_entered.wait()
        opener_left.set()  # reached only once the other user has left too

    async def other() -> None:
        await trio.sleep(0.01)  # after the opener opened the loop
        async with open_asyncio_bridge():
            other_entered.set()
            await trio.sleep(0.05)
            assert not opener_left.is_set()  # the opener waits at its exit for this user
            loops.append(await run_asyncio(_running_loop_id))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(opener)
        nursery.start_soon(other)
    assert len(set(loops)) == 1 and len(loops) == 3
    assert opener_left.is_set() and not asyncio_bridge_is_open()


async def test_a_new_loop_opens_after_the_last_user_left() -> None:
    async with open_asyncio_bridge():
        first = _loop_id()
    async with open_asyncio_bridge():
        assert await run_asyncio(_running_loop_id) == _loop_id()
        assert _BRIDGE.get() is not None
    del first  # ids of dead objects may be reused: only "it works again" is the promise


async def test_a_trio_cancel_cancels_the_asyncio_side_and_raises_cancelled() -> None:
    seen: list[str] = []

    async def wait_long() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("asyncio side cancelled")
            raise
        seen.append("finished")  # pragma: no cover

    async with open_asyncio_bridge():
        with trio.move_on_after(0.05) as scope:
            await run_asyncio(wait_long)
        assert scope.cancelled_caught  # the call raised trio.Cancelled
        assert seen == ["asyncio side cancelled"]


async def test_an_asyncio_side_that_finishes_despite_the_cancel_returns_its_result() -> None:
    async def stubborn() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return "done anyway"
        return "not reached"  # pragma: no cover

    async with open_asyncio_bridge():
        with trio.CancelScope() as scope:
            scope.cancel()
            result = await run_asyncio(stubborn)
            assert result == "done anyway"  # it did something: it does not raise Cancelled


async def test_an_asyncio_exception_comes_out_as_itself() -> None:
    error = KeyError("from asyncio")

    async def fail() -> None:
        await asyncio.sleep(0)
        raise error

    async with open_asyncio_bridge():
        with pytest.raises(KeyError) as raised:
            await run_asyncio(fail)
    assert raised.value is error


async def test_an_eager_call_that_need_not_wait_completes_in_the_calling_trio_task() -> None:
    async def where(label: str) -> tuple[str, trio.lowlevel.Task, int]:
        return label, trio.lowlevel.current_task(), id(asyncio.get_running_loop())

    async with open_asyncio_bridge():
        label, task, loop = await run_asyncio_eagerly(where, "here")
        # Run by the loop, it would see the loop's own trio task.
        assert (label, task, loop) == ("here", trio.lowlevel.current_task(), _loop_id())


async def test_an_eager_call_goes_on_as_an_asyncio_task_once_it_waits() -> None:
    async def add_later(a: int, b: int) -> tuple[int, trio.lowlevel.Task, trio.lowlevel.Task]:
        before = trio.lowlevel.current_task()
        await asyncio.sleep(0)
        return a + b, before, trio.lowlevel.current_task()

    async with open_asyncio_bridge():
        total, before, after = await run_asyncio_eagerly(add_later, 2, b=3)
    assert total == 5
    assert before is trio.lowlevel.current_task() and after is not before


async def test_an_eager_call_is_cancelled_as_run_asyncio_is_and_its_errors_are_themselves() -> None:
    seen: list[str] = []

    async def wait_long() -> None:
        seen.append("started")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("asyncio side cancelled")
            raise

    error = KeyError("from asyncio")

    async def fail(wait: bool) -> None:
        if wait:
            await asyncio.sleep(0)
        raise error

    async with open_asyncio_bridge():
        with trio.move_on_after(0.05) as scope:
            await run_asyncio_eagerly(wait_long)
        assert scope.cancelled_caught and seen == ["started", "asyncio side cancelled"]
        with trio.CancelScope() as scope:
            scope.cancel()
            await run_asyncio_eagerly(wait_long)  # cancelled already: nothing runs
        assert scope.cancelled_caught and seen == ["started", "asyncio side cancelled"]
        for wait in (False, True):
            with pytest.raises(KeyError) as raised:
                await run_asyncio_eagerly(fail, wait)
            assert raised.value is error


async def test_an_eager_call_from_a_task_that_does_not_see_the_loop_runs_on_the_loop() -> None:
    """trio-asyncio finds the loop in the trio task's context: a task started before the
    bridge opened has none, so asyncio code run in it would not find the loop."""
    answers: list[int] = []
    go, done = trio.Event(), trio.Event()

    async def started_before() -> None:
        await go.wait()
        answers.append(await run_asyncio_eagerly(_running_loop_id))
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(started_before)
        async with open_asyncio_bridge():
            go.set()
            await done.wait()
            assert answers == [_loop_id()]


class _Numbers:
    """An asyncio source of 1, 2, ... `last` (then `after`: an error, or more numbers), each
    once its gate opens; counts its calls."""

    def __init__(self, last: int, after: BaseException | None = None) -> None:
        self.last, self.after = last, after
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def next(self) -> int:
        self.calls += 1
        await self.gate.wait()
        await asyncio.sleep(0)
        if self.calls > self.last and self.after is not None:
            raise self.after
        return self.calls


async def test_a_reader_reads_in_order_two_ahead_and_repeats_the_last_result() -> None:
    numbers = _Numbers(last=3)
    reader = AsyncioReader(numbers.next, lambda n: n == 3)
    async with open_asyncio_bridge():
        assert await reader.receive() == 1
        await trio.sleep(0.05)  # the reader has all the time it wants to read on
        assert numbers.calls == 3  # 2 and 3 read and waiting, nothing more asked
        assert [await reader.receive() for _ in range(4)] == [2, 3, 3, 3]
        assert numbers.calls == 3
        await run_asyncio(reader.stop)


async def test_a_cancelled_receive_takes_nothing_and_an_error_comes_out_as_itself() -> None:
    error = KeyError("the stream broke")
    numbers = _Numbers(last=1, after=error)
    reader = AsyncioReader(numbers.next, lambda n: False)
    numbers.gate.clear()  # 1 waits for it
    async with open_asyncio_bridge():
        with trio.move_on_after(0.05) as scope:
            await reader.receive()
        assert scope.cancelled_caught
        numbers.gate.set()
        assert await reader.receive() == 1  # read after the cancel, not lost
        for _ in range(2):
            with pytest.raises(KeyError) as raised:
                await reader.receive()
            assert raised.value is error


async def test_stopping_a_reader_cancels_its_asyncio_task() -> None:
    numbers = _Numbers(last=5)
    reader = AsyncioReader(numbers.next, lambda n: False)
    async with open_asyncio_bridge():
        assert await reader.receive() == 1
        await trio.sleep(0.01)  # 2 and 3 read
        await run_asyncio(reader.stop)
        assert await reader.receive() == 2  # read before the stop
        await trio.sleep(0.05)
        assert numbers.calls == 3  # nothing reads any more
        with pytest.raises(asyncio.CancelledError):
            await reader.receive()


async def test_iterating_an_asyncio_iterator_from_trio_and_cancelling_it() -> None:
    closed: list[str] = []

    async def numbers(stop: int | None) -> AsyncIterator[int]:
        n = 0
        try:
            while stop is None or n < stop:
                yield n
                n += 1
                await asyncio.sleep(0.01 if stop is None else 0)
        finally:
            closed.append("closed")

    async with open_asyncio_bridge():
        assert [n async for n in iterate_asyncio(numbers(5))] == [0, 1, 2, 3, 4]
        got: list[int] = []
        with trio.move_on_after(0.2) as scope:
            async for n in iterate_asyncio(numbers(None)):
                got.append(n)
        assert scope.cancelled_caught and got[:3] == [0, 1, 2]


async def test_trio_code_runs_from_asyncio_and_its_errors_and_cancels_cross_back() -> None:
    cancelled: list[str] = []

    async def trio_side(x: int, *, times: int = 2) -> int:
        await trio.lowlevel.checkpoint()
        if x < 0:
            raise ValueError("negative")
        return x * times

    async def trio_forever() -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append("trio side cancelled")
            raise

    async def asyncio_side() -> tuple[int, str]:
        doubled = await run_trio(trio_side, 21)
        assert await run_trio(trio_side, 21, times=3) == 63
        try:
            await run_trio(trio_side, -1)
        except ValueError as error:
            message = str(error)
        task = asyncio.ensure_future(run_trio(trio_forever))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return doubled, message

    async with open_asyncio_bridge():
        assert await run_asyncio(asyncio_side) == (42, "negative")
    assert cancelled == ["trio side cancelled"]


async def test_the_helpers_refuse_to_run_outside_the_bridge() -> None:
    async def nothing() -> None:
        pass

    with pytest.raises(RuntimeError, match="open_asyncio_bridge"):
        await run_asyncio(nothing)


def test_importing_fluvial_leaves_asyncio_alone() -> None:
    """trio-asyncio patches asyncio's policy functions when imported: only fluvial.grpc may."""
    import subprocess
    import sys

    code = (
        "import asyncio, sys; before = asyncio.get_event_loop_policy\n"
        "import fluvial\n"
        "print('trio_asyncio' in sys.modules, 'grpclib' in sys.modules,"
        " asyncio.get_event_loop_policy is before)"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded == ["False", "False", "True"]
