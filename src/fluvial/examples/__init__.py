"""Example entities shipped with fluvial, used by the docs, the demo and the tests."""
