"""What an entity does with a batch of commands: one pure decision, for runtime and test kit.

The entity runtime takes every command waiting in its mailbox at once; the test kit takes one.
Both ask `decide_commands`, which decides the commands one after the other, each against the
state the previous ones produced (the speculative state), and gives, before anything is
persisted: the event records to append with their seq nrs, the state after each command, which
commands failed at once (a handler that raised, an unhandled command), and where a stop ends
the batch. Once the journal has answered the append, `answer` gives each command's reply or
error, including which commands share a failed append's error. Everything here is a value
computed from values: the shell (`fluvial.entity`) only carries it out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import msgspec

from fluvial.core.behavior import EffectKind, EntityHandlers, ReplyAction
from fluvial.core.command_errors import (
    CommandFailed,
    CommandTypeError,
    EntityError,
    MissingReply,
    UnhandledCommand,
)
from fluvial.core.records import EventRecord
from fluvial.core.serialization import SerializedPayload

# What one command was decided to do: its reply action, the state after it, whether it
# persisted events, and the error it failed with at once (then nothing else counts). A plain
# tuple: one is built per command.
Decided = tuple[ReplyAction | None, Any, bool, EntityError | None]
AppendErrorT = TypeVar("AppendErrorT", bound=BaseException)


class CarriesCommand(Protocol):
    """Anything that carries one command to decide: the runtime's asks, the test kit's."""

    @property
    def command(self) -> object:
        """The command."""
        ...


# The caller's carriers of commands (the runtime's asks, the test kit's), kept as given.
A = TypeVar("A", bound=CarriesCommand)


class BatchDecision(msgspec.Struct, Generic[A], frozen=True):
    """What a batch of commands does, decided before anything is persisted.

    `decided[i]` is the decision for `asks[i].command`; a stop ends it early, and the asks
    after the stopping one (`asks[len(decided):]`) are for the entity's next incarnation.
    `records` (and their `events`) are what to append, in one append, numbered on from the
    seq nr the batch was decided at; `state` is the state once they are stored.
    `unstored_from` is the first command that persisted events: the commands from it on were
    decided against events that are stored only if the append succeeds.
    (A msgspec Struct: one is built per batch, and a Struct is built faster than a class. It
    keeps the caller's asks rather than a list of their commands: one list less per batch.)
    """

    persistence_id: str
    asks: Sequence[A]
    decided: list[Decided]
    records: list[EventRecord]
    events: list[Any]
    state: Any
    stopped: bool
    unstored_from: int


def decide_commands(
    handlers: EntityHandlers[Any, Any, Any],
    persistence_id: str,
    entity_type: str,
    slice_: int,
    state: Any,
    seq_nr: int,
    asks: Sequence[A],
    encode: Callable[[object], SerializedPayload | None],
) -> BatchDecision[A]:
    """Decide the commands of `asks`, in order, against `state` (stored up to `seq_nr`).

    Each command sees the state the ones before it produced. A command whose handler (event
    handler, tagger or `encode` of its events) raises fails with `CommandFailed` (cause: the
    exception), an unhandled one with `UnhandledCommand`; either leaves no event and no state
    change. A command whose effect stops the entity is the last one decided. Never raises
    for what the handlers do.
    """
    command_handler, event_handler, tagger = (
        handlers.command_handler,
        handlers.event_handler,
        handlers.tagger,
    )
    decided: list[Decided] = []
    records: list[EventRecord] = []
    events: list[Any] = []
    speculative = state
    unstored_from = -1
    stopped = False
    for ask in asks:
        command = ask.command
        records_before = len(records)
        try:
            effect = command_handler(speculative, command)
            after = speculative
            for event in effect.events:
                after = event_handler(after, event)
                records.append(
                    EventRecord(
                        persistence_id=persistence_id,
                        seq_nr=seq_nr + len(records) + 1,
                        entity_type=entity_type,
                        slice=slice_,
                        payload=encode(event),
                        tags=tagger(event),
                    )
                )
        except Exception as exc:
            del records[records_before:]  # nothing of a failed command
            failure = CommandFailed(persistence_id, command, persisted=False)
            failure.__cause__ = exc
            decided.append((None, speculative, False, failure))
            continue
        if effect.kind is EffectKind.UNHANDLED:
            del records[records_before:]  # an unhandled command persists nothing
            unhandled = UnhandledCommand(
                f"{persistence_id}: {type(command).__name__} is not handled in this state"
            )
            decided.append((None, speculative, False, unhandled))
            continue
        speculative = after
        persisted = len(records) > records_before
        if persisted:
            events += effect.events
            if unstored_from < 0:
                unstored_from = len(decided)
        decided.append((effect.reply_action, after, persisted, None))
        if effect.stop_after:
            stopped = True
            break
    return BatchDecision(
        persistence_id,
        asks,
        decided,
        records,
        events,
        speculative,
        stopped,
        len(decided) if unstored_from < 0 else unstored_from,
    )


def answer(
    decision: BatchDecision[Any], index: int, append_error: AppendErrorT | None = None
) -> tuple[Any, Exception | AppendErrorT | None]:
    """The answer to `decision.asks[index]`, once the append of `decision.records` is
    answered (`append_error` None: stored, or there was nothing to store): `(reply, None)`,
    or `(None, error)` for the error its `ask` raises.

    After a failed append, nothing of the batch is stored, and the commands decided against
    its unstored events (`unstored_from` on) share `append_error`; the ones before are answered
    as if it had succeeded. The reply is the reply function of the state after the command; a
    reply function that raises gives `CommandFailed`; an effect without one, `MissingReply`.
    """
    if append_error is not None and index >= decision.unstored_from:
        return None, append_error
    action, state_after, persisted, error = decision.decided[index]
    if error is not None:
        return None, error
    if action is None:
        return None, MissingReply(
            f"{decision.persistence_id}: the effect for "
            f"{type(decision.asks[index].command).__name__} has no reply (use then_reply, "
            "Effect.reply or Effect.reject)"
        )
    if action.error is not None:
        return None, action.error
    assert action.compute is not None
    try:
        return action.compute(state_after), None
    except Exception as exc:
        failure = CommandFailed(
            decision.persistence_id, decision.asks[index].command, persisted=persisted
        )
        failure.__cause__ = exc
        return None, failure


def foreign_command(
    entity_type: str, command_types: tuple[type, ...], command: object
) -> CommandTypeError:
    """The error for `command`, which is none of `command_types` (of entity type `entity_type`)."""
    return CommandTypeError(
        f"{type(command).__name__} is not a command of entity type {entity_type!r} (accepts "
        f"{', '.join(t.__name__ for t in command_types)})"
    )
