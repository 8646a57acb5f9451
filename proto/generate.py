"""Generate fluvial's protobuf code from proto/fluvial/v1/*.proto, or check that it is current.

    python proto/generate.py           # regenerate src/fluvial/grpc/_proto (`just proto`)
    python proto/generate.py --check   # exit 1 if the committed code is not what the .proto gives

The code is betterproto2's (messages and the grpclib service base and client stub), compiled by
grpcio-tools' protoc with the betterproto2-compiler plugin, both pinned in pyproject.toml so
that every checkout generates the same code. The plugin formats its output with ruff, whose
version is not pinned; the check therefore compares the Python files' syntax trees (the
docstrings included), not their text, so a newer ruff's layout never reads as stale code.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUTPUT = ROOT / "src" / "fluvial" / "grpc" / "_proto"
# Async client stubs (the unary calls use them) and the grpclib service base.
OPTIONS = "client_generation=async,server_generation=async"


def generate(into: Path) -> None:
    """Write the generated package into the empty directory `into`."""
    bin_dir = Path(sys.executable).parent
    plugin = bin_dir / "protoc-gen-python_betterproto2"
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={PROTO_ROOT}",
            f"--plugin=protoc-gen-python_betterproto2={plugin}",
            f"--python_betterproto2_out={into}",
            f"--python_betterproto2_opt={OPTIONS}",
            *protos,
        ],
        cwd=ROOT,  # the plugin runs ruff, which reads the project's settings from here
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},  # ruff is the one in this environment
        capture_output=True,  # the plugin names each file it writes: shown only on failure
        text=True,
    )
    if done.returncode:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"protoc failed with exit code {done.returncode}")


def _files(directory: Path) -> dict[str, Path]:
    return {
        str(path.relative_to(directory)): path
        for path in directory.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def _same(generated: Path, committed: Path) -> bool:
    if generated.suffix == ".py":
        return ast.dump(ast.parse(generated.read_text())) == ast.dump(
            ast.parse(committed.read_text())
        )
    return generated.read_bytes() == committed.read_bytes()


def stale_files(generated: Path, committed: Path) -> list[str]:
    """The files that differ between two generated trees (missing on either side included)."""
    new, old = _files(generated), _files(committed)
    return sorted(
        name for name in new.keys() | old.keys() if name not in new or name not in old
    ) + sorted(name for name in new.keys() & old.keys() if not _same(new[name], old[name]))


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as scratch:
        generated = Path(scratch) / "_proto"
        generated.mkdir()
        generate(generated)
        if argv == ["--check"]:
            stale = stale_files(generated, OUTPUT)
            if stale:
                print(
                    f"{OUTPUT.relative_to(ROOT)} is not what proto/ generates (run `just proto`): "
                    + ", ".join(stale),
                    file=sys.stderr,
                )
                return 1
            return 0
        if argv:
            print(__doc__, file=sys.stderr)
            return 2
        shutil.rmtree(OUTPUT, ignore_errors=True)
        shutil.copytree(generated, OUTPUT)
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
