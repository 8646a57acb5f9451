"""How errors leave fluvial's nurseries: alone as themselves, several as one group.

A trio nursery wraps whatever ends it in an `ExceptionGroup`, even a single exception. fluvial's
`open_*` context managers own nurseries for their background tasks, so without care an
`InsufficientStock` raised in the body of `async with open_entities(...)` would come out wrapped
once per fluvial context around it, and `except InsufficientStock:` would never match; Ctrl-C
would end a program with a 4-deep group instead of a `KeyboardInterrupt`.

`open_service_nursery` is the nursery of those context managers: an exception that ends it alone
(the body's, or one background task's) comes out as itself, and only several make a group. It
unwraps the one level its own nursery added, never a group the body raised itself.
`unwrap_lone_error` does the same, through every level, around `trio.run` in the `fluvial`
command, whose demo runs nurseries of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import NoReturn

import trio


@contextlib.asynccontextmanager
@trio.lowlevel.enable_ki_protection  # Ctrl-C reaches the body, not this frame
async def open_service_nursery() -> AsyncIterator[trio.Nursery]:
    """A trio nursery from which a lone exception comes out as itself, not in a group of one.

    Exactly one exception (raised by the body or by one task) is re-raised unchanged: the same
    object, with its own cause and context. Several still come out as the nursery's group.
    """
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        if len(group.exceptions) != 1:
            raise
        _reraise_unchanged(group.exceptions[0])


@contextlib.contextmanager
def unwrap_lone_error() -> Iterator[None]:
    """Re-raise a group that holds exactly one exception, at any depth, as that exception.

    For the outermost call of a program (around `trio.run`), where nobody can `except*` any
    more: a Ctrl-C ends it with a plain `KeyboardInterrupt` (so exit code 130), a single failure
    with its own traceback.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) != 1:
            raise
        _reraise_unchanged(leaves[0])


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            leaves += _leaves(exc)
        else:
            leaves.append(exc)
    return leaves


def _reraise_unchanged(exc: BaseException) -> NoReturn:
    # Raising inside the `except` would make the group the exception's context, so that its
    # traceback would print it twice, once inside the group: keep the context it had.
    context, suppress_context = exc.__context__, exc.__suppress_context__
    try:
        raise exc
    finally:
        exc.__context__, exc.__suppress_context__ = context, suppress_context
        del exc  # the traceback holds this frame: no cycle through it
