"""Deciding a batch of commands against an entity's state, and answering each once stored.

The entity task takes every command waiting in its mailbox at once. `decide_batch` decides them
one after the other, each against the state the previous ones produced, and computes every
command's new state and event records as new values before anything is persisted, so a failing
handler leaves no trace. `send_reply` answers one decided command, once its events are stored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fluvial.core.behavior import EffectKind, EventSourcedBehavior, ReplyAction
from fluvial.core.records import EventRecord
from fluvial.core.serialization import SerializedPayload
from fluvial.entity.errors import CommandFailed, MissingReply, UnhandledCommand
from fluvial.entity.mailbox import Ask

# What a command was decided to do: its ask, its reply, the state after it, whether it
# persisted events. A plain tuple: one is built per command.
Decided = tuple[Ask, ReplyAction | None, Any, bool]


def decide_batch(
    behavior: EventSourcedBehavior[Any, Any, Any],
    persistence_id: str,
    slice_: int,
    state: Any,
    seq_nr: int,
    batch: list[Ask],
    encode: Callable[[object], SerializedPayload],
) -> tuple[list[Decided], list[EventRecord], list[Any], list[Ask] | None]:
    """Decide `batch` against `state` (stored up to `seq_nr`), one command after the other.

    Returns each answered command's decision, the records to persist, their events, and, if a
    command stops the entity, the commands after it (for the next incarnation; else None).
    A command whose handler raises, or that is unhandled, fails at once and leaves nothing.
    """
    command_handler, event_handler = behavior.command_handler, behavior.event_handler
    tagger, entity_type = behavior.tagger, behavior.entity_type
    decided: list[Decided] = []
    records: list[EventRecord] = []
    events: list[Any] = []
    speculative = state
    for index, ask in enumerate(batch):
        records_before = len(records)
        try:
            effect = command_handler(speculative, ask.command)
            after = speculative
            for event in effect.events:
                after = event_handler(after, event)
                records.append(
                    EventRecord(
                        persistence_id,
                        seq_nr + len(records) + 1,
                        entity_type,
                        slice_,
                        encode(event),
                        tagger(event),
                    )
                )
        except Exception as exc:
            del records[records_before:]  # nothing of a failed command
            failure = CommandFailed(persistence_id, ask.command, persisted=False)
            failure.__cause__ = exc
            ask.fail(failure)
            continue
        if effect.kind is EffectKind.UNHANDLED:
            del records[records_before:]  # an unhandled command persists nothing
            ask.fail(
                UnhandledCommand(
                    f"{persistence_id}: {type(ask.command).__name__} is not handled in this state"
                )
            )
            continue
        speculative = after
        persisted = len(records) > records_before
        if persisted:
            events += effect.events
        decided.append((ask, effect.reply_action, after, persisted))
        if effect.stop_after:
            return decided, records, events, batch[index + 1 :]
    return decided, records, events, None


def send_reply(persistence_id: str, item: Decided) -> None:
    """Answer a decided command: its reply computed from the state after it, its typed
    refusal, `MissingReply`, or `CommandFailed` if the reply function raises."""
    ask, action, state_after, persisted = item
    if action is None:
        ask.fail(
            MissingReply(
                f"{persistence_id}: the effect for {type(ask.command).__name__} "
                "has no reply (use then_reply, Effect.reply or Effect.reject)"
            )
        )
    elif action.error is not None:
        ask.fail(action.error)
    else:
        assert action.compute is not None
        try:
            ask.answer(action.compute(state_after))
        except Exception as exc:
            failure = CommandFailed(persistence_id, ask.command, persisted=persisted)
            failure.__cause__ = exc
            ask.fail(failure)
