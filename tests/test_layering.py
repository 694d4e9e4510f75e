"""The import rules of docs/architecture.md, read from the source with ``ast``.

Every import statement counts, at any depth: one inside a function runs
sideways just as much as one at the top of the module.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

SRC = pathlib.Path(__file__).resolve().parents[1] / "src"

# What each package may never import (besides the shells, which nothing below them imports).
_SHELLS = ("devise.cli", "devise.web")
FORBIDDEN = {
    # foundations: know nothing of training, search or the shells
    "devise.datasets": ("devise.training", "devise.search", *_SHELLS),
    "devise.embeddings": ("devise.training", "devise.search", *_SHELLS),
    "devise.encoders": ("devise.training", "devise.search", *_SHELLS),
    "devise.losses": ("devise.training", "devise.search", *_SHELLS),
    "devise.retrieval": ("devise.training", "devise.search", *_SHELLS),
    # shared by training, search and the shells, so below all of them
    "devise.config": ("devise.training", "devise.search", *_SHELLS),
    "devise.runs": ("devise.training", "devise.search", *_SHELLS),
    # composition: training and search never import each other
    "devise.training": ("devise.search", *_SHELLS),
    "devise.search": ("devise.training", *_SHELLS),
    # composition: the Beam pipeline reads runs and scans folders as search does, never training
    "devise.pipelines": ("devise.training", *_SHELLS),
}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules() -> list[tuple[str, pathlib.Path]]:
    return sorted((module_name(p), p) for p in (SRC / "devise").rglob("*.py"))


def imports(name: str, path: pathlib.Path) -> list[tuple[int, str, str | None]]:
    """``(line, imported module, imported name or None)`` for every import in a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found += [(node.lineno, target, alias.name) for alias in node.names]
    return found


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


MODULES = source_modules()


def test_the_scan_sees_the_tree():
    names = {name for name, _ in MODULES}
    assert {"devise.search.engine", "devise.training.trainer", "devise.cli.serve"} <= names


@pytest.mark.parametrize("name,path", MODULES, ids=[name for name, _ in MODULES])
def test_no_import_runs_sideways_or_upward(name, path):
    rules = [banned for package, banned in FORBIDDEN.items() if within(name, package)]
    wrong = []
    for line, target, imported in imports(name, path):
        # "from devise import training" imports the package devise.training
        modules = [target] + ([f"{target}.{imported}"] if imported and target == "devise" else [])
        for banned in (b for rule in rules for b in rule):
            if any(within(m, banned) for m in modules):
                wrong.append(f"{path.relative_to(SRC)}:{line} imports {modules[-1]} ({banned} is off limits here)")
    assert not wrong, "\n".join(wrong)


def is_private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


@pytest.mark.parametrize("name,path", MODULES, ids=[name for name, _ in MODULES])
def test_no_private_name_from_another_module(name, path):
    """A private name (or private module) used outside its home wants a public one."""
    own_package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    wrong = []
    for line, target, imported in imports(name, path):
        if not within(target, "devise") or target == name:
            continue
        if imported is not None and is_private(imported):
            wrong.append(f"{path.relative_to(SRC)}:{line} imports {imported} from {target}")
        # A package's private module (devise.datasets._reading) serves that package only.
        private_module = next((i for i, part in enumerate(target.split(".")) if is_private(part)), None)
        if private_module is not None:
            home = ".".join(target.split(".")[:private_module])
            if not within(own_package, home):
                wrong.append(f"{path.relative_to(SRC)}:{line} imports {target}, private to {home}")
    assert not wrong, "\n".join(wrong)
