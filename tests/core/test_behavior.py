"""The pure behavior API: effects are values, snapshot policies, the fold of events, command
types that match the command handler, and handlers that take their entity's context."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fluvial.core.behavior import Command, Effect, EffectKind, EventSourcedBehavior, SnapshotPolicy
from fluvial.core.entity_context import EntityContext
from fluvial.core.errors import UsageError
from fluvial.core.ids import PersistenceId
from fluvial.examples.shopping_cart import (
    AddItem,
    CartClosed,
    CartCommand,
    CartEffect,
    CartEvent,
    CartState,
    CheckedOut,
    Checkout,
    EmptyCart,
    Get,
    ItemUpdated,
    RemoveItem,
    ShoppingCart,
    Summary,
    apply_event,
    handle_command,
)

APPLE = ItemUpdated("apple", 2)
CLOSED = CartState({"apple": 2}, checked_out=True)


def test_equal_effects_compare_equal() -> None:
    assert Effect.persist(APPLE, CheckedOut()) == Effect.persist(APPLE, CheckedOut())
    assert Effect.persist(APPLE) != Effect.persist(ItemUpdated("apple", 3))
    assert Effect.none() == Effect.none()
    assert Effect.unhandled() != Effect.none()


def test_persist_keeps_the_events_in_order() -> None:
    effect = Effect.persist(APPLE, CheckedOut())
    assert effect.kind is EffectKind.PERSIST
    assert effect.events == (APPLE, CheckedOut())
    assert effect.reply_action is None
    assert not effect.stop_after
    assert Effect.persist_all(iter([APPLE, CheckedOut()])) == effect


def test_persist_needs_an_event_but_persist_all_may_be_empty() -> None:
    with pytest.raises(UsageError):
        Effect.persist()
    empty = Effect.persist_all(list[CartEvent]())
    assert (empty.kind, empty.events) == (EffectKind.PERSIST, ())


def test_then_reply_and_then_stop_keep_the_events() -> None:
    command = AddItem("apple", 2)
    effect = CartEffect.persist(APPLE).then_reply(command, CartState.summary).then_stop()
    assert effect.events == (APPLE,)
    assert effect.stop_after
    assert effect.reply_action is not None
    assert effect.reply_action.command is command
    assert effect.reply_action.error is None
    assert effect.reply_action.compute is not None
    assert effect.reply_action.compute(CartState({"apple": 2})) == Summary({"apple": 2}, False)


def test_none_unhandled_and_stop_persist_nothing() -> None:
    for effect, kind in [
        (Effect.none(), EffectKind.NONE),
        (Effect.unhandled(), EffectKind.UNHANDLED),
        (Effect.stop(), EffectKind.STOP),
    ]:
        assert effect.kind is kind
        assert effect.events == ()
        assert effect.reply_action is None
    assert Effect.stop().stop_after
    assert not Effect.none().stop_after


def test_reply_and_reject_persist_nothing_and_carry_the_answer() -> None:
    get = Get()
    reply = Effect.reply(get, Summary({}, False))
    assert (reply.kind, reply.events) == (EffectKind.NONE, ())
    assert reply.reply_action is not None
    assert reply.reply_action.compute is not None
    assert reply.reply_action.compute(object()) == Summary({}, False)

    error = CartClosed("closed")
    reject = Effect.reject(get, error)
    assert (reject.kind, reject.events) == (EffectKind.NONE, ())
    assert reject.reply_action is not None
    assert reject.reply_action.error is error
    assert reject.reply_action.compute is None


def test_add_and_remove_become_signed_item_updates() -> None:
    add = handle_command(CartState(), AddItem("apple", 2))
    assert add.events == (ItemUpdated("apple", 2),)
    remove = handle_command(CartState(), RemoveItem("apple", 1))
    assert remove.events == (ItemUpdated("apple", -1),)


def test_reply_is_computed_from_the_state_after_the_events() -> None:
    state = CartState({"pear": 1})
    effect = handle_command(state, AddItem("apple", 2))
    after = ShoppingCart.apply_events(state, effect.events)
    assert effect.reply_action is not None
    assert effect.reply_action.compute is not None
    assert effect.reply_action.compute(after) == Summary({"pear": 1, "apple": 2}, False)


@pytest.mark.parametrize("command", [AddItem("pear", 1), RemoveItem("apple", 1), Checkout()])
def test_a_closed_cart_rejects_changes(command: AddItem | RemoveItem | Checkout) -> None:
    effect = handle_command(CLOSED, command)
    assert effect.events == ()
    assert effect.reply_action is not None
    assert isinstance(effect.reply_action.error, CartClosed)


def test_get_on_a_closed_cart_still_answers() -> None:
    effect = handle_command(CLOSED, Get())
    assert effect.events == ()
    assert effect.reply_action is not None
    assert effect.reply_action.compute is not None
    assert effect.reply_action.compute(CLOSED) == Summary({"apple": 2}, True)


def test_an_empty_cart_cannot_check_out() -> None:
    effect = handle_command(CartState(), Checkout())
    assert effect.events == ()
    assert effect.reply_action is not None
    assert isinstance(effect.reply_action.error, EmptyCart)
    assert handle_command(CartState({"a": 1}), Checkout()).events == (CheckedOut(),)


def test_apply_events_is_the_fold_of_the_event_handler() -> None:
    events: list[CartEvent] = [APPLE, ItemUpdated("pear", 1), ItemUpdated("apple", -2)]
    state = CartState()
    for event in events:
        state = apply_event(state, event)
    assert ShoppingCart.apply_events(CartState(), events) == state == CartState({"pear": 1})
    assert ShoppingCart.apply_events(state, []) is state


def test_every_n_triggers_when_a_persist_reaches_a_multiple() -> None:
    policy = SnapshotPolicy[CartEvent](every=3)
    assert policy.enabled
    assert not policy.should_snapshot(1, [APPLE, APPLE])  # 1, 2
    assert policy.should_snapshot(3, [APPLE])  # 3
    assert policy.should_snapshot(2, [APPLE, APPLE])  # 2, 3: across the batch boundary
    assert not policy.should_snapshot(4, [APPLE, APPLE])  # 4, 5
    assert policy.should_snapshot(5, [APPLE] * 7)  # 5..11 crosses 6 and 9
    assert not policy.should_snapshot(3, [])


@given(
    every=st.integers(1, 20),
    batch_sizes=st.lists(st.integers(1, 15), min_size=1, max_size=30),
)
def test_every_n_fires_for_exactly_the_batches_that_cross_a_multiple(
    every: int, batch_sizes: list[int]
) -> None:
    policy = SnapshotPolicy[CartEvent](every=every)
    next_seq_nr = 1
    for size in batch_sizes:
        seq_nrs = range(next_seq_nr, next_seq_nr + size)
        fired = policy.should_snapshot(next_seq_nr, [APPLE] * size)
        assert fired == any(n % every == 0 for n in seq_nrs)
        next_seq_nr += size


def test_when_predicate_triggers_on_a_matching_event_anywhere_in_the_batch() -> None:
    policy = SnapshotPolicy[CartEvent](when=lambda e: isinstance(e, CheckedOut))
    assert policy.enabled
    assert not policy.should_snapshot(1, [APPLE, APPLE])
    assert policy.should_snapshot(1, [APPLE, CheckedOut(), APPLE])
    assert policy.should_snapshot(17, [CheckedOut()])


def test_every_and_when_combine_with_or() -> None:
    policy = SnapshotPolicy[CartEvent](every=10, when=lambda e: isinstance(e, CheckedOut))
    assert policy.should_snapshot(10, [APPLE])
    assert policy.should_snapshot(4, [CheckedOut()])
    assert not policy.should_snapshot(4, [APPLE])


def test_the_default_policy_takes_no_snapshots() -> None:
    policy = SnapshotPolicy[CartEvent]()
    assert not policy.enabled
    assert not policy.should_snapshot(1, [APPLE] * 1000)
    assert policy.keep == 2


@pytest.mark.parametrize(("every", "keep"), [(0, 2), (-5, 2), (None, 0), (3, -1)])
def test_snapshot_policy_rejects_nonpositive_every_and_keep(every: int | None, keep: int) -> None:
    with pytest.raises(UsageError):
        SnapshotPolicy[CartEvent](every=every, keep=keep)


def test_the_cart_snapshots_at_checkout_and_every_100() -> None:
    policy = ShoppingCart.snapshot_policy
    assert policy.should_snapshot(3, [CheckedOut()])
    assert policy.should_snapshot(100, [APPLE])
    assert not policy.should_snapshot(101, [APPLE] * 99)
    assert attrs.evolve(policy, when=None).should_snapshot(3, [CheckedOut()]) is False


def test_effects_of_the_bound_alias_are_the_same_values() -> None:
    command = AddItem("apple", 2)
    assert CartEffect.persist(APPLE) == Effect.persist(APPLE)
    assert CartEffect.persist_all([APPLE]) == Effect.persist_all([APPLE])
    assert CartEffect.none() == Effect.none()
    assert CartEffect.unhandled() == Effect.unhandled()
    assert CartEffect.stop() == Effect.stop()
    error = CartClosed("closed")
    assert CartEffect.reject(command, error) == Effect.reject(command, error)
    reply = CartEffect.reply(command, Summary({}, False))
    assert reply.reply_action is not None
    assert reply.reply_action.compute is not None
    assert reply.reply_action.compute(CartState()) == Summary({}, False)


def test_command_types_are_read_from_the_handler_annotation() -> None:
    assert ShoppingCart.command_types == (AddItem, RemoveItem, Checkout, Get)
    single = EventSourcedBehavior[Get, CartEvent, CartState](
        entity_type="Reader",
        empty_state=CartState(),
        command_handler=_get_only,
        event_handler=apply_event,
    )
    assert single.command_types == (Get,)


def _get_only(state: CartState, command: Get) -> CartEffect:
    return CartEffect.reply(command, state.summary())


def test_command_types_that_match_the_annotation_are_accepted_in_any_order() -> None:
    behavior = attrs.evolve(ShoppingCart, command_types=(Get, Checkout, RemoveItem, AddItem))
    assert behavior.command_types == (Get, Checkout, RemoveItem, AddItem)


def test_a_command_of_the_union_missing_from_command_types_is_refused_at_construction() -> None:
    with pytest.raises(UsageError, match=r"the annotation has Get, command_types do not"):
        attrs.evolve(ShoppingCart, command_types=(AddItem, RemoveItem, Checkout))


def test_a_command_type_outside_the_union_is_refused_at_construction() -> None:
    with pytest.raises(UsageError, match=r"command_types have Other, the annotation does not"):
        attrs.evolve(
            ShoppingCart,
            command_types=(AddItem, RemoveItem, Checkout, Get, Other),  # type: ignore[arg-type]
        )


@attrs.frozen
class Other(Command[None]):
    pass


def test_a_handler_without_readable_annotations_needs_command_types() -> None:
    def handler(state: CartState, command: Any) -> CartEffect:
        return handle_command(state, command)

    for unreadable in [lambda state, command: handle_command(state, command), handler]:
        with pytest.raises(UsageError, match="pass command_types"):
            EventSourcedBehavior[CartCommand, CartEvent, CartState](
                entity_type="Cart",
                empty_state=CartState(),
                command_handler=unreadable,
                event_handler=apply_event,
            )
        given_types = EventSourcedBehavior[CartCommand, CartEvent, CartState](
            entity_type="Cart",
            empty_state=CartState(),
            command_handler=unreadable,
            event_handler=apply_event,
            command_types=(AddItem, Get),  # cannot be compared with anything: taken as given
        )
        assert given_types.command_types == (AddItem, Get)


def test_an_annotation_naming_a_local_class_is_taken_as_unreadable() -> None:
    @attrs.frozen
    class Local(Command[None]):
        pass

    def handler(state: CartState, command: Local) -> CartEffect:
        return CartEffect.reply(command, None)

    with pytest.raises(UsageError, match="pass command_types"):
        EventSourcedBehavior[Local, CartEvent, CartState](
            entity_type="Local",
            empty_state=CartState(),
            command_handler=handler,
            event_handler=apply_event,
        )
    behavior = EventSourcedBehavior[Local, CartEvent, CartState](
        entity_type="Local",
        empty_state=CartState(),
        command_handler=handler,
        event_handler=apply_event,
        command_types=(Local,),
    )
    assert behavior.command_types == (Local,)


@pytest.mark.parametrize("bad", [(), [AddItem, RemoveItem, Checkout, Get], (AddItem, "Get")])
def test_command_types_must_be_a_non_empty_tuple_of_classes(bad: Any) -> None:
    with pytest.raises(UsageError, match="non-empty tuple of classes"):
        attrs.evolve(ShoppingCart, command_types=bad)


def _contextual_handle(
    context: EntityContext, state: CartState, command: CartCommand
) -> CartEffect:
    if isinstance(command, AddItem):
        return CartEffect.persist(ItemUpdated(context.entity_id, 1)).then_reply(
            command, CartState.summary
        )
    return handle_command(state, command)


def _contextual_apply(context: EntityContext, state: CartState, event: CartEvent) -> CartState:
    return apply_event(state, event)


def test_a_behavior_with_context_reads_its_command_types_from_the_third_parameter() -> None:
    behavior = EventSourcedBehavior[CartCommand, CartEvent, CartState].with_context(
        entity_type="ShoppingCart",
        empty_state=CartState(),
        command_handler=_contextual_handle,
        event_handler=_contextual_apply,
    )
    assert behavior.command_types == (AddItem, RemoveItem, Checkout, Get)
    with pytest.raises(UsageError, match="command_types and the command handler's annotation"):
        EventSourcedBehavior[CartCommand, CartEvent, CartState].with_context(
            entity_type="ShoppingCart",
            empty_state=CartState(),
            command_handler=_contextual_handle,
            event_handler=_contextual_apply,
            command_types=(AddItem,),
        )


def test_handlers_for_binds_the_context_and_gives_a_plain_behavior_its_own_functions() -> None:
    behavior = EventSourcedBehavior[CartCommand, CartEvent, CartState].with_context(
        entity_type="ShoppingCart",
        empty_state=CartState(),
        command_handler=_contextual_handle,
        event_handler=_contextual_apply,
        tagger=lambda context, _event: frozenset({context.entity_id}),
        snapshot_policy=SnapshotPolicy(every=5),
    )
    context = EntityContext(PersistenceId("ShoppingCart", "cart-7"))
    handlers = behavior.handlers_for(context)
    effect = handlers.command_handler(CartState(), AddItem("apple", 1))
    assert effect.events == (ItemUpdated("cart-7", 1),)
    assert handlers.apply_events(CartState(), effect.events) == CartState({"cart-7": 1})
    assert handlers.tagger(ItemUpdated("x", 1)) == frozenset({"cart-7"})
    assert behavior.snapshot_policy == SnapshotPolicy(every=5)
    with pytest.raises(UsageError, match="take an EntityContext"):
        behavior.command_handler(CartState(), Get())
    plain = ShoppingCart.handlers_for(context)
    assert (plain.command_handler, plain.event_handler, plain.tagger) == (
        ShoppingCart.command_handler,
        ShoppingCart.event_handler,
        ShoppingCart.tagger,
    )
    assert ShoppingCart.handlers_for(context) is plain  # built once, not per entity
