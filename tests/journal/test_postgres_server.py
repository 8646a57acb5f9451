"""Without a PostgreSQL server its tests skip with the reason, except in CI, where they fail."""

from __future__ import annotations

import pytest

from postgres_server import require_postgres

NOWHERE = "postgresql://postgres@127.0.0.1:1/test"


def _outcome() -> BaseException:
    # Caught whatever it is: a skip escaping a test would only skip it, not fail it.
    with pytest.raises(BaseException) as raised:
        require_postgres(NOWHERE)
    return raised.value


def test_without_a_server_the_tests_skip_with_how_to_start_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CI", raising=False)
    outcome = _outcome()
    assert isinstance(outcome, pytest.skip.Exception)
    assert f"PostgreSQL not reachable at {NOWHERE}" in str(outcome)
    assert "pg_ctlcluster" in str(outcome)


def test_in_ci_without_a_server_the_tests_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    outcome = _outcome()
    assert isinstance(outcome, pytest.fail.Exception)
    assert "CI=true" in str(outcome)
