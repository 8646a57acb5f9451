# The part of trio-asyncio that benchmarks/bench_postgres_drivers.py uses (it ships no types).
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, ParamSpec, TypeVar

_P = ParamSpec("_P")
_T = TypeVar("_T")

def open_loop(queue_len: int | None = None) -> AbstractAsyncContextManager[Any]: ...
def aio_as_trio(
    proc: Callable[_P, Awaitable[_T]], *, loop: Any = None
) -> Callable[_P, Awaitable[_T]]: ...
