"""The README's example and the demo run as documented."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fluvial.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_example_runs_and_prints_its_reply(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"## A taste\n\n```python\n(.*?)```", readme, re.S)
    assert match is not None, "the README lost its example"
    script = tmp_path / "example.py"
    script.write_text(match.group(1))
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "10"
    assert (tmp_path / "bank.db").exists()


def test_the_demo_shows_carts_a_refusal_a_caught_up_projection_and_recovery(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "demo" / "fluvial-demo.db"
    assert main(["demo", "--db", str(database), "--carts", "20"]) == 0
    out = capsys.readouterr().out
    assert "AddItem(cheese, 1) -> refused: cart is checked out" in out
    assert re.search(r"\d+ events persisted", out)
    assert "caught up (backlog 0)" in out
    assert "cart-0000 -> Summary(" in out and "checked_out=True" in out
    assert "the projection followed it (backlog 0)" in out
    assert database.exists()


def test_the_demo_command_is_installed_as_a_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fluvial", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert result.returncode == 0
    assert "demo" in result.stdout
