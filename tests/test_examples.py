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


@pytest.mark.slow
def test_the_demo_replicates_carts_to_a_consumer_that_is_killed_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "demo" / "fluvial-demo.db"
    assert main(["demo", "--db", str(database), "--carts", "20"]) == 0
    out = capsys.readouterr().out
    assert "producer | alice: AddItem(cheese, 1)   -> refused: cart is checked out" in out
    assert re.search(r"producer \| serving stream 'carts' on 127\.0\.0\.1:\d+", out)
    assert re.search(r"consumer \| \d+ events projected", out)
    killed = re.search(r"SIGKILL to the consumer at (\d+) events projected", out)
    assert killed is not None
    # The consumer started again resumes from what it had stored, not from nothing.
    resumed = re.findall(r"consumer \| consuming 'carts' from [\d.:]+; (\d+) events projected", out)
    assert len(resumed) == 2 and int(resumed[1]) >= int(killed.group(1)) > 0, out
    events = re.search(r"producer \| done shopping: (\d+) events", out)
    assert events is not None
    assert (
        f"the consumer's read model equals the fold of the producer's journal: "
        f"{events.group(1)} events of 21 carts, each applied once, 21 carts checked out"
    ) in out
    assert database.exists() and (tmp_path / "demo" / "fluvial-demo-consumer.db").exists()


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
