"""The suite's hypothesis settings, loaded before any test (`-p hypothesis_profile` in
pyproject.toml's addopts): the profile in force, without a per-example deadline.

A deadline (hypothesis's default is 200 ms) measures the machine, not the code: on a busy
laptop a fast property fails at random. Under CI=true hypothesis loads its own "ci" profile,
which has none already; this keeps that profile's other settings (derandomize, ...). A
plugin module rather than tests/conftest.py, which mypy would see as a second module named
`conftest`, beside tests/grpc/conftest.py.
"""

from hypothesis import settings

settings.register_profile("fluvial", settings.default, deadline=None)
settings.load_profile("fluvial")
