"""The `storage` fixture: each test that takes it runs on a memory journal and on a SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest

from entity.entity_fixtures import Storage


@pytest.fixture(params=["memory", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    return Storage(request.param, tmp_path)
