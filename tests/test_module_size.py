"""No source module grows past about 600 lines unless its docstring says why it must be one piece."""

from __future__ import annotations

import ast

LIMIT = 600


def test_source_modules_stay_small_or_say_why(repo_root):
    too_long = []
    for path in sorted((repo_root / "src" / "devise").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n") + 1
        if lines <= LIMIT:
            continue
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if "one piece" not in docstring:
            too_long.append(f"{path.relative_to(repo_root)}: {lines} lines")
    assert not too_long, (
        f"modules over {LIMIT} lines: split them, or say in the module docstring why each must be one piece: "
        + "; ".join(too_long)
    )


def test_the_architecture_doc_names_every_module(repo_root):
    doc = (repo_root / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = []
    for path in sorted((repo_root / "src" / "devise").rglob("*.py")):
        parts = path.relative_to(repo_root / "src").with_suffix("").parts
        if parts[-1] != "__init__" and f"- `{'.'.join(parts)}`" not in doc:
            missing.append(".".join(parts))
    assert not missing, f"docs/architecture.md's module map lacks: {', '.join(missing)}"
