"""The layering of README's Architecture section: a package imports only the packages below it.

registry/ is the ground floor (with migrations/, its Alembic scripts); indexer/ and composer/ stand
on it side by side; loraregistry/ (the facade and the CLI) on all of them. An upward import (say
registry/ importing the facade, as registry/api.py once did inside its functions) fails here,
wherever it hides: function bodies and TYPE_CHECKING blocks included.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"registry", "indexer", "composer", "loraregistry", "toyworld", "migrations"}
ALLOWED = {
    "registry": {"registry", "migrations"},
    "migrations": {"migrations", "registry"},
    "indexer": {"indexer", "registry"},
    "composer": {"composer", "registry"},
    "toyworld": {"toyworld", "registry"},
    "loraregistry": PROJECT,  # toyworld too: the built-in model and demo dump ship in toyworld/assets
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & PROJECT


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_upward_imports(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if "work" in path.relative_to(ROOT / package).parts:
            continue
        for target in imported_packages(path) - ALLOWED[package]:
            bad.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from loraregistry.api import Registry\n    import indexer.search\n")
    assert imported_packages(f) == {"loraregistry", "indexer"}
