""".ci/start-postgres, the step of .ci/run that starts the local PostgreSQL cluster when it is
down, run with fake `pg_isready` and `pg_ctlcluster` first on PATH (the real cluster is never
touched): it starts the installed cluster only when the server does not answer, does nothing
when it answers or nothing is installed, and a failed start fails CI."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / ".ci" / "start-postgres"

# Each fake writes its arguments to the log, one call a line; exits as the environment says.
FAKE = """#!/bin/sh
echo "$(basename "$0") $*" >> "$FAKE_LOG"
exit "${{{rc}:-0}}"
"""


@attrs.frozen
class Machine:
    """A fake machine: a PATH of fakes (and the few commands the script uses), a config
    directory with one version, the log of the fakes' calls."""

    bin: Path
    conf: Path
    log: Path

    def run(
        self, *, up: bool, start_fails: bool = False, installed: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": str(self.bin),
            "FAKE_LOG": str(self.log),
            "FAKE_ISREADY_RC": "0" if up else "2",  # pg_isready: 2 is "no response"
            "FAKE_START_RC": "1" if start_fails else "0",
            "FLUVIAL_PG_CONF": str(self.conf if installed else self.conf / "missing"),
        }
        return subprocess.run(
            ["/bin/bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30
        )

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for command in ("ls", "head", "basename", "sh"):
        found = shutil.which(command)
        assert found is not None, command
        (bin_ / command).symlink_to(found)
    for fake, rc in (("pg_isready", "FAKE_ISREADY_RC"), ("pg_ctlcluster", "FAKE_START_RC")):
        (bin_ / fake).write_text(FAKE.format(rc=rc))
        (bin_ / fake).chmod(0o755)
    conf = tmp_path / "etc-postgresql"
    (conf / "15" / "main").mkdir(parents=True)
    return Machine(bin_, conf, tmp_path / "calls.log")


def test_a_server_that_is_down_is_started_with_the_installed_version(machine: Machine) -> None:
    result = machine.run(up=False)
    assert result.returncode == 0, result.stderr
    assert machine.calls() == [
        "pg_isready --quiet --host 127.0.0.1 --port 5432",
        "pg_ctlcluster --skip-systemctl-redirect 15 main start",
    ]


def test_a_server_that_answers_is_left_alone(machine: Machine) -> None:
    result = machine.run(up=True)
    assert result.returncode == 0, result.stderr
    assert machine.calls() == ["pg_isready --quiet --host 127.0.0.1 --port 5432"]


def test_without_an_installed_cluster_it_does_nothing(machine: Machine) -> None:
    result = machine.run(up=False, installed=False)
    assert result.returncode == 0, result.stderr
    assert machine.calls() == []


def test_without_pg_ctlcluster_it_does_nothing(machine: Machine) -> None:
    (machine.bin / "pg_ctlcluster").unlink()
    result = machine.run(up=False)
    assert result.returncode == 0, result.stderr
    assert machine.calls() == []


def test_a_start_that_fails_fails_the_ci_run(machine: Machine) -> None:
    result = machine.run(up=False, start_fails=True)
    assert result.returncode != 0
    assert machine.calls()[-1] == "pg_ctlcluster --skip-systemctl-redirect 15 main start"


def test_ci_runs_it_before_the_tests() -> None:
    steps = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line[:1] != "#"]
    assert steps.index(".ci/start-postgres") < steps.index(".venv/bin/just test")
    assert os.access(SCRIPT, os.X_OK)
