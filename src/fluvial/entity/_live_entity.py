"""One incarnation of a live entity, and how the runtime answers the asks of a decided batch.

`fluvial.entity._live_entities` keeps one `LiveEntity` per entity in memory; what to answer each ask
is decided in the core (`fluvial.core.command_decisions`), and `answer_all` only hands it on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
import outcome

from fluvial.core.behavior import EntityHandlers, EventSourcedBehavior
from fluvial.core.command_decisions import BatchDecision, answer
from fluvial.core.ids import PersistenceId
from fluvial.core.records import EventRecord
from fluvial.entity._mailbox import Ask, Mailbox


@attrs.define(eq=False)
class LiveEntity:
    """One incarnation of an entity: its mailbox and whether it had work lately."""

    behavior: EventSourcedBehavior[Any, Any, Any]
    pid: PersistenceId
    key: str
    slice: int
    mailbox: Mailbox
    handlers: EntityHandlers[Any, Any, Any]  # the behavior's, bound to this entity's context
    # What the stored events say, once recovered; updated when an append commits.
    state: Any = None
    seq_nr: int = 0
    reload: bool = False  # an append failed: recover before deciding again
    # Whether it took mail since the passivation sweep last looked, and how many sweeps in a
    # row have found it idle since (`LiveEntities.passivate_idle`).
    active: bool = True
    idle_sweeps: int = 0
    # The asks taken from the mailbox and not yet handed on (answered, or their append out):
    # if the task ends, they share its fate. Those already answered ignore that.
    batch: Sequence[Ask] = ()
    # The batch whose append is out (its asks with it).
    in_flight: BatchDecision[Ask] | None = None
    # `BatchAnswers.appended` bound to this entity, made once: the callback of every append.
    on_appended: Callable[[outcome.Outcome[Sequence[EventRecord]]], None] | None = None


def answer_all(decision: BatchDecision[Ask], append_error: BaseException | None = None) -> None:
    """Answer every ask the decision decided, as `answer` says."""
    asks = decision.asks
    for index in range(len(decision.decided)):
        reply, error = answer(decision, index, append_error)
        if error is None:
            asks[index].answer(reply)
        else:
            asks[index].fail(error)
