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


def annotated_command_classes(handler: Callable[..., object]) -> tuple[type, ...] | None:
    """The classes of the handler's second parameter's annotation, in the order written.

    `A | B` (or `Union[A, B]`, or a `type X = A | B` alias) gives `(A, B)`; a single class
    gives itself. None when it cannot be told: no annotation (a lambda), an annotation that
    does not resolve (a name local to a function), or one that is not classes (`Any`,
    `object`, a generic alias, a `Protocol`).
    """
    try:
        parameters = list(inspect.signature(handler).parameters.values())
        hints = typing.get_type_hints(handler)
    except Exception:
        # Whatever stops the annotations from resolving (a NameError for a local class, a
        # TypeError for a callable object or a partial) only means there is nothing to read.
        return None
    if len(parameters) < 2 or parameters[1].name not in hints:
        return None
    return _classes(hints[parameters[1].name])


def _classes(annotation: object) -> tuple[type, ...] | None:
    value = getattr(annotation, "__value__", None)  # a `type X = ...` alias (3.12+)
    if value is not None and not isinstance(annotation, type):
        return _classes(value)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        found: list[type] = []
        for member in typing.get_args(annotation):
            classes = _classes(member)
            if classes is None:
                return None
            found += classes
        return tuple(found)
    if (
        isinstance(annotation, type)  # `typing.Any` is a class too, from 3.11
        and annotation not in (object, typing.Any)
        and not getattr(annotation, "_is_protocol", False)
    ):
        return (annotation,)
    return None
