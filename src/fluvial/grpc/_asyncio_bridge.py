"""The one module of fluvial that owns the asyncio bridge.

grpclib is an asyncio library and fluvial is trio. fluvial runs grpclib on one asyncio loop per
process (per `trio.run`), provided by trio-asyncio on top of trio's own scheduler. Everything in
fluvial that crosses between the two worlds goes through the four functions of this module, so that
no asyncio type reaches fluvial's public API and the bridge can be replaced here alone:

- `open_asyncio_bridge()`: the async context manager that opens the loop. Every fluvial
  `open_*` / `serve_*` that needs asyncio enters it; nested and concurrent users share one loop.
  The first to enter opens it; it stays open while any user is inside; the context that opened
  it waits, at its exit, for the other users to leave (shielded: a loop cannot close under a
  running grpclib server). Outside every `open_asyncio_bridge`, the helpers raise RuntimeError.
- `run_asyncio(fn, *args)`: from trio, run the asyncio coroutine function `fn(*args)` as a task
  of the loop and wait for it. A trio cancel cancels that task and waits until it has finished;
  if it finished by being cancelled, the call raises `trio.Cancelled` (the asyncio side was
  interrupted, as a trio call that raises Cancelled is: a grpclib send cut short this way leaves
  its stream unusable, which is why a stream is reset after a cancelled send). Any other
  exception of the asyncio side comes out as itself.
- `run_asyncio_eagerly(fn, *args)`: the same, but `fn`'s coroutine runs in the calling trio
  task until it first has to wait, and only the rest, if any, as an asyncio task: for calls
  that mostly complete at once (a grpclib server's send within the flow-control window), it
  saves the task and the two turns of the loop that start it and report its end.
- `AsyncioReader(fn, last)`: from trio, the results of calling the asyncio coroutine function
  `fn()` again and again (a grpclib stream's next message), called by one asyncio task that
  reads one result ahead of what trio has taken: one task for a whole stream of messages, and
  a message that has arrived wakes the trio side at once, instead of a task per message and
  two turns of the loop to start it and report its end.
- `iterate_asyncio(iterator)`: from trio, iterate an asyncio async iterator (a grpclib stream),
  one `run_asyncio` per item, with the same cancellation.
- `run_trio(fn, *args, **kwargs)`: from asyncio (a grpclib handler), run the trio function
  `fn(*args, **kwargs)` in a trio task and await its result; cancelling the asyncio task
  (grpclib does when the peer resets the stream or the server closes) cancels the trio task.

The risk this module contains: trio-asyncio works by replacing asyncio's event loop policy and
`get_event_loop` / `get_running_loop` functions when it is imported (process-wide), and the
policy API is deprecated (Python 3.14) and due for removal in Python 3.16. Only this module
imports trio_asyncio, and `import fluvial` does not import this module: a program that does not
use fluvial.grpc keeps the stock asyncio.

How to replace it by an asyncio loop in a thread, if trio-asyncio stops working: start a thread
running `asyncio.new_event_loop().run_forever()` in `open_asyncio_bridge` (stop it with
`loop.call_soon_threadsafe(loop.stop)` when the last user leaves, then join the thread with
`trio.to_thread.run_sync`); `run_asyncio` becomes `asyncio.run_coroutine_threadsafe(coro, loop)`
awaited through a `trio.lowlevel` wait whose abort callback calls `future.cancel()` and keeps
waiting (`Abort.FAILED`) until the future is done, then raises Cancelled if it was cancelled;
`iterate_asyncio` is built on `run_asyncio` and needs no change; `run_trio` becomes
`asyncio.wrap_future(trio.from_thread.run(...))`-style: the handler sends the trio function to
the trio thread with a `trio.lowlevel.TrioToken` (`run_sync_soon` starting a task in a nursery
the bridge owns) and awaits a `concurrent.futures.Future`; an asyncio cancel cancels that task's
cancel scope. The cost is a thread hop per call (~20-50 µs) instead of a same-thread callback.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator
from contextlib import asynccontextmanager
from typing import Any, Generic, ParamSpec, TypeVar

import attrs
import trio
import trio_asyncio

from fluvial.nursery_errors import _reraise_unchanged

_P = ParamSpec("_P")
_T = TypeVar("_T")


@attrs.define(eq=False)
class _Bridge:
    """The open loop of this trio run and how many users are inside `open_asyncio_bridge`."""

    loop: trio_asyncio.TrioEventLoop
    users: int = 1
    _left: trio.Event = attrs.field(factory=trio.Event)

    def leave(self) -> None:
        self.users -= 1
        self._left.set()

    async def wait_until_unused(self) -> None:
        # Checked again after every wakeup, with no checkpoint between the last check and the
        # caller's next line: a user that enters meanwhile is waited for too.
        while self.users:
            self._left = trio.Event()
            await self._left.wait()


# A RunVar, not a module global: each trio.run (each test) gets its own loop.
_BRIDGE: trio.lowlevel.RunVar[_Bridge | None] = trio.lowlevel.RunVar(
    "fluvial_asyncio_bridge", default=None
)


@asynccontextmanager
async def open_asyncio_bridge() -> AsyncIterator[None]:
    """Make the process's asyncio loop available to `run_asyncio` and `run_trio` inside.

    Reference-counted: the first user opens the loop, later users (nested or in other tasks)
    share it, and it closes when the last one leaves; the user that opened it waits at its exit
    until the others have left. Exceptions of the body come out as themselves.
    """
    bridge = _BRIDGE.get()
    if bridge is not None:
        bridge.users += 1
        try:
            yield
        finally:
            bridge.leave()
        return
    body_error: BaseException | None = None
    try:
        async with trio_asyncio.open_loop() as loop:
            bridge = _Bridge(loop)
            _BRIDGE.set(bridge)
            try:
                yield
            except BaseException as error:
                body_error = error
                raise
            finally:
                bridge.leave()
                # Other users (a server in another task) still run on this loop: closing it
                # would cut their connections, so this exit waits for them, whatever cancels it.
                with trio.CancelScope(shield=True):
                    await bridge.wait_until_unused()
                _BRIDGE.set(None)
    except BaseExceptionGroup as group:
        # trio-asyncio's nurseries wrap the body's exception: it comes out as itself.
        if body_error is not None and _only_holds(group, body_error):
            _reraise_unchanged(body_error)
        raise


def _only_holds(group: BaseExceptionGroup[BaseException], error: BaseException) -> bool:
    inner: BaseException = group
    while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
        inner = inner.exceptions[0]
        if inner is error:
            return True
    return False


def _loop() -> trio_asyncio.TrioEventLoop:
    bridge = _BRIDGE.get()
    if bridge is None:
        raise RuntimeError(
            "fluvial's asyncio bridge is not open: call this inside open_asyncio_bridge()"
        )
    return bridge.loop


def asyncio_bridge_is_open() -> bool:
    """Whether some `open_asyncio_bridge` of this trio run is open (for tests and checks)."""
    return _BRIDGE.get() is not None


async def _call(fn: Callable[_P, Awaitable[_T]], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    # The coroutine of `fn` is created here, inside the asyncio task: asyncio code that looks
    # up its running loop when it is called (grpclib does) finds the bridge's loop.
    return await fn(*args, **kwargs)


async def run_asyncio(fn: Callable[_P, Awaitable[_T]], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """From trio: run `await fn(*args, **kwargs)` as an asyncio task of the bridge's loop.

    Returns its result or raises its exception as it is. A trio cancel cancels the task and
    waits for it to finish: `trio.Cancelled` means the asyncio side was cancelled too (if it
    finished anyway, its result or error is returned instead, and the cancel comes at the next
    checkpoint).
    """
    loop = _loop()
    coroutine = _call(fn, *args, **kwargs)
    try:
        task = loop.create_task(coroutine, context=_loop_context(loop))
    except BaseException:
        coroutine.close()  # never awaited: no "was never awaited" warning
        raise
    return await trio_asyncio.run_aio_future(task)


async def run_asyncio_eagerly(
    fn: Callable[_P, Coroutine[Any, Any, _T]], *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """From trio: `await fn(*args, **kwargs)`, its coroutine run in this trio task up to its
    first wait, and from there (if it waits) as an asyncio task, as `run_asyncio` runs it.

    For asyncio code that needs no current asyncio task (grpclib's client calls do: their
    cancel wrappers look it up; a server stream's `send_message` does not) and that mostly
    completes without waiting. Its first step cannot be cancelled midway (it does not wait);
    a cancel while the rest runs is `run_asyncio`'s. Completing at once, the call is no
    schedule point: it raises Cancelled first if this task is cancelled, and otherwise runs
    on (as `trio.lowlevel.checkpoint_if_cancelled`).
    """
    loop = _loop()
    await trio.lowlevel.checkpoint_if_cancelled()
    if trio.lowlevel.current_task().context.get(trio_asyncio.current_loop) is not loop:
        # asyncio code run here would not find the loop (trio-asyncio looks it up in the
        # trio task's context): a task of the loop runs it all.
        return await run_asyncio(fn, *args, **kwargs)
    coroutine = fn(*args, **kwargs)
    try:
        waits_for = coroutine.send(None)
    except StopIteration as done:
        result: _T = done.value
        return result
    task = loop.create_task(_resume(coroutine, waits_for), context=_loop_context(loop))
    return await trio_asyncio.run_aio_future(task)


async def _resume(coroutine: Coroutine[Any, Any, _T], waits_for: object) -> _T:
    return await _Resumed(coroutine, waits_for)


class _Resumed(Generic[_T]):
    """Awaiting it (in an asyncio task) goes on with a coroutine from where it first yielded
    `waits_for` (the future it waits for), as if the task had run it from its start."""

    def __init__(self, coroutine: Coroutine[Any, Any, _T], waits_for: object) -> None:
        self._coroutine = coroutine
        self._waits_for = waits_for

    def __await__(self) -> Generator[Any, Any, _T]:
        coroutine, waits_for = self._coroutine, self._waits_for
        while True:
            try:
                sent = yield waits_for
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as error:  # the task's cancel, thrown in: passed on
                try:
                    waits_for = coroutine.throw(error)
                except StopIteration as done:
                    result: _T = done.value
                    return result
            else:
                try:
                    waits_for = coroutine.send(sent)
                except StopIteration as done:
                    result = done.value
                    return result


def _loop_context(loop: trio_asyncio.TrioEventLoop) -> contextvars.Context:
    # The asyncio task runs in a copy of the caller's context, with trio-asyncio's current loop
    # set: the trio tasks that run its I/O callbacks (a TLS handshake completing in a socket's
    # reader) inherit it, and asyncio code called there (grpclib's connection_made) finds the
    # loop. The caller may be a task that did not open the loop, so its own context lacks it.
    context = contextvars.copy_context()
    context.run(trio_asyncio.current_loop.set, loop)
    return context


class AsyncioReader(Generic[_T]):
    """From trio: the results of `await fn()`, called again and again by one asyncio task that
    reads ahead (it calls `fn` for the next result while trio has not yet taken the one
    before: at most two read and not taken), until a result for which `last(result)` is true
    or one that raises; that one is then the answer of every later `receive`.

    The task starts with the first `receive`; `stop` (on the asyncio side: `run_asyncio`)
    cancels it and waits until it has ended, while no `receive` waits."""

    def __init__(self, fn: Callable[[], Awaitable[_T]], last: Callable[[_T], bool]) -> None:
        self._fn = fn
        self._last = last
        self._task: asyncio.Task[None] | None = None
        self._ready: deque[_T] = deque()  # for `receive` to take: at most one
        self._ended: tuple[_T] | BaseException | None = None  # the last result, or the error
        self._receiver: trio.lowlevel.Task | None = None  # the trio task waiting in `receive`
        self._room: asyncio.Future[None] | None = None  # what the reader waits on when full

    async def receive(self) -> _T:
        """The next result, or the last one again (its error raised as itself). Cancelled, it
        took nothing: the result comes with the next call. With a result read already it is
        no schedule point (as `trio.lowlevel.checkpoint_if_cancelled`)."""
        if self._task is None:
            loop = _loop()
            self._task = loop.create_task(self._read(), context=_loop_context(loop))
        if self._ready or self._ended is not None:
            await trio.lowlevel.checkpoint_if_cancelled()
        else:
            assert self._receiver is None, "two tasks receive from one AsyncioReader"
            self._receiver = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort)
        if self._ready:
            result = self._ready.popleft()
            room, self._room = self._room, None
            if room is not None and not room.done():
                room.set_result(None)
            return result
        ended = self._ended
        assert ended is not None, "woken with nothing to take"
        if isinstance(ended, BaseException):
            raise ended
        return ended[0]

    def _abort(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        self._receiver = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _wake(self) -> None:
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            trio.lowlevel.reschedule(receiver)

    async def _read(self) -> None:
        try:
            while True:
                result = await self._fn()
                if self._last(result):
                    self._ended = (result,)
                    break
                while self._ready:  # the one before is not taken yet: wait until it is
                    self._room = _loop().create_future()
                    await self._room
                self._ready.append(result)
                self._wake()
        except Exception as error:
            self._ended = error
        except BaseException as error:
            self._ended = error  # a cancel of the task too: no receive waits forever
            raise
        finally:
            self._wake()

    async def stop(self) -> None:
        """(On the asyncio side.) Cancel the reading task; return once it has ended."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])


class _End:
    """The value `_next_or_end` answers for an iterator's end."""


_END = _End()


async def _next_or_end(iterator: AsyncIterator[_T]) -> _T | _End:
    # StopAsyncIteration must not cross the asyncio Task: it becomes a value here.
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return _END


class _AsyncioIterator(Generic[_T]):
    """A trio async iterator over an asyncio one (a class, not an async generator: nothing to
    finalize when the consumer stops early)."""

    def __init__(self, iterator: AsyncIterator[_T]) -> None:
        self._iterator = iterator

    def __aiter__(self) -> _AsyncioIterator[_T]:
        return self

    async def __anext__(self) -> _T:
        item = await run_asyncio(_next_or_end, self._iterator)
        if isinstance(item, _End):
            raise StopAsyncIteration
        return item


def iterate_asyncio(iterator: AsyncIterator[_T]) -> AsyncIterator[_T]:
    """From trio: iterate an asyncio async iterator, each step as `run_asyncio` does it."""
    return _AsyncioIterator(iterator)


def run_trio(fn: Callable[_P, Awaitable[_T]], *args: _P.args, **kwargs: _P.kwargs) -> Awaitable[_T]:
    """From asyncio: run `await fn(*args, **kwargs)` in a new trio task; await the returned
    future.

    Cancelling the awaiting asyncio task cancels the trio task; the trio task's exception is
    raised by the await as it is.
    """
    # trio-asyncio passes positional arguments only.
    return _loop().trio_as_future(functools.partial(fn, *args, **kwargs))
