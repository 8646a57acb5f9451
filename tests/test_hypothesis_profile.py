"""The suite's properties run without a per-example deadline (tests/hypothesis_profile.py),
and under CI=true with the rest of hypothesis's "ci" profile."""

import os

from hypothesis import settings


def test_the_properties_have_no_deadline_and_keep_the_ci_profile_under_ci() -> None:
    current = settings.default
    assert current is not None
    assert current.deadline is None
    if os.environ.get("CI") == "true":
        assert current.derandomize
        assert current.database is None
