"""The `fluvial` command: the demo writes and deletes only its own files; `--version`.

Most of these tests are about the demo's files, not its services: they run the demo with its
two processes replaced by `write_demo_files` (the `quick_demo` fixture), which writes the files
the services would, marked as theirs. Two tests run the real services.
"""

from __future__ import annotations

import importlib.metadata
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import fluvial.examples.demo
from fluvial.cli import main
from fluvial.core.ids import slice_for
from fluvial.core.records import EventRecord
from fluvial.core.serialization import SerializedPayload
from fluvial.examples.demo_files import consumer_file, is_demo_journal
from fluvial.examples.demo_process import mark_as_demo_file
from fluvial.journal.sqlite._journal import open_sqlite_journal

ROOT = Path(__file__).resolve().parent.parent
CARTS = "3"


def run_demo(database: Path) -> int:
    return main(["demo", "--db", str(database), "--carts", CARTS])


async def write_demo_files(journal: Path, reports: Path, _carts: int) -> None:
    """What the demo's two services leave: each its database, marked as the demo's."""
    for path in (journal, reports):
        async with open_sqlite_journal(path) as database:
            await database.database.write(mark_as_demo_file)


@pytest.fixture
def quick_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fluvial.examples.demo, "_replicate", write_demo_files)


def write_user_journal(path: Path) -> None:
    """A user's real fluvial journal with one event in it."""

    async def write() -> None:
        async with open_sqlite_journal(path) as journal:
            pid = "Account|alice"
            payload = SerializedPayload("account.Deposited", 1, b"\x01")
            await journal.append([EventRecord(pid, 1, "Account", slice_for(pid), payload)])

    trio.run(write)


@pytest.mark.usefixtures("quick_demo")
def test_the_demo_leaves_files_that_only_start_with_its_name_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "shop.db"
    neighbours = {
        tmp_path / "shop.db.backup": b"the user's backup",
        tmp_path / "shop.db-2025": b"last year's journal",
        tmp_path / "shop.dbx": b"something else",
        tmp_path / "shop-consumer.db.backup": b"the user's backup of the consumer's file",
        tmp_path / "shop-consumer.dbx": b"something else again",
    }
    for path, content in neighbours.items():
        path.write_bytes(content)
    assert run_demo(database) == 0
    assert run_demo(database) == 0  # the second run replaces its own journal
    for path, content in neighbours.items():
        assert path.read_bytes() == content
    assert is_demo_journal(database)
    assert is_demo_journal(tmp_path / "shop-consumer.db")
    assert capsys.readouterr().out.count("equals the fold of the producer's journal") == 2


@pytest.mark.slow
def test_the_demo_runs_twice_in_a_row_on_its_default_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The real services: the second run replaces what the first one's processes left.
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--carts", CARTS]) == 0
    assert main(["demo", "--carts", CARTS]) == 0
    assert is_demo_journal(tmp_path / "demo-data" / "fluvial-demo.db")
    assert is_demo_journal(tmp_path / "demo-data" / "fluvial-demo-consumer.db")
    out = capsys.readouterr().out
    assert out.count("equals the fold of the producer's journal") == 2
    assert out.count("done.") == 2


def test_the_demo_refuses_a_users_journal_and_leaves_it_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "bank.db"
    write_user_journal(database)
    before = database.read_bytes()
    files_before = sorted(p.name for p in tmp_path.iterdir())
    assert not is_demo_journal(database)

    assert run_demo(database) == 2

    captured = capsys.readouterr()
    assert f"{database} exists and is not a journal written by `fluvial demo`" in captured.err
    assert "left unchanged" in captured.err
    assert captured.out == ""
    assert database.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == files_before
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM event_journal").fetchone() == (1,)


@pytest.mark.usefixtures("quick_demo")
def test_a_users_file_at_the_consumers_path_is_refused_and_nothing_is_deleted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "shop.db"
    assert run_demo(database) == 0  # a demo journal the next run would replace
    journal_before = database.read_bytes()
    reports = consumer_file(database)
    for file in tmp_path.glob("shop-consumer.db*"):
        file.unlink()
    write_user_journal(reports)
    reports_before = reports.read_bytes()

    assert run_demo(database) == 2

    assert f"{reports} exists and is not a journal written by `fluvial demo`" in (
        capsys.readouterr().err
    )
    assert reports.read_bytes() == reports_before
    assert database.read_bytes() == journal_before  # the demo's own journal is kept too


@pytest.mark.parametrize(
    "content",
    [b"", b"notes I keep in a text file\n", b"SQLite format 3\x00" + b"\x00" * 84],
    ids=["empty", "text", "truncated-sqlite"],
)
def test_the_demo_refuses_any_other_file(
    tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "notes.db"
    database.write_bytes(content)
    assert run_demo(database) == 2
    assert "is not a journal written by `fluvial demo`" in capsys.readouterr().err
    assert database.read_bytes() == content
    assert [p.name for p in tmp_path.iterdir()] == ["notes.db"]


def test_the_demo_refuses_another_database_with_a_table_named_like_its_marker(
    tmp_path: Path,
) -> None:
    database = tmp_path / "app.db"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE fluvial_demo (note TEXT NOT NULL)")
        conn.execute("INSERT INTO fluvial_demo VALUES ('my own data')")
    conn.close()
    before = database.read_bytes()
    assert run_demo(database) == 2
    assert database.read_bytes() == before


def test_the_demo_refuses_a_log_left_without_its_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    orphan = tmp_path / "shop.db-wal"
    orphan.write_bytes(b"a write-ahead log of some other database")
    assert run_demo(tmp_path / "shop.db") == 2
    assert "shop.db-wal exists without" in capsys.readouterr().err
    assert orphan.read_bytes() == b"a write-ahead log of some other database"
    assert not (tmp_path / "shop.db").exists()


def test_the_demo_help_says_what_it_writes_and_what_it_refuses(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "a producer runs shopping carts on its embedded SQLite journal" in text
    assert "a consumer projects them, exactly once, into a read model in its own" in text
    assert "the consumer's file beside it (shop.db -> shop-consumer.db)" in text
    assert "Files left there by an earlier `fluvial demo` are replaced" in text
    assert "Any other existing file at either path is refused and left unchanged" in text
    assert "A symlink FILE is followed once" in text


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"fluvial {importlib.metadata.version('fluvial')}"


def test_version_works_from_the_command_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fluvial", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"fluvial {importlib.metadata.version('fluvial')}"


KILLED_DEMO = """
import os, sys, trio
from pathlib import Path
from fluvial.examples.demo_process import mark_as_demo_file
from fluvial.journal.sqlite._journal import open_sqlite_journal

async def main() -> None:
    async with open_sqlite_journal(Path(sys.argv[1])) as journal:
        await journal.database.write(mark_as_demo_file)
        os._exit(0)  # killed: the marker is only in the write-ahead log

trio.run(main)
"""


@pytest.mark.slow
def test_a_killed_demo_is_recognized_by_its_log_and_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "demo.db"
    subprocess.run(
        [sys.executable, "-c", KILLED_DEMO, str(database)],
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert (tmp_path / "demo.db-wal").stat().st_size > 0
    assert is_demo_journal(database)
    assert run_demo(database) == 0  # the real services
    assert "equals the fold of the producer's journal" in capsys.readouterr().out


def test_the_demo_refuses_a_database_whose_log_has_no_index_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "user.db"
    with sqlite3.connect(database) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE accounts (name TEXT)")
    conn.close()
    (tmp_path / "user.db-wal").write_bytes(b"")  # a log without its -shm index
    files_before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    assert run_demo(database) == 2

    assert "left unchanged" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files_before


@pytest.mark.usefixtures("quick_demo")
def test_a_dangling_symlink_is_followed_once_and_never_deleted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "elsewhere").mkdir()
    target = tmp_path / "elsewhere" / "target.db"
    link = tmp_path / "dangling.db"
    link.symlink_to(target)

    assert run_demo(link) == 0  # creates the target, through the link
    assert is_demo_journal(target)
    assert run_demo(link) == 0  # replaces the target; the link stays a link to it

    assert link.is_symlink()
    assert link.readlink() == target
    assert is_demo_journal(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling.db", "elsewhere"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["target-consumer.db", "target.db"]
    assert capsys.readouterr().out.count("done.") == 2


def test_a_symlink_loop_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loop = tmp_path / "loop.db"
    loop.symlink_to(loop)
    assert run_demo(loop) == 2
    assert "cannot be resolved" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["loop.db"]
