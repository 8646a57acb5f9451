"""The event-sourced behavior: a pure `(state, command) -> Effect` and `(state, event) -> state`.

Everything that decides what an entity does lives here and does no I/O: the command handler
returns an `Effect` value, the shell (`fluvial.entity`) carries it out.

The types catch the usual mistakes. A command class declares its reply type as
`Command[ReplyT]`, and `then_reply(command, fn)` / `Effect.reply(command, value)` accept only a
reply of that type. `Effect[CartEvent, CartState].persist(...)` accepts only the behavior's
events, and the function given to its `then_reply` sees a `CartState`. `EntityRef[C].ask`
accepts only a command of its entity (a `CommandOf[C, ReplyT]`) and returns its `ReplyT`.
"""

from __future__ import annotations

import enum
import functools
import types
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, Never, Protocol, Self, TypeVar

import attrs
import msgspec
import typing_extensions

from fluvial.core.command_classes import AnnotatedCommandClasses, annotated_command_classes
from fluvial.core.entity_context import EntityContext
from fluvial.core.errors import FluvialError, UsageError

ReplyT = TypeVar("ReplyT")
ReplyT_co = TypeVar("ReplyT_co", covariant=True)
C = TypeVar("C")
C_co = TypeVar("C_co", covariant=True)
E = TypeVar("E")
S = TypeVar("S")
# Defaults (PEP 696, in `typing` from 3.13) for the bare class: `Effect.persist(event)` outside a
# typed return is an `Effect[EventType, object]`, `Effect.none()` an `Effect[Never, object]`. The
# state is `object`, not `Any`, so that a `then_reply` on the bare class cannot read the state
# unchecked, and a handler annotated `-> Effect` does not fit a behavior with a state type: the
# bound alias (`CartEffect = Effect[CartEvent, CartState]`) is the way that type-checks.
E_co = typing_extensions.TypeVar("E_co", covariant=True, default=Never)
S_co = typing_extensions.TypeVar("S_co", covariant=True, default=object)


class Command(Generic[ReplyT]):
    """Base of commands whose reply is a `ReplyT`. Subclass it with `@attrs.frozen`.

    `ReplyT` is exact (invariant): `Effect.reply(command, value)` accepts a `value` of that
    type and nothing wider.
    """

    __slots__ = ()

    if TYPE_CHECKING:
        # Seen only by type checkers (nothing exists at run time): the two faces of a command
        # that `CommandOf` matches, so that one argument can be checked as "a command of this
        # entity" and give its reply type at once (Python's types have no intersection).
        @property
        def _fluvial_command(self) -> Self: ...

        @property
        def _fluvial_reply(self) -> ReplyT: ...


class CommandOf(Protocol[C_co, ReplyT_co]):
    """The static type of a command that is one of `C_co` and replies with a `ReplyT_co`.

    Every `Command[R]` subclass `X` is a `CommandOf[X, R]`; `EntityRef[C].ask` and
    `BehaviorTestKit.run_command` take a `CommandOf[C, R]` and return (a result with) an `R`,
    so mypy rejects a command of another entity and infers the reply type. Only for
    annotations: nothing is checked against it at run time.
    """

    @property
    def _fluvial_command(self) -> C_co: ...

    @property
    def _fluvial_reply(self) -> ReplyT_co: ...


class CommandRejected(FluvialError):
    """Base for a handler's typed error replies (`Effect.reject`); `ask` raises them.

    Subclass it per business error (e.g. `CartClosed`), so callers `except` exactly what a
    command can be refused with; a subclass may take any constructor arguments. It is neither
    a misuse of fluvial nor bad data, so it derives from `FluvialError` directly: `except
    FluvialError` around an `ask` sees every error the ask can raise.
    """


class EffectKind(enum.Enum):
    """What an effect does besides replying: persist events, nothing, refuse, or stop."""

    PERSIST = "persist"
    NONE = "none"
    UNHANDLED = "unhandled"
    STOP = "stop"


class ReplyAction(msgspec.Struct, frozen=True):
    """How to answer one command: a function of the state after the effect, or an error."""

    command: Command[Any]
    compute: Callable[[Any], Any] | None = None
    error: CommandRejected | None = None


class Effect(msgspec.Struct, Generic[E_co, S_co], frozen=True):
    """What a command handler decided: events to persist, a reply, whether to stop.

    Build it with the named constructors; an effect is a plain value, easy to assert on.
    Called on the class bound to the behavior's event and state types, they check both:
    with `CartEffect = Effect[CartEvent, CartState]` (an alias that also annotates the
    handler), `CartEffect.persist(...)` takes only `CartEvent`s and its `then_reply` function
    sees a `CartState`. Called on the bare class, the state type is `object` unless the call is
    returned as is from a typed handler (`return Effect.none()` takes the handler's types):
    `Effect.persist(...).then_reply(cmd, fn)` gives `fn` an `object`, which mypy rejects for
    any use of the state, so use the alias.
    (A msgspec Struct rather than an attrs class: every command builds one or two, and a Struct
    is built ~4x faster.)
    """

    kind: EffectKind
    events: tuple[E_co, ...] = ()
    reply_action: ReplyAction | None = None
    stop_after: bool = False

    def __class_getitem__(cls, parameters: object) -> types.GenericAlias:
        # `CartEffect.persist` runs for every command: typing's alias finds `persist` through a
        # Python-level __getattr__ (~0.6 us), the builtin alias in C (~0.07 us). Static types
        # are unchanged (mypy reads the Generic base).
        return types.GenericAlias(cls, parameters)

    @classmethod
    def persist(cls: type[Effect[E, S]], *events: E) -> Effect[E, S]:
        """Persist these events (atomically, in order); then `then_reply` / `then_stop`.

        Raises UsageError without events (use `Effect.none()` or `persist_all`).
        """
        if not events:
            raise UsageError("Effect.persist needs at least one event; use Effect.none()")
        return cls(EffectKind.PERSIST, events)

    @classmethod
    def persist_all(cls: type[Effect[E, S]], events: Iterable[E]) -> Effect[E, S]:
        """Persist a sequence of events atomically; an empty sequence persists nothing."""
        return cls(EffectKind.PERSIST, tuple(events))

    @classmethod
    def none(cls: type[Effect[E, S]]) -> Effect[E, S]:
        """Do nothing. Without a `then_reply`, `ask` raises `MissingReply` for the command."""
        return cls(EffectKind.NONE)

    @classmethod
    def unhandled(cls: type[Effect[E, S]]) -> Effect[E, S]:
        """The command is not handled in this state; `ask` raises `UnhandledCommand`."""
        return cls(EffectKind.UNHANDLED)

    @classmethod
    def stop(cls: type[Effect[E, S]]) -> Effect[E, S]:
        """Stop (passivate) the entity; the next command starts it again from the journal."""
        return cls(EffectKind.STOP, stop_after=True)

    @classmethod
    def reply(cls: type[Effect[E, S]], command: Command[ReplyT], value: ReplyT) -> Effect[E, S]:
        """Reply `value` without persisting anything; `value` must be the command's reply type."""
        return cls(EffectKind.NONE, reply_action=ReplyAction(command, lambda _s: value))

    @classmethod
    def reject(
        cls: type[Effect[E, S]], command: Command[Any], error: CommandRejected
    ) -> Effect[E, S]:
        """Refuse the command with a typed error; nothing is persisted, `ask` raises `error`."""
        return cls(EffectKind.NONE, reply_action=ReplyAction(command, error=error))

    def then_reply(
        self, command: Command[ReplyT], reply: Callable[[S_co], ReplyT]
    ) -> Effect[E_co, S_co]:
        """After the events are persisted, reply with `reply(new_state)`, which must return the
        command's reply type. A `reply` that raises fails the command with `CommandFailed`.

        `reply` is typed by the effect's state type: call it on an effect built from the
        behavior's alias (`CartEffect.persist(...).then_reply(cmd, fn)`, `fn` sees a
        `CartState`). On the bare class (`Effect.persist(...)`) the state type is `object`,
        so mypy rejects a `reply` that uses the state.
        """
        return Effect(self.kind, self.events, ReplyAction(command, reply), self.stop_after)

    def then_stop(self) -> Effect[E_co, S_co]:
        """Also stop (passivate) the entity once this effect is carried out."""
        return Effect(self.kind, self.events, self.reply_action, stop_after=True)


@attrs.frozen
class SnapshotPolicy(Generic[E]):
    """When to store a snapshot of the state, and how many to keep.

    A snapshot is taken after a persist whose events cross a multiple of `every` or include an
    event for which `when(event)` is true. `keep` snapshots are retained; older ones are deleted.
    """

    every: int | None = None
    when: Callable[[E], bool] | None = None
    keep: int = 2

    def __attrs_post_init__(self) -> None:
        if self.every is not None and self.every <= 0:
            raise UsageError(f"SnapshotPolicy.every must be positive: {self.every}")
        if self.keep <= 0:
            raise UsageError(f"SnapshotPolicy.keep must be positive: {self.keep}")

    @property
    def enabled(self) -> bool:
        """Whether this policy ever takes a snapshot."""
        return self.every is not None or self.when is not None

    def should_snapshot(self, first_seq_nr: int, events: Iterable[E]) -> bool:
        """Whether a persist of `events`, the first with `first_seq_nr`, triggers a snapshot."""
        for seq_nr, event in enumerate(events, start=first_seq_nr):
            if self.when is not None and self.when(event):
                return True
            if self.every is not None and seq_nr % self.every == 0:
                return True
        return False


def _no_tags(_event: object) -> frozenset[str]:
    return frozenset()


def _needs_a_context(*_args: object) -> Never:
    raise UsageError(
        "this behavior's handlers take an EntityContext (EventSourcedBehavior.with_context): "
        "call them through behavior.handlers_for(context)"
    )


@attrs.frozen
class EntityHandlers(Generic[C, E, S]):
    """A behavior's handlers for one entity, as the runtime and the test kit call them.

    `EventSourcedBehavior.handlers_for(context)` gives them: the behavior's own functions, or,
    for a behavior built `with_context`, its functions with the context bound.
    """

    command_handler: Callable[[S, C], Effect[E, S]]
    event_handler: Callable[[S, E], S]
    tagger: Callable[[E], frozenset[str]]

    def apply_events(self, state: S, events: Iterable[E]) -> S:
        """The fold of `events` over `state`."""
        event_handler = self.event_handler
        for event in events:
            state = event_handler(state, event)
        return state


@attrs.frozen
class _ContextHandlers(Generic[C, E, S]):
    """The handlers of a behavior built `with_context`: each takes the context first."""

    command_handler: Callable[[EntityContext, S, C], Effect[E, S]]
    event_handler: Callable[[EntityContext, S, E], S]
    tagger: Callable[[EntityContext, E], frozenset[str]] | None


@attrs.frozen
class EventSourcedBehavior(Generic[C, E, S]):
    """An entity type's pure logic: how commands become events and events become state.

    `empty_state` is the state of an entity with no events. `command_types` are the command
    classes this entity accepts (checked at `ask`, so a command meant for another entity fails
    with `CommandTypeError` instead of reaching the handler). Left out, they are read from the
    command handler's annotation (`command: AddItem | Get` gives `(AddItem, Get)`); given,
    they must match that annotation when it can be read. Raises UsageError when they are left
    out and the annotation cannot be read (a lambda, `Any`), or when they and the annotation
    disagree: a command missing from either would otherwise fail only when it is first sent.

    Handlers that need to know their entity (its id) take an `EntityContext` first: build
    the behavior with `EventSourcedBehavior.with_context` instead.
    """

    entity_type: str
    empty_state: S
    command_handler: Callable[[S, C], Effect[E, S]]
    event_handler: Callable[[S, E], S]
    # Set only by `with_context`; then the two handlers above only say to use `handlers_for`.
    _with_context: _ContextHandlers[C, E, S] | None = attrs.field(
        default=None, kw_only=True, alias="_with_context", repr=False
    )
    # Read once per behavior, for both the default and the check of `command_types` (reading
    # resolves the handler's annotations, which is not free). Not an argument, not compared.
    _annotated: AnnotatedCommandClasses = attrs.field(
        init=False,
        repr=False,
        eq=False,
        default=attrs.Factory(lambda self: self._read_command_classes(), takes_self=True),
    )
    command_types: tuple[type[C], ...] = attrs.field()
    tagger: Callable[[E], frozenset[str]] = _no_tags
    snapshot_policy: SnapshotPolicy[E] = attrs.field(factory=SnapshotPolicy)
    # What `handlers_for` gives a behavior without a context: built once, shared by all.
    _plain_handlers: EntityHandlers[C, E, S] = attrs.field(
        init=False,
        repr=False,
        eq=False,
        default=attrs.Factory(
            lambda self: EntityHandlers(self.command_handler, self.event_handler, self.tagger),
            takes_self=True,
        ),
    )

    @classmethod
    def with_context(
        cls: type[EventSourcedBehavior[C, E, S]],
        *,
        entity_type: str,
        empty_state: S,
        command_handler: Callable[[EntityContext, S, C], Effect[E, S]],
        event_handler: Callable[[EntityContext, S, E], S],
        command_types: tuple[type[C], ...] | None = None,
        tagger: Callable[[EntityContext, E], frozenset[str]] | None = None,
        snapshot_policy: SnapshotPolicy[E] | None = None,
    ) -> EventSourcedBehavior[C, E, S]:
        """A behavior whose handlers see the entity they run for: `(context, state, command)`,
        `(context, state, event)` and a tagger `(context, event)`.

        Everything else is as in the constructor (`command_types` are read from the command
        parameter's annotation, the third one here). The runtime and `BehaviorTestKit` give
        the handlers the same `EntityContext`; `handlers_for(context)` binds them. The
        behavior's `command_handler` and `event_handler` attributes then raise `UsageError`
        (there is no context to call them with).
        """
        contextual = _ContextHandlers(command_handler, event_handler, tagger)
        optional: dict[str, Any] = {}
        if command_types is not None:
            optional["command_types"] = command_types
        if snapshot_policy is not None:
            optional["snapshot_policy"] = snapshot_policy
        return cls(
            entity_type,
            empty_state,
            _needs_a_context,
            _needs_a_context,
            _with_context=contextual,
            **optional,
        )

    def handlers_for(self, context: EntityContext) -> EntityHandlers[C, E, S]:
        """The handlers to run for the entity `context` describes (its context bound, for a
        behavior built `with_context`)."""
        contextual = self._with_context
        if contextual is None:
            return self._plain_handlers
        tagger = contextual.tagger
        return EntityHandlers(
            functools.partial(contextual.command_handler, context),
            functools.partial(contextual.event_handler, context),
            _no_tags if tagger is None else functools.partial(tagger, context),
        )

    def _read_command_classes(self) -> AnnotatedCommandClasses:
        if self._with_context is not None:
            return annotated_command_classes(self._with_context.command_handler, position=2)
        return annotated_command_classes(self.command_handler)

    @command_types.default
    def _command_types_of_the_handler(self) -> tuple[type[C], ...]:
        annotated = self._annotated.classes
        if annotated is None:
            raise UsageError(
                f"entity type {self.entity_type!r}: the command classes cannot be read from the "
                f"command handler: {self._annotated.unreadable_because}; annotate its command "
                "parameter with a class or a union of classes, or pass command_types=(...)"
            )
        return annotated

    @command_types.validator
    def _check_command_types(
        self, _attribute: attrs.Attribute[tuple[type[C], ...]], given: tuple[type[C], ...]
    ) -> None:
        if not isinstance(given, tuple) or not given or not all(isinstance(t, type) for t in given):
            raise UsageError(
                f"entity type {self.entity_type!r}: command_types must be a non-empty tuple of "
                f"classes: {given!r}"
            )
        annotated = self._annotated.classes
        if annotated is None:
            return  # nothing to compare with
        problems = []
        if missing := [t.__name__ for t in annotated if not issubclass(t, given)]:
            problems.append(f"the annotation has {', '.join(missing)}, command_types do not")
        if extra := [t.__name__ for t in given if not issubclass(t, annotated)]:
            problems.append(f"command_types have {', '.join(extra)}, the annotation does not")
        if problems:
            raise UsageError(
                f"entity type {self.entity_type!r}: command_types and the command handler's "
                f"annotation disagree: {'; '.join(problems)} (leave command_types out to derive "
                "them from the annotation)"
            )

    def apply_events(self, state: S, events: Iterable[E]) -> S:
        """The fold of `events` over `state` (for a behavior without a context; see
        `EntityHandlers.apply_events`)."""
        for event in events:
            state = self.event_handler(state, event)
        return state
