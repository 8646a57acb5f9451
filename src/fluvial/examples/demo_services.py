"""How `fluvial demo` runs its services: each a child process whose lines it prints with the
service's name and reads for what it reports (its port, its count of events)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

import fluvial
from fluvial import FluvialError
from fluvial.examples.demo_process import say


class DemoFailed(FluvialError):
    """A service of the demo exited early, the demo ran past its time limit, or the consumer's
    read model is not the fold of the producer's journal (the message says which)."""


@attrs.define(eq=False)
class ServiceProcess:
    """A service of the demo running as a child process. Its lines are printed with its name
    and kept (`lines`); the last count of events it printed, its port and whether it is done
    shopping are kept too."""

    name: str
    process: trio.Process
    lines: list[str] = attrs.field(factory=list)
    events: int = 0
    port: int | None = None
    done_shopping: bool = False
    ended: bool = False
    _changed: trio.Event = attrs.field(factory=trio.Event)

    async def follow(self) -> None:
        """Print and read its lines until it closes its output."""
        assert self.process.stdout is not None
        buffer = b""
        while chunk := await self.process.stdout.receive_some():
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                self._read(line.decode(errors="replace"))
        self.ended = True
        self._notify()

    def _read(self, line: str) -> None:
        say(f"  {self.name} | {line}")
        self.lines.append(line)
        if served := re.search(r"serving stream .* on [\d.]+:(\d+)", line):
            self.port = int(served.group(1))
        if count := re.search(r"(\d+) events", line):
            self.events = int(count.group(1))
        self.done_shopping = self.done_shopping or line.startswith("done shopping")
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        """Until `condition` holds, after one of its lines; DemoFailed if it exits first."""
        while not condition():
            if self.ended:
                raise DemoFailed(f"the {self.name} exited before {what}")
            await self._changed.wait()

    async def send_line(self, line: str) -> None:
        """Write `line` to its standard input (a service that reads commands there)."""
        assert self.process.stdin is not None
        await self.process.stdin.send_all(line.encode() + b"\n")

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, as a crash or a power cut."""
        self.process.kill()


@asynccontextmanager
async def running(
    name: str, module: str, *args: str, import_paths: Sequence[Path] = ()
) -> AsyncIterator[ServiceProcess]:
    """Run `python -m module args` for the block; then close its stdin, which stops it (or
    kill it after 5 s). Its own process group: a Ctrl-C reaches the demo, which stops it.
    `import_paths` are where `module` and its imports are found, besides fluvial."""
    paths = [Path(fluvial.__file__).parents[1], *import_paths]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(path) for path in paths)}
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", module, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
        env=env,
    )
    try:
        service = ServiceProcess(name, process)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.follow)
            try:
                yield service
            finally:
                with trio.CancelScope(shield=True):
                    await _stop(process)
    finally:
        process.kill()  # does nothing to one that has exited


async def _stop(process: trio.Process) -> None:
    assert process.stdin is not None
    await process.stdin.aclose()
    with trio.move_on_after(5):
        await process.wait()
        return
    process.kill()
