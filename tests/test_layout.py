"""The package's rooms import only what docs/development.md's table allows, and the examples only the public API."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "dearkd_hf"

# The room of a module (its first folder under dearkd_hf, "method" for the top-level modules, "hub.lookup" and
# "hub.upload" apart from the model card) -> the rooms it may import from. Kept equal to docs/development.md.
LOWER_HUB = {"hub.lookup", "hub.upload"}
ALLOWED = {
    "runs": {"runs"},
    "modeling": {"modeling"},
    "hub.lookup": {"runs", "hub.lookup"},
    "hub.upload": {"runs", "hub.upload"},
    "data": {"data", "runs", "hub.lookup"},
    "models": {"models", "data", "runs", "hub.lookup", "modeling"},
    "hub.model_card": {"models", "hub.lookup", "hub.model_card", "runs", "data", "modeling"},
    "method": {"method", "models", "data", "runs", "modeling", "hub.lookup", "hub.upload", "hub.model_card"},
    "inversion": {"inversion", "models", "data", "runs", "modeling", "hub.lookup"},
    "scripts": {"scripts", "method", "models", "data", "runs", "modeling", "hub.lookup", "hub.upload", "inversion"},
}


def room(module: str) -> str:
    """``dearkd_hf.runs.lock`` -> ``runs``; ``dearkd_hf.trainer`` -> ``method``; ``dearkd_hf.hub.lookup`` -> itself."""
    parts = module.split(".")[1:]
    if not parts or parts == ["__init__"]:
        return "root"
    if parts == ["version"]:
        return "version"  # a leaf every room may read
    if parts[0] == "hub":
        return f"hub.{parts[1]}" if len(parts) > 1 else "hub.lookup"  # the room's __init__ exports lookup alone
    return parts[0] if (PACKAGE / parts[0]).is_dir() else "method"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[str]:
    """The dearkd_hf modules ``path`` imports (relative imports resolved), at any depth of the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] == "dearkd_hf"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "dearkd_hf":
                continue
            # "from .hub import lookup" names a module; "from .lookup import x" names symbols of one.
            submodules = [f"{target}.{alias.name}" for alias in node.names]
            found += [m for m in submodules if _is_module(m)] or [target]
    return found


def _is_module(dotted: str) -> bool:
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if "metrics" not in p.parts)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_module_imports_only_lower_rooms(path):
    name = module_name(path)
    own = room(name)
    if own == "version":
        assert not imported_modules(path)
        return
    for target in imported_modules(path):
        if name == "dearkd_hf":
            continue  # the package's __init__ gathers the public names
        assert target != "dearkd_hf", f"{name} imports the package root (an import that runs back up)"
        allowed = ALLOWED.get(own, set()) | {"version"}
        assert room(target) in allowed, f"{name} ({own}) imports {target} ({room(target)})"


def test_the_core_never_imports_examples_benchmarks_or_tools():
    for path in SOURCES:
        for target in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(target, ast.ImportFrom) and not target.level and target.module:
                assert target.module.split(".")[0] not in {"examples", "benchmarks", "tools", "tests"}, path


def test_the_table_in_development_md_names_every_room():
    text = (ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    for folder in ("runs/", "modeling/", "data/", "models/", "inversion/", "scripts/", "hub/lookup.py"):
        assert f"`{folder}`" in text or f"| `{folder}" in text, folder


def test_tests_import_helpers_never_another_test_file():
    """Shared test code is in tests/helpers.py (plain functions and constants) and tests/conftest.py (fixtures, which
    pytest finds itself): no test file imports a test module or conftest."""
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert not top.startswith("test_") and top != "conftest", f"{path.relative_to(ROOT)} imports {name}"


def test_each_runs_module_has_its_test_file():
    for module in sorted((PACKAGE / "runs").glob("*.py")):
        if module.name != "__init__.py":
            assert (ROOT / "tests" / f"test_runs_{module.name}").is_file(), module.name


PUBLIC = {"dearkd_hf", *(f"dearkd_hf.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())}


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.py")), ids=lambda p: p.name)
def test_examples_import_the_public_api_only(path):
    """As TRL's scripts import from trl: dearkd_hf and its subpackages, never a module inside them."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dearkd_hf":
            assert node.module in PUBLIC, f"{path.name} imports from {node.module}"
        if isinstance(node, ast.Import):
            assert all(alias.name in PUBLIC or alias.name.split(".")[0] != "dearkd_hf" for alias in node.names)


def test_no_word_a_reader_cannot_resolve():
    """Code, docs and results say what a thing is, not which tracker issue or review asked for it."""
    pattern = re.compile(r"\bissues? ?#?\d+|\bthe audit\b", re.IGNORECASE)
    folders = ["src", "examples", "benchmarks", "tools", "tests", "docs"]
    files = [ROOT / "README.md", *(p for folder in folders for p in (ROOT / folder).rglob("*") if p.is_file())]
    found = []
    for path in files:
        if path.suffix not in {".py", ".md", ".sh", ".json", ".yaml"}:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if pattern.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:80]}")
    assert not found, "\n".join(found)
