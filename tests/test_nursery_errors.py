"""The nursery of fluvial's context managers: a lone exception leaves it as itself."""

from __future__ import annotations

import pytest
import trio

from fluvial.nursery_errors import open_service_nursery, unwrap_lone_error


class Oops(Exception):
    pass


async def fail(error: BaseException) -> None:
    raise error


async def test_the_bodys_exception_comes_out_as_itself_with_its_cause_and_context() -> None:
    cause = ValueError("cause")
    with pytest.raises(Oops) as caught:
        async with open_service_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            try:
                raise KeyError("context")
            except KeyError:
                raise Oops("body") from cause
    assert caught.value.__cause__ is cause
    assert isinstance(caught.value.__context__, KeyError)


async def test_a_tasks_lone_exception_comes_out_as_itself() -> None:
    error = Oops("task")
    with pytest.raises(Oops) as caught:
        async with open_service_nursery() as nursery:
            nursery.start_soon(fail, error)
            await trio.sleep_forever()
    assert caught.value is error
    assert caught.value.__context__ is None


async def fail_when_cancelled() -> None:
    try:
        await trio.sleep_forever()
    finally:
        raise Oops("task")


async def test_several_exceptions_come_out_as_one_group() -> None:
    with pytest.raises(ExceptionGroup) as caught:
        async with open_service_nursery() as nursery:
            nursery.start_soon(fail_when_cancelled)
            await trio.lowlevel.checkpoint()  # the task starts
            raise KeyError("body")
    assert {type(e) for e in caught.value.exceptions} == {Oops, KeyError}


async def test_a_group_the_body_raised_itself_is_left_as_it_is() -> None:
    one = Oops("one")
    with pytest.raises(ExceptionGroup) as caught:
        async with open_service_nursery():
            raise ExceptionGroup("the body's own", [one])
    # (trio's cancel scope hands on a copy of a group: the same message and exceptions.)
    assert caught.value.message == "the body's own"
    assert caught.value.exceptions == (one,)


async def test_an_outer_cancellation_still_cancels_the_body_and_the_tasks() -> None:
    with trio.move_on_after(1) as scope:
        async with open_service_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            nursery.start_soon(trio.sleep_forever)
            await trio.sleep_forever()
    assert scope.cancelled_caught


def test_unwrap_lone_error_unwraps_nested_groups_of_one() -> None:
    interrupt = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt) as caught, unwrap_lone_error():
        raise BaseExceptionGroup("outer", [BaseExceptionGroup("inner", [interrupt])])
    assert caught.value is interrupt


def test_unwrap_lone_error_leaves_a_group_of_several() -> None:
    with pytest.raises(ExceptionGroup), unwrap_lone_error():
        raise ExceptionGroup("outer", [Oops(), ExceptionGroup("inner", [Oops()])])
