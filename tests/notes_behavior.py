"""The Notebook: a small behavior whose commands reach every kind of effect and failure
(persist, reply, unhandled, missing reply, a failing handler or reply function, stop), shared by
the entity runtime's tests and the behavior test kit's."""

from __future__ import annotations

from typing import assert_never

import attrs

from fluvial.core.behavior import Command, Effect, EventSourcedBehavior


@attrs.frozen
class Note(Command[tuple[str, ...]]):
    """Persist one `Noted` per text (atomically), then reply with all texts."""

    texts: tuple[str, ...]


@attrs.frozen
class Read(Command[tuple[str, ...]]):
    pass


@attrs.frozen
class Crash(Command[None]):
    """The command handler raises."""


@attrs.frozen
class Ignore(Command[None]):
    """Effect.unhandled()."""


@attrs.frozen
class Forget(Command[None]):
    """Persist, but forget to reply."""


@attrs.frozen
class BadReply(Command[int]):
    """Persist, then raise while computing the reply."""


@attrs.frozen
class Halt(Command[str]):
    """Effect.stop(), with a reply; with `last_words`, persist them first."""

    last_words: str | None = None


NotesCommand = Note | Read | Crash | Ignore | Forget | BadReply | Halt


@attrs.frozen
class Noted:
    text: str


@attrs.frozen
class Notes:
    texts: tuple[str, ...] = ()


NotesEffect = Effect[Noted, Notes]


def notes_command(state: Notes, command: NotesCommand) -> NotesEffect:
    match command:
        case Note(texts):
            return NotesEffect.persist_all(Noted(t) for t in texts).then_reply(
                command, lambda s: s.texts
            )
        case Read():
            return NotesEffect.reply(command, state.texts)
        case Crash():
            raise RuntimeError("bug in the command handler")
        case Ignore():
            return NotesEffect.unhandled()
        case Forget():
            return NotesEffect.persist(Noted("forgotten"))
        case BadReply():
            return NotesEffect.persist(Noted("bad reply")).then_reply(command, lambda s: 1 // 0)
        case Halt(last_words):
            if last_words is None:
                return NotesEffect.stop().then_reply(command, lambda s: "halted")
            return (
                NotesEffect.persist(Noted(last_words))
                .then_reply(command, lambda s: "halted")
                .then_stop()
            )
        case _:
            assert_never(command)


def notes_event(state: Notes, event: Noted) -> Notes:
    if event.text == "boom":
        raise ValueError("bug in the event handler")
    return Notes((*state.texts, event.text))


Notebook = EventSourcedBehavior[NotesCommand, Noted, Notes](
    entity_type="Notebook",
    empty_state=Notes(),
    command_handler=notes_command,
    event_handler=notes_event,
    command_types=(Note, Read, Crash, Ignore, Forget, BadReply, Halt),
)
