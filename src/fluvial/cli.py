"""The `fluvial` command."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import trio

from fluvial.nursery_errors import unwrap_lone_error


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fluvial", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="shopping carts on an embedded SQLite journal")
    demo.add_argument(
        "--db",
        type=Path,
        default=Path("demo-data/fluvial-demo.db"),
        help="journal file (recreated); default %(default)s",
    )
    demo.add_argument("--carts", type=int, default=200, help="carts to run (default %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "demo":
        from fluvial.examples.demo import run_demo

        with unwrap_lone_error():  # Ctrl-C: a plain KeyboardInterrupt, out of the demo's nurseries
            trio.run(run_demo, args.db, args.carts)
    return 0
