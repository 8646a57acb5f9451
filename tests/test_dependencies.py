"""Every package that fluvial's code imports is declared in pyproject.toml.

A dependency that is only installed because another one pulls it in (`outcome` comes with trio)
works until that other package drops it; a user's `pip install fluvial` then breaks at import.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src" / "fluvial"
# Public modules that run under pytest (the journal contract suite) may use the testing extra.
RUNS_UNDER_PYTEST = SOURCE / "testing"


def _requirement_names(requirements: list[str]) -> set[str]:
    return {
        _normalized(re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0])
        for requirement in requirements
    }


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_top_level_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"fluvial", "__future__"}


def _distributions(module: str) -> set[str]:
    found = importlib.metadata.packages_distributions().get(module)
    assert found, f"{module} is imported by fluvial but no installed distribution provides it"
    return {_normalized(name) for name in found}


def test_every_imported_package_is_a_declared_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = _requirement_names(project["dependencies"])
    testing = required | _requirement_names(project["optional-dependencies"]["testing"])
    undeclared: list[str] = []
    for path in sorted(SOURCE.rglob("*.py")):
        allowed = testing if path.is_relative_to(RUNS_UNDER_PYTEST) else required
        for module in sorted(_imported_top_level_modules(path)):
            if not _distributions(module) & allowed:
                undeclared.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not undeclared, undeclared


def test_importing_fluvial_does_not_load_the_postgresql_driver() -> None:
    """A program on the embedded SQLite default pays nothing for the PostgreSQL backend."""
    import subprocess

    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, fluvial; print('psycopg' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert loaded == "False"
