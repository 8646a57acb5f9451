"""The event-sourced behavior: a pure `(state, command) -> Effect` and `(state, event) -> state`.

Everything that decides what an entity does lives here and does no I/O: the command handler
returns an `Effect` value, the shell (`fluvial.entity`) carries it out. Replies are typed through
the command: a command class declares its reply type as `Command[ReplyT]`, and
`Effect.then_reply(command, fn)` / `Effect.reply(command, value)` only accept a reply of that
type, so mypy rejects a handler that answers `AddItem` with the wrong thing.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import Any, Generic, Never, TypeVar

import attrs
import msgspec

from fluvial.core.errors import FluvialError, UsageError

ReplyT = TypeVar("ReplyT")
ReplyT_co = TypeVar("ReplyT_co", covariant=True)
C = TypeVar("C")
E = TypeVar("E")
S = TypeVar("S")
E_co = TypeVar("E_co", covariant=True)
S_co = TypeVar("S_co", covariant=True)


class Command(Generic[ReplyT_co]):
    """Base of commands whose reply is a `ReplyT_co`. Subclass it with `@attrs.frozen`."""

    __slots__ = ()


class CommandRejected(FluvialError):
    """Base for a handler's typed error replies (`Effect.reject`); `ask` raises them.

    Subclass it per business error (e.g. `CartClosed`), so callers `except` exactly what a
    command can be refused with; a subclass may take any constructor arguments. It is neither
    a misuse of fluvial nor bad data, so it derives from `FluvialError` directly: `except
    FluvialError` around an `ask` sees every error the ask can raise.
    """


class EffectKind(enum.Enum):
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

    Build it with the named constructors; an effect is a plain value, easy to assert on. The
    constructors need no type arguments: `Effect.persist(ItemUpdated(...))` is an
    `Effect[ItemUpdated, Any]`, which (being covariant) fits a handler declared to return
    `Effect[CartEvent, CartState]`, and `then_reply` is checked against the command's reply type.
    (A msgspec Struct rather than an attrs class: every command builds one or two, and a Struct
    is built ~4x faster.)
    """

    kind: EffectKind
    events: tuple[E_co, ...] = ()
    reply_action: ReplyAction | None = None
    stop_after: bool = False

    # -- constructors ---------------------------------------------------------------------
    @staticmethod
    def persist(*events: E) -> Effect[E, Any]:
        """Persist these events (atomically, in order); then `then_reply` / `then_stop`."""
        if not events:
            raise UsageError("Effect.persist needs at least one event; use Effect.none()")
        return Effect(EffectKind.PERSIST, events)

    @staticmethod
    def persist_all(events: Iterable[E]) -> Effect[E, Any]:
        """Persist a sequence of events atomically; an empty sequence persists nothing."""
        return Effect(EffectKind.PERSIST, tuple(events))

    @staticmethod
    def none() -> Effect[Never, Any]:
        return Effect(EffectKind.NONE)

    @staticmethod
    def unhandled() -> Effect[Never, Any]:
        """The command is not handled in this state; `ask` raises `UnhandledCommand`."""
        return Effect(EffectKind.UNHANDLED)

    @staticmethod
    def stop() -> Effect[Never, Any]:
        """Stop (passivate) the entity; the next command starts it again from the journal."""
        return Effect(EffectKind.STOP, stop_after=True)

    @staticmethod
    def reply(command: Command[ReplyT], value: ReplyT) -> Effect[Never, Any]:
        """Reply without persisting anything. (mypy checks `then_reply` functions strictly;
        here it accepts any value, since `Command` is covariant so that `ask` types well.)"""
        return Effect(EffectKind.NONE, reply_action=ReplyAction(command, lambda _s: value))

    @staticmethod
    def reject(command: Command[Any], error: CommandRejected) -> Effect[Never, Any]:
        """Refuse the command with a typed error; nothing is persisted."""
        return Effect(EffectKind.NONE, reply_action=ReplyAction(command, error=error))

    # -- combinators ----------------------------------------------------------------------
    def then_reply(
        self, command: Command[ReplyT], reply: Callable[[S_co], ReplyT]
    ) -> Effect[E_co, S_co]:
        """After the events are persisted, reply with `reply(new_state)`."""
        return Effect(self.kind, self.events, ReplyAction(command, reply), self.stop_after)

    def then_stop(self) -> Effect[E_co, S_co]:
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


@attrs.frozen
class EventSourcedBehavior(Generic[C, E, S]):
    """An entity type's pure logic: how commands become events and events become state.

    `command_types` lists the command classes this entity accepts (checked at `ask`, so a
    command meant for another entity fails with `CommandTypeError` instead of reaching the
    handler). `empty_state` is the state of an entity with no events.
    """

    entity_type: str
    empty_state: S
    command_handler: Callable[[S, C], Effect[E, S]]
    event_handler: Callable[[S, E], S]
    command_types: tuple[type[Any], ...]
    tagger: Callable[[E], frozenset[str]] = _no_tags
    snapshot_policy: SnapshotPolicy[E] = attrs.field(factory=SnapshotPolicy)

    def apply_events(self, state: S, events: Iterable[E]) -> S:
        """The fold of `events` over `state`."""
        for event in events:
            state = self.event_handler(state, event)
        return state
