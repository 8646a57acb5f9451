"""Handlers built `with_context` see their entity in the runtime: the command handler, the
event handler (also in recovery) and the tagger; and the test
kit gives them the very same context."""

from __future__ import annotations

from entity.context_fixtures import BOOK_REGISTRY, Book, Guestbook, Sign, Signed
from entity.entity_fixtures import Storage
from fluvial import EntityContext, PersistenceId, open_entities
from fluvial.journal.api import MAX_SEQ_NR
from fluvial.testing import BehaviorTestKit


async def test_every_handler_sees_the_entity_it_runs_for(storage: Storage) -> None:
    async with (
        storage.open() as journal,
        open_entities(journal, BOOK_REGISTRY, [Guestbook]) as entities,
    ):
        assert await entities.ref(Guestbook, "b|1").ask(Sign("ann")) == (
            "ann signed b|1, read by Guestbook|b|1"
        )
        assert await entities.ref(Guestbook, "b2").ask(Sign("bob")) == (
            "bob signed b2, read by Guestbook|b2"
        )
        records = await journal.read_events("Guestbook|b|1", 1, MAX_SEQ_NR, 10)
    assert [r.tags for r in records] == [frozenset({"book:b|1", "type:Guestbook"})]


async def test_recovery_folds_the_events_with_the_entitys_context(storage: Storage) -> None:
    async with (
        storage.open() as journal,
        open_entities(journal, BOOK_REGISTRY, [Guestbook]) as entities,
    ):
        await entities.ref(Guestbook, "b").ask(Sign("ann"))
    async with (
        storage.open() as journal,
        open_entities(journal, BOOK_REGISTRY, [Guestbook]) as entities,
    ):
        # The event handler ran again, in recovery, and saw the context.
        assert await entities.ref(Guestbook, "b").ask(Sign("bob")) == (
            "bob signed b, read by Guestbook|b"
        )
        kit = BehaviorTestKit(Guestbook, BOOK_REGISTRY, entity_id="b")
        kit.run_command(Sign("ann"))
        kit.run_command(Sign("bob"))
        records = await journal.read_events("Guestbook|b", 1, MAX_SEQ_NR, 10)
    assert [
        BOOK_REGISTRY.decode(r.payload, persistence_id="", seq_nr=0) for r in records if r.payload
    ] == [
        Signed("ann", "b"),
        Signed("bob", "b"),
    ]
    assert kit.persisted_events == (Signed("ann", "b"), Signed("bob", "b"))


def test_the_test_kit_gives_the_handlers_the_context_the_runtime_gives() -> None:
    kit = BehaviorTestKit(Guestbook, BOOK_REGISTRY, entity_id="b|1")
    assert kit.context == EntityContext(PersistenceId("Guestbook", "b|1"))
    result = kit.run_command(Sign("ann"))
    assert result.unwrap() == "ann signed b|1, read by Guestbook|b|1"
    assert kit.restart() == Book(("ann signed b|1, read by Guestbook|b|1",))
