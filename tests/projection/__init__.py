"""Projection tests (a package, so that its conftest has its own module name)."""
