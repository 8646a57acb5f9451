"""The task of one live entity: recover its state, then decide its commands batch by batch.

An entity task recovers its state (latest snapshot, then later events), then handles commands.
It takes every command waiting in its mailbox at once, decides them one after the other against
the state the previous ones produced, persists all their events in one append and then replies
to all: one journal round trip per batch, not per command. Each command's state change is
computed as a new value before anything is persisted, so a failing handler leaves no trace.

With a journal that offers `append_soon` (SQLite), the replies are sent by the append's
callback (`fluvial.entity._batch_answers`), in the task that learns of the commit, and the
entity task only wakes for new mail: two task switches per command (entity, caller) instead of
three. Its mailbox stays held until then, so the entity never decides a command against events
that are not stored yet.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import outcome
import trio

from fluvial.core.command_decisions import decide_commands
from fluvial.core.serialization import SerializerRegistry
from fluvial.entity._errors import EntityStopped
from fluvial.entity._live_entity import LiveEntity, answer_all
from fluvial.entity._recovery import recover
from fluvial.journal.api import AppendSoon, Journal, SnapshotStore

if TYPE_CHECKING:
    from fluvial.entity._live_entities import LiveEntities

log = logging.getLogger("fluvial.entity")


class EntityTasks:
    """What runs in the task of each live entity."""

    def __init__(
        self,
        entities: LiveEntities,
        journal: Journal,
        snapshots: SnapshotStore | None,
        serializers: SerializerRegistry,
    ) -> None:
        self._entities = entities
        self._journal = journal
        self._snapshots = snapshots
        self._serializers = serializers
        # A journal that can answer an append with a callback saves the entity task a wake-up
        # per batch: the commit answers the commands, and the entity only wakes for new mail.
        self._append_soon = journal.append_soon if isinstance(journal, AppendSoon) else None

    @trio.lowlevel.enable_ki_protection  # see `fluvial.entity._opening`
    async def run(self, live: LiveEntity) -> None:
        """Serve `live` until it is retired; whatever ends it fails the commands it holds."""
        try:
            await self._serve(live)
        except Exception as exc:
            # The journal failed while reloading after a failed append: this incarnation ends
            # and its commands share the error; the next command starts a new one.
            log.error("%s: stopped after a journal failure: %s", live.key, exc)
            self._entities.forget(live)
            for ask in [*live.batch, *live.mailbox.close()]:
                ask.fail(exc)
        except BaseException:
            # Cancelled because the runtime closes: nobody else will answer these.
            stopped = EntityStopped(f"{live.pid}: the entity runtime closed")
            for ask in [*live.batch, *live.mailbox.close()]:
                ask.fail(stopped)
            raise

    async def _serve(self, live: LiveEntity) -> None:
        try:
            live.state, live.seq_nr = await self._recover(live)
        except Exception as exc:
            # Waiting commands share the error (a corrupt row, say); the next command
            # tries recovery again, and nothing stored is touched.
            log.error("%s: recovery failed: %s", live.key, exc)
            self._entities.forget(live)
            for ask in live.mailbox.close():
                ask.fail(exc)
            return
        mailbox = live.mailbox
        encode = self._serializers.encode
        entity_type = live.behavior.entity_type
        while True:
            live.batch = batch = await mailbox.take_all()
            if not batch:
                return  # retired: the mailbox was closed
            live.active = True  # not the time: trio.current_time() is three calls per batch
            if live.reload:
                # The last append failed (a conflict means another writer): reload first.
                live.state, live.seq_nr = await self._recover(live)
                live.reload = False
            decision = decide_commands(
                live.handlers,
                live.key,
                entity_type,
                live.slice,
                live.state,
                live.seq_nr,
                batch,
                encode,
            )
            records = decision.records
            if not records:
                answer_all(decision)
                if decision.stopped:
                    self._entities.retire(live, batch[len(decision.decided) :])
                    return
                await trio.lowlevel.checkpoint()  # a stream of read-only commands must yield
                continue
            # The entity decides nothing more until the append is answered (`on_appended`
            # releases the mailbox), so it never decides against unstored events.
            mailbox.held = True  # not a method: a call less per batch
            live.in_flight = decision
            appended = live.on_appended
            assert appended is not None
            if self._append_soon is not None:
                live.batch = ()  # the journal's callback answers these asks now
                try:
                    self._append_soon(records, appended)
                except Exception as exc:
                    appended(outcome.Error(exc))
                if not mailbox.held:
                    await trio.lowlevel.checkpoint()  # answered at once: yield all the same
                continue
            try:
                stored = await self._journal.append(records)
            except Exception as exc:
                appended(outcome.Error(exc))
            else:
                appended(outcome.Value(stored))
            live.batch = ()

    async def _recover(self, live: LiveEntity) -> tuple[Any, int]:
        return await recover(
            self._journal,
            self._snapshots,
            self._serializers,
            live.behavior.empty_state,
            live.handlers.event_handler,
            live.key,
        )
