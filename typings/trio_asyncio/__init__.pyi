# The part of trio-asyncio that fluvial uses (it ships no types): fluvial.grpc._asyncio_bridge
# and benchmarks/bench_postgres_drivers.py.
import asyncio
from contextvars import Context, ContextVar
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, ParamSpec, TypeVar

_P = ParamSpec("_P")
_T = TypeVar("_T")

class TrioEventLoop:
    def time(self) -> float: ...
    async def run_aio_coroutine(self, coro: Coroutine[Any, Any, _T]) -> _T: ...
    def trio_as_future(
        self, proc: Callable[..., Awaitable[_T]], *args: Any
    ) -> asyncio.Future[_T]: ...
    async def synchronize(self) -> None: ...
    def create_future(self) -> asyncio.Future[Any]: ...
    def create_task(
        self,
        coro: Coroutine[Any, Any, _T],
        *,
        name: str | None = None,
        context: Context | None = None,
    ) -> asyncio.Task[_T]: ...

current_loop: ContextVar[TrioEventLoop | None]

async def run_aio_future(future: asyncio.Future[_T]) -> _T: ...
def open_loop(queue_len: int | None = None) -> AbstractAsyncContextManager[TrioEventLoop]: ...
def aio_as_trio(
    proc: Callable[_P, Awaitable[_T]], *, loop: Any = None
) -> Callable[_P, Awaitable[_T]]: ...
