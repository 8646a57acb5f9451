"""Which command classes a command handler is annotated to take: `(state, command: A | B)`.

`EventSourcedBehavior` derives its `command_types` from this, or checks the ones it is given
against it, so that adding a command to the union and forgetting `command_types` (or the other
way round) fails when the behavior is built, not at the first `ask` of the new command.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable

import attrs


@attrs.frozen
class AnnotatedCommandClasses:
    """What a handler's command parameter annotation says: its classes, or why it cannot tell.

    `classes` is None exactly when `unreadable_because` says why (for a UsageError message).
    """

    classes: tuple[type, ...] | None
    unreadable_because: str = ""


def annotated_command_classes(
    handler: Callable[..., object], *, position: int = 1
) -> AnnotatedCommandClasses:
    """The classes of the annotation of the handler's command parameter, in the order written:
    the parameter at `position` (the second, after the state; the third after a context).

    `A | B` (or `Union[A, B]`, or a `type X = A | B` alias) gives `(A, B)`; a single class
    gives itself. No classes, with the reason, when it cannot be told: no annotation (a
    lambda), annotations that do not resolve (a name local to a function; the reason names
    the error), or one that is not classes (`Any`, `object`, a generic alias, a `Protocol`,
    a union with any of these). Never raises.
    """
    try:
        parameters = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError) as exc:
        return _unreadable(f"its signature cannot be read ({type(exc).__name__}: {exc})")
    if len(parameters) <= position:
        return _unreadable("it takes no command parameter")
    parameter = parameters[position]
    if parameter.annotation is inspect.Parameter.empty:
        return _unreadable(f"its command parameter `{parameter.name}` is not annotated")
    try:
        hints = typing.get_type_hints(handler)
    except Exception as exc:
        # Whatever stops the annotations from resolving (a NameError for a local class, a
        # TypeError for a callable object or a partial) only means there is nothing to read.
        what = (
            f"annotation `{parameter.annotation}`"
            if isinstance(parameter.annotation, str)
            else "its annotations"
        )
        return _unreadable(f"{what} could not be resolved: {type(exc).__name__}: {exc}")
    annotation = hints.get(parameter.name, parameter.annotation)
    classes = _classes(annotation)
    if classes is None:
        written = annotation.__name__ if isinstance(annotation, type) else str(annotation)
        return _unreadable(
            f"annotation `{written}` is not a class or a union of classes (`Any`, `object` and "
            "Protocols are not read)"
        )
    return AnnotatedCommandClasses(classes)


def _unreadable(because: str) -> AnnotatedCommandClasses:
    return AnnotatedCommandClasses(None, because)


def _classes(annotation: object) -> tuple[type, ...] | None:
    value = getattr(annotation, "__value__", None)  # a `type X = ...` alias (3.12+)
    if value is not None and not isinstance(annotation, type):
        return _classes(value)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        found: list[type] = []
        for member in typing.get_args(annotation):
            classes = _classes(member)
            if classes is None:
                return None  # `AddItem | Any`: the handler takes more than classes can say
            found += classes
        return tuple(found)
    if (
        isinstance(annotation, type)  # `typing.Any` is a class too, from 3.11
        and annotation not in (object, typing.Any)
        and not getattr(annotation, "_is_protocol", False)  # an isinstance check cannot list it
    ):
        return (annotation,)
    return None
