"""The `fluvial` command: `fluvial demo` runs the shopping-cart demo; `fluvial --version`."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from fluvial.nursery_errors import unwrap_lone_error

_DEMO_HELP = """\
Run shopping carts on an embedded SQLite journal: typed commands and replies, a checked-out
cart refusing changes, many carts at once (group commit), an exactly-once projection that
catches up and then follows, and carts recovered from snapshots after a restart.

The demo writes one new journal file, --db FILE (SQLite keeps FILE-wal and FILE-shm beside
it while it runs). A journal left there by an earlier `fluvial demo` is replaced. Any other
existing file at that path is refused and left unchanged (exit status 2): the demo deletes
only its own files. A symlink FILE is followed once: its target is the journal (created if
missing, replaced or refused as above), and the link itself is never deleted.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fluvial", description="fluvial: typed, trio-native event sourcing."
    )
    parser.add_argument(
        "--version", action="version", version=f"fluvial {importlib.metadata.version('fluvial')}"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="run shopping carts on an embedded SQLite journal (writes only its own files)",
        description=_DEMO_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--db",
        type=Path,
        default=Path("demo-data/fluvial-demo.db"),
        metavar="FILE",
        help="the demo's journal file: created, or replaced if an earlier demo wrote it; "
        "any other file is refused (default %(default)s)",
    )
    demo.add_argument("--carts", type=int, default=200, help="carts to run (default %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `fluvial` command with `argv` (default: the process's arguments).

    Returns the exit status: 0 on success, 2 when the demo refuses its `--db` file. `--help`
    and `--version` print and exit through `SystemExit`, as argparse does.
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "demo":
        from fluvial.examples.demo import DemoFileRefused, run_demo

        try:
            with unwrap_lone_error():  # Ctrl-C: a plain KeyboardInterrupt, out of the nurseries
                trio.run(run_demo, args.db, args.carts)
        except DemoFileRefused as exc:
            # Raised before any nursery opens, so as itself: a message and a status, no traceback.
            print(f"fluvial demo: {exc}", file=sys.stderr)
            return 2
    return 0
