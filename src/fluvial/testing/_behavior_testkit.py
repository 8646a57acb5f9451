"""Run commands against one behavior in memory, synchronously: events, state and reply.

The shape of Akka's `EventSourcedBehaviorTestKit`: `run_command` returns what the command did,
with no trio, no journal and no tasks, so a behavior's unit tests and hypothesis properties stay
plain functions. It asks the very decision the entity runtime asks
(`fluvial.core.command_decisions`), with the same `EntityContext`, so its events, states,
replies and errors are the runtime's, message for message. `restart` recovers the state from
the events persisted so far, as a restarted entity would, and checks it is the same.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, cast

import attrs

from fluvial.core.behavior import Command, CommandOf, EventSourcedBehavior
from fluvial.core.command_decisions import answer, decide_commands, foreign_command
from fluvial.core.entity_context import EntityContext
from fluvial.core.ids import PersistenceId, slice_for
from fluvial.core.serialization import SerializedPayload, SerializerRegistry

C = TypeVar("C")
E = TypeVar("E")
S = TypeVar("S")
R = TypeVar("R")


@attrs.frozen
class CommandResult(Generic[E, S, R]):
    """What one command did: the events it persisted, the state after it, and its reply or the
    error `EntityRef.ask` would raise (`error` is None exactly when the command was answered)."""

    command: Command[R]
    events: tuple[E, ...]
    state: S
    reply: R | None = None
    error: Exception | None = None
    stopped: bool = False

    def unwrap(self) -> R:
        """The reply, or raise the error, as `EntityRef.ask` does."""
        if self.error is not None:
            raise self.error
        return cast(R, self.reply)


class BehaviorTestKit(Generic[C, E, S]):
    """One entity of `behavior`, starting from its empty state, with its journal in a list.

    With a `registry`, every persisted event is serialized as the runtime would (a class without
    a manifest fails the command), and `restart` recovers from the decoded payloads. The
    handlers of a behavior built `with_context` see `context` (an `EntityContext` for entity
    `entity_id` of the behavior's type), the very context the runtime gives that entity's
    handlers. Raises `InvalidPersistenceId` for an empty `entity_id`, as `Entities.ref` does.
    """

    def __init__(
        self,
        behavior: EventSourcedBehavior[C, E, S],
        registry: SerializerRegistry | None = None,
        *,
        entity_id: str = "testkit",
    ) -> None:
        self.behavior = behavior
        pid = PersistenceId(behavior.entity_type, entity_id)
        self.context = EntityContext(pid)
        self.persistence_id = str(pid)
        self._slice = slice_for(self.persistence_id)
        self._handlers = behavior.handlers_for(self.context)
        self._registry = registry
        self._state = behavior.empty_state
        self._events: list[E] = []
        self._payloads: list[SerializedPayload] = []

    @property
    def state(self) -> S:
        """The entity's state: the empty state folded with every persisted event so far.

        A command that fails (or persists nothing) leaves it as it was.
        """
        return self._state

    @property
    def seq_nr(self) -> int:
        """The seq nr of the last persisted event, 0 before the first."""
        return len(self._events)

    @property
    def persisted_events(self) -> tuple[E, ...]:
        """Every event persisted so far, oldest first (event `i` has seq nr `i + 1`); a copy."""
        return tuple(self._events)

    def run_command(self, command: CommandOf[C, R]) -> CommandResult[E, S, R]:
        """Handle `command`; persist its events and fold them into the state unless it fails.

        Typed as `EntityRef.ask` is: mypy rejects a command of another entity, and the result's
        reply has the command's reply type. At run time such a command (from untyped code)
        raises CommandTypeError, as `ask` does; every other outcome is in the result. A handler
        (or serializer) that raises leaves the state and the events as they were, and the error
        is a `CommandFailed` whose cause it is.
        """
        behavior = self.behavior
        if not isinstance(command, behavior.command_types):
            raise foreign_command(behavior.entity_type, behavior.command_types, command)
        # A `CommandOf[C, R]` that passed the check is a `C` and a `Command[R]` (types have no
        # intersection to say both at once).
        asked = cast(Command[R], command)
        registry = self._registry
        decision = decide_commands(
            self._handlers,
            self.persistence_id,
            behavior.entity_type,
            self._slice,
            self._state,
            self.seq_nr,
            [_Asked(asked)],
            registry.encode if registry is not None else _not_serialized,
        )
        # The append of a list cannot fail: the decision's records are stored.
        reply, error = answer(decision, 0)
        _action, state, _persisted, failed_at_once = decision.decided[0]
        if failed_at_once is not None:
            return CommandResult(asked, (), state, error=failed_at_once)
        events = tuple(decision.events)
        self._events.extend(events)
        self._payloads.extend(r.payload for r in decision.records if r.payload is not None)
        self._state = decision.state
        return CommandResult(asked, events, state, cast(R | None, reply), error, decision.stopped)

    def restart(self) -> S:
        """Recover the state from the persisted events and return it.

        Raises AssertionError if it differs from the state before the restart: the event
        handler depends on something besides the events, or (with a registry) an event does not
        survive serialization. With a registry and a snapshot policy, the state must survive
        serialization too, since the runtime stores it in snapshots.
        """
        registry = self._registry
        events: list[Any] = self._events
        if registry is not None:
            events = [
                registry.decode(payload, persistence_id=self.persistence_id, seq_nr=seq_nr)
                for seq_nr, payload in enumerate(self._payloads, start=1)
            ]
        recovered = self._handlers.apply_events(self.behavior.empty_state, events)
        if recovered != self._state:
            raise AssertionError(
                f"{self.persistence_id}: recovery from {self.seq_nr} events gives "
                f"{recovered!r}, but the state was {self._state!r}"
            )
        if registry is not None and self.behavior.snapshot_policy.enabled:
            snapshot = registry.decode(
                registry.encode(recovered), persistence_id=self.persistence_id, seq_nr=self.seq_nr
            )
            if snapshot != recovered:
                raise AssertionError(
                    f"{self.persistence_id}: the state {recovered!r} reads back from a snapshot "
                    f"as {snapshot!r}"
                )
        self._state = recovered
        return recovered


@attrs.frozen
class _Asked:
    """One command for the decision (the runtime's asks carry theirs the same way)."""

    command: object


def _not_serialized(_event: object) -> None:
    # Without a registry the events stay objects: their records carry no payload.
    return None
