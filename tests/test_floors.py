"""The house's floors (DESIGN.md): `radial` is the ground floor and imports nothing of ours above it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UPPER = ("train", "data")


def upward_imports(source: str) -> list[str]:
    """The modules of train/ or data/ that `source` imports (lazy imports inside functions included)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [n for n in names if n.split(".")[0] in UPPER]
    return found


def test_no_module_of_the_library_imports_the_floors_above():
    offenders = {
        str(path.relative_to(ROOT)): names
        for path in sorted((ROOT / "radial").rglob("*.py"))
        if (names := upward_imports(path.read_text()))
    }
    assert offenders == {}


def test_the_check_sees_lazy_and_from_imports():
    source = "import os\nfrom data.encoders import x\ndef f():\n    import train.generate as g\nfrom radial import y\n"
    assert upward_imports(source) == ["data.encoders", "train.generate"]


def test_the_generation_cli_is_an_application():
    assert not (ROOT / "radial" / "generate.py").exists()
    assert (ROOT / "train" / "generate.py").is_file()
