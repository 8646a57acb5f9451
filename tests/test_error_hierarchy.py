"""Every error class fluvial defines derives from `FluvialError` (and so do the examples').

Walks every module of the package, so that a new error class anywhere is checked too. Private
classes (a leading underscore) are internal signals that never leave fluvial.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import fluvial
from fluvial.core.behavior import CommandRejected
from fluvial.core.errors import FluvialError


def error_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for module_info in pkgutil.walk_packages(fluvial.__path__, "fluvial."):
        if module_info.name == "fluvial.__main__":  # running it runs the CLI
            continue
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
                and not name.startswith("_")
            ):
                found[f"{module.__name__}.{name}"] = value
    return found


def test_every_error_class_of_fluvial_derives_from_fluvial_error() -> None:
    classes = error_classes()
    assert "fluvial.core.behavior.CommandRejected" in classes  # the walk found them
    assert [name for name, cls in classes.items() if not issubclass(cls, FluvialError)] == []


def test_every_error_the_package_exports_derives_from_fluvial_error() -> None:
    exported = {
        name: value
        for name, value in vars(fluvial).items()
        if inspect.isclass(value) and issubclass(value, BaseException)
    }
    assert "CommandRejected" in exported
    assert [name for name, cls in exported.items() if not issubclass(cls, FluvialError)] == []


def test_a_users_command_rejected_subclass_keeps_its_own_constructor() -> None:
    class OutOfStock(CommandRejected):
        def __init__(self, item: str, available: int) -> None:
            super().__init__(f"only {available} {item} left")
            self.item, self.available = item, available

    error = OutOfStock("apple", 2)
    assert isinstance(error, FluvialError)
    assert (str(error), error.item, error.available) == ("only 2 apple left", "apple", 2)
