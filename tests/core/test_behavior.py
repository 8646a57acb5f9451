"""The pure behavior API: effects are values, snapshot policies, the fold of events."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fluvial.core.behavior import Effect, EffectKind, SnapshotPolicy
from fluvial.core.errors import UsageError
from fluvial.examples.shopping_cart import (
    AddItem,
    CartClosed,
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


# -- effects are plain values -------------------------------------------------------------------
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
    effect = Effect.persist(APPLE).then_reply(command, CartState.summary).then_stop()
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


# -- the cart's handlers, asserted as values ----------------------------------------------------
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


# -- snapshot policy ----------------------------------------------------------------------------
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
