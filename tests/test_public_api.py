"""Every public name of `fluvial` and `fluvial.testing` is documented, pydoc shows no
section-divider comment as its documentation, and docs/errors.md lists every error.

pydoc (and `help()`) shows the comment block right above a def or class when it has no
docstring, and beside one when it has: a `# -- constructors -----` line there reads as the
documentation of the first constructor. So dividers must not sit right above public objects.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fluvial
import fluvial.grpc
import fluvial.journal.memory
import fluvial.journal.postgres
import fluvial.journal.sqlite
import fluvial.projection
import fluvial.testing
from fluvial.core.behavior import CommandRejected
from fluvial.core.errors import FluvialError

PUBLIC_MODULES = (
    fluvial,
    fluvial.testing,
    fluvial.projection,
    fluvial.journal.sqlite,
    fluvial.journal.memory,
    fluvial.journal.postgres,
    fluvial.grpc,
)
ERRORS_DOC = Path(__file__).resolve().parent.parent / "docs" / "errors.md"

# A comment line made of a rule: `# ----`, `# -- name ---`, `# ====`, `#####`, `# ****`.
_DIVIDER = re.compile(r"^\s*#+\s*(?:[-=#*~_]{2,}|.*[-=#*~_]{4,}\s*$)")


def _public_objects() -> Iterator[tuple[str, Any]]:
    """(qualified name, object) of each public class and function, and of their methods and
    properties (those defined by fluvial's classes, inherited ones included)."""
    for module in PUBLIC_MODULES:
        for name in sorted(vars(module)):
            value = getattr(module, name)
            if name.startswith("_") or isinstance(value, types.ModuleType):
                continue
            if not (inspect.isclass(value) or callable(value)):
                continue
            qualified = f"{module.__name__}.{name}"
            yield qualified, value
            if inspect.isclass(value):
                yield from _public_members(qualified, value)


def _public_members(qualified: str, cls: type) -> Iterator[tuple[str, Any]]:
    seen: set[str] = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("fluvial."):
            continue
        for name, member in vars(klass).items():
            if name.startswith("_") or name in seen:
                continue
            function = _function_of(member)
            if function is not None:
                seen.add(name)
                yield f"{qualified}.{name}", function


def _function_of(member: object) -> Any:
    """The function behind a method, static/class method or property; None for data."""
    if isinstance(member, staticmethod | classmethod):
        return member.__func__
    if isinstance(member, property):
        return member.fget
    if inspect.isfunction(member):
        return member
    return None


def _has_own_docstring(value: Any) -> bool:
    # A class's own docstring: getdoc would inherit its base's, and a class must say what it
    # is itself.
    doc = vars(value).get("__doc__") if inspect.isclass(value) else value.__doc__
    return bool(doc and doc.strip())


def _divider_above(value: Any) -> str | None:
    try:
        comments = inspect.getcomments(inspect.unwrap(value))
    except (OSError, TypeError):
        return None  # no Python source (a builtin): pydoc shows no comment either
    if comments is None:
        return None
    for line in comments.splitlines():
        if _DIVIDER.match(line):
            return line.strip()
    return None


PUBLIC = list(_public_objects())


def test_the_walk_finds_the_public_api() -> None:
    names = {name for name, _ in PUBLIC}
    assert {
        "fluvial.open_entities",
        "fluvial.EventEnvelope.entity_id",
        "fluvial.PersistenceId.parse",
        "fluvial.SqliteOffsetStore.reset",
        "fluvial.testing.BehaviorTestKit",
    } <= names
    assert not any(name.startswith("fluvial.core") for name in names)  # modules are skipped


def test_every_public_class_function_and_method_has_a_docstring() -> None:
    missing = sorted(name for name, value in PUBLIC if not _has_own_docstring(value))
    assert missing == []


def test_no_section_divider_is_shown_as_documentation() -> None:
    shown = sorted(
        f"{name}: {divider}"
        for name, value in PUBLIC
        if (divider := _divider_above(value)) is not None
    )
    assert shown == []


def test_the_divider_check_recognizes_dividers() -> None:
    for divider in ("# -- constructors ----", "# --------", "# ==== x ====", "########"):
        assert _DIVIDER.match(divider), divider
    for comment in ("# Why: the writer owns the connection.", "# a - b", "# see --db"):
        assert not _DIVIDER.match(comment), comment


def _error_classes() -> dict[str, type[BaseException]]:
    """Every public exception class fluvial defines: the `FluvialError` subclasses of all its
    modules (imported here, so that an error of a module `fluvial` does not import yet counts
    too), and every exception class `fluvial` or `fluvial.testing` exports."""
    for info in pkgutil.walk_packages(fluvial.__path__, "fluvial."):
        if info.name != "fluvial.__main__":  # it runs the command
            importlib.import_module(info.name)
    found: list[type[BaseException]] = [FluvialError]
    pending: list[type[BaseException]] = [FluvialError]
    while pending:
        for subclass in pending.pop().__subclasses__():
            found.append(subclass)
            pending.append(subclass)
    for module in PUBLIC_MODULES:
        found += [
            v for v in vars(module).values() if isinstance(v, type) and issubclass(v, BaseException)
        ]
    # Subclasses of CommandRejected are business errors of a behavior (the examples' own), not
    # errors of fluvial.
    return {
        cls.__name__: cls
        for cls in found
        if cls.__module__.startswith("fluvial.")
        and not cls.__name__.startswith("_")
        and (cls is CommandRejected or not issubclass(cls, CommandRejected))
    }


def _documented_errors() -> dict[str, str]:
    """error name -> base name, from the rows of the table under "## The errors"."""
    text = ERRORS_DOC.read_text()
    section = text.split("\n## The errors\n", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `(\w+)` \| `(\w+)` \|", section, re.M))


def test_every_error_fluvial_defines_has_a_row_in_docs_errors_md() -> None:
    documented = _documented_errors()
    errors = _error_classes()
    assert {"FluvialError", "JournalConflict", "CommandRejected", "DemoFileRefused"} <= set(errors)
    missing = sorted(name for name in errors if name not in documented)
    assert missing == [], "add a row for each to docs/errors.md"
    wrong_base = sorted(
        f"{name}: documented {documented[name]}, is {cls.__bases__[0].__name__}"
        for name, cls in errors.items()
        if documented[name] != cls.__bases__[0].__name__
    )
    assert wrong_base == []


def test_docs_errors_md_lists_only_errors_that_exist() -> None:
    assert sorted(set(_documented_errors()) - set(_error_classes())) == []


def test_all_lists_exactly_the_public_names_each_public_module_exports() -> None:
    for module in PUBLIC_MODULES:
        exported = {
            name
            for name, value in vars(module).items()
            if not name.startswith("_") and not isinstance(value, types.ModuleType)
        }
        assert sorted(module.__all__) == sorted(exported), module.__name__
