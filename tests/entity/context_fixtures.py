"""A behavior whose handlers see their entity: the guestbook signs with its own entity id."""

from __future__ import annotations

import attrs

from fluvial import Command, Effect, EntityContext, EventSourcedBehavior, SerializerRegistry


@attrs.frozen
class Sign(Command[str]):
    """Sign the book as `guest`; replies with what the book now says last."""

    guest: str


@attrs.frozen
class Signed:
    guest: str
    book: str  # the entity id the command handler saw


@attrs.frozen
class Book:
    lines: tuple[str, ...] = ()


BookEffect = Effect[Signed, Book]


def sign(context: EntityContext, state: Book, command: Sign) -> BookEffect:
    event = Signed(command.guest, context.entity_id)
    return BookEffect.persist(event).then_reply(command, lambda s: s.lines[-1])


def apply_signed(context: EntityContext, state: Book, event: Signed) -> Book:
    # What the event handler sees too, on every apply and in recovery.
    line = f"{event.guest} signed {event.book}, read by {context.persistence_id}"
    return Book((*state.lines, line))


def tag_book(context: EntityContext, event: Signed) -> frozenset[str]:
    return frozenset({f"book:{context.entity_id}", f"type:{context.entity_type}"})


Guestbook = EventSourcedBehavior[Sign, Signed, Book].with_context(
    entity_type="Guestbook",
    empty_state=Book(),
    command_handler=sign,
    event_handler=apply_signed,
    tagger=tag_book,
)

BOOK_REGISTRY = SerializerRegistry()
BOOK_REGISTRY.register(Signed, "book.Signed")
BOOK_REGISTRY.register(Book, "book.Book")
