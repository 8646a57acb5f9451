"""Ctrl-C ends a program that runs fluvial with a plain `KeyboardInterrupt`, as any Python
program: exit by SIGINT (a shell shows 130), and no `ExceptionGroup` on stderr.

Real processes, each sent one SIGINT while it carries out commands: `fluvial demo`, and a small
user program (`ctrl_c_program.py`) that opens only fluvial's context managers. Each program is
interrupted at a few different moments, so that the interrupt lands in different tasks. Where it
lands is a race, so the rarer landings are checked without one: fluvial's own tasks (which run
the handlers and the reply functions) are KI-protected, and the user's code is not.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio

import fluvial.entity._live_entities
from fluvial.core.behavior import Command, Effect, EventSourcedBehavior
from fluvial.core.serialization import SerializerRegistry
from fluvial.entity import open_entities
from fluvial.entity._mailbox import Mailbox
from fluvial.journal.sqlite._journal import open_sqlite_journal
from fluvial.testing import MemoryJournal

USER_PROGRAM = Path(__file__).with_name("ctrl_c_program.py")
DELAYS = (0.0, 0.05, 0.3)


def _sigint_as_from_a_terminal() -> None:
    # A background job of a non-interactive shell (a CI script, say) starts with SIGINT
    # ignored, and then Python installs no KeyboardInterrupt handler at all.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def interrupt(command: list[str], ready: bytes, delay: float) -> tuple[int, str]:
    """Run `command`, send it SIGINT `delay` s after it printed `ready`; its exit and stderr."""
    output = bytearray()
    errors = bytearray()
    is_ready = trio.Event()

    async def drain(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
        while chunk := await stream.receive_some():
            into += chunk
            if ready in output:
                is_ready.set()
        is_ready.set()  # it ended on its own: the assertions say how

    with trio.fail_after(60):  # a program that ignores Ctrl-C or hangs on it fails here
        process = await trio.lowlevel.open_process(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_sigint_as_from_a_terminal,
        )
        assert process.stdout is not None
        assert process.stderr is not None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain, process.stdout, output)
                nursery.start_soon(drain, process.stderr, errors)
                await is_ready.wait()
                await trio.sleep(delay)  # where the interrupt lands, not a synchronization
                process.send_signal(signal.SIGINT)
            await process.wait()
        finally:
            process.kill()
    assert process.returncode is not None
    return process.returncode, errors.decode(errors="replace")


def assert_plain_keyboard_interrupt(returncode: int, stderr: str) -> None:
    assert "ExceptionGroup" not in stderr and "Exception Group" not in stderr, stderr
    assert "KeyboardInterrupt" in stderr.splitlines(), stderr  # the traceback's last line
    # Python ends an uncaught KeyboardInterrupt by SIGINT: exit code 130 in a shell.
    assert returncode in (-signal.SIGINT, 130), (returncode, stderr)


@pytest.mark.slow
@pytest.mark.parametrize("delay", DELAYS)
async def test_ctrl_c_ends_a_user_program_with_keyboard_interrupt(
    tmp_path: Path, delay: float
) -> None:
    returncode, stderr = await interrupt(
        [sys.executable, str(USER_PROGRAM), str(tmp_path / "journal.db")], b"ready", delay
    )
    assert_plain_keyboard_interrupt(returncode, stderr)


@pytest.mark.slow
@pytest.mark.parametrize("delay", DELAYS)
async def test_ctrl_c_ends_the_demo_with_keyboard_interrupt(tmp_path: Path, delay: float) -> None:
    # Enough carts that the demo's producer is still shopping when the interrupt comes, and
    # the consumer running: the demo stops both its services, which print nothing on stderr.
    command = [sys.executable, "-m", "fluvial", "demo", "--db", str(tmp_path / "demo.db")]
    returncode, stderr = await interrupt(
        [*command, "--carts", "100000"], b"consumer | consuming 'carts'", delay
    )
    assert_plain_keyboard_interrupt(returncode, stderr)
    assert stderr.count("Traceback") == 1, stderr  # the demo's own, none of its services'
    await trio.sleep(0.5)
    assert _processes_running_on(tmp_path) == [], "the demo's services outlived it"


@attrs.frozen
class Probe(Command[tuple[bool, bool]]):
    """Replies whether the handler, then the reply function, ran KI-protected."""


@attrs.frozen
class Probed:
    in_handler: bool


def probe(_state: None, command: Probe) -> Effect[Probed, None]:
    in_handler = trio.lowlevel.currently_ki_protected()
    return (
        Effect[Probed, None]
        .persist(Probed(in_handler))
        .then_reply(command, lambda _s: (in_handler, trio.lowlevel.currently_ki_protected()))
    )


Prober = EventSourcedBehavior[Probe, Probed, None](
    entity_type="Prober",
    empty_state=None,
    command_handler=probe,
    event_handler=lambda state, _event: state,
    command_types=(Probe,),
)


@pytest.mark.parametrize("journal_kind", ["memory", "sqlite"])
async def test_ctrl_c_lands_in_the_users_code_never_in_fluvials_tasks(
    tmp_path: Path, journal_kind: str
) -> None:
    # On SQLite the reply function runs in the task that learns of the commit, on the memory
    # journal in the entity task: Ctrl-C inside either would strand or fail commands.
    registry = SerializerRegistry()
    registry.register(Probed, "probe.Probed")
    async with (
        open_sqlite_journal(tmp_path / "journal.db")
        if journal_kind == "sqlite"
        else _memory_journal() as journal,
        open_entities(journal, registry, [Prober]) as entities,
    ):
        assert not trio.lowlevel.currently_ki_protected()  # the body is the user's code
        assert await entities.ref(Prober, "p").ask(Probe()) == (True, True)
        assert not trio.lowlevel.currently_ki_protected()


async def test_an_entity_is_started_ki_protected_from_the_askers_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An entity starts inside the first `ask` to it, in the user's task. A Ctrl-C landing in
    # trio's start_soon there could leave the entity's task added to the nursery but never
    # scheduled, and `open_entities` would wait for it forever.
    protected: list[bool] = []

    class RecordingMailbox(Mailbox):
        def __init__(self, capacity: int) -> None:
            protected.append(trio.lowlevel.currently_ki_protected())
            super().__init__(capacity)

    monkeypatch.setattr(fluvial.entity._live_entities, "Mailbox", RecordingMailbox)
    registry = SerializerRegistry()
    registry.register(Probed, "probe.Probed")
    async with open_entities(MemoryJournal(), registry, [Prober]) as entities:
        await entities.ref(Prober, "p").ask(Probe())
    assert protected == [True]


def _processes_running_on(directory: Path) -> list[str]:
    """The command lines of this machine's processes that name `directory` (Linux's /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # it ended meanwhile
            continue
        if str(directory) in command:
            found.append(command)
    return found


@contextlib.asynccontextmanager
async def _memory_journal() -> AsyncIterator[MemoryJournal]:
    yield MemoryJournal()
