"""The `fluvial` command: `fluvial demo` runs the replication demo; `fluvial --version`."""

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
Run two services on loopback, as two processes: a producer runs shopping carts on its embedded
SQLite journal and publishes their events over gRPC; a consumer projects them, exactly once,
into a read model in its own SQLite file. Each prints a live count of events; the demo kills
the consumer (SIGKILL) mid-stream and starts it again, and it resumes from its stored offsets.
At the end the demo checks that the read model is the fold of the producer's journal.

The demo writes two new database files: the journal --db FILE, and the consumer's file beside
it (shop.db -> shop-consumer.db); SQLite keeps FILE-wal and FILE-shm beside each while it
runs. Files left there by an earlier `fluvial demo` are replaced. Any other existing file at
either path is refused and left unchanged (exit status 2): the demo deletes only its own
files. A symlink FILE is followed once: its target is the journal (created if missing,
replaced or refused as above), the consumer's file is beside the target, and the link itself
is never deleted.
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
        help="run a producer and a consumer service replicating shopping carts over gRPC "
        "(writes only its own files)",
        description=_DEMO_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--db",
        type=Path,
        default=Path("demo-data/fluvial-demo.db"),
        metavar="FILE",
        help="the producer's journal file (the consumer's is beside it): created, or replaced if "
        "an earlier demo wrote it; any other file is refused (default %(default)s)",
    )
    demo.add_argument("--carts", type=int, default=200, help="carts to run (default %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `fluvial` command with `argv` (default: the process's arguments).

    Returns the exit status: 0 on success, 1 when the demo fails (`DemoFailed`: a service
    exited early, or the read model is not the fold of the journal), 2 when the demo refuses
    its `--db` file. `--help`
    and `--version` print and exit through `SystemExit`, as argparse does.
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "demo":
        from fluvial.examples.demo import DemoFailed, DemoFileRefused, run_demo

        try:
            with unwrap_lone_error():  # Ctrl-C: a plain KeyboardInterrupt, out of the nurseries
                trio.run(run_demo, args.db, args.carts)
        except DemoFileRefused as exc:
            # Raised before any nursery opens, so as itself: a message and a status, no traceback.
            print(f"fluvial demo: {exc}", file=sys.stderr)
            return 2
        except DemoFailed as exc:
            print(f"fluvial demo failed: {exc}", file=sys.stderr)
            return 1
    return 0
