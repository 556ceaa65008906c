"""The house's floors (DESIGN.md): `radial` is the ground floor and imports nothing of ours above it; `data` stands on
`radial` only; `train` (the applications, the generation CLI included) may import both."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS_ABOVE = {"radial": ("train", "data"), "data": ("train",)}


def upward_imports(source: str, upper: tuple[str, ...] = ("train", "data")) -> list[str]:
    """The modules of the packages `upper` that `source` imports (lazy imports inside functions included)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [n for n in names if n.split(".")[0] in upper]
    return found


@pytest.mark.parametrize("floor", sorted(FLOORS_ABOVE))
def test_no_module_imports_a_floor_above_its_own(floor):
    offenders = {
        str(path.relative_to(ROOT)): names
        for path in sorted((ROOT / floor).rglob("*.py"))
        if (names := upward_imports(path.read_text(), FLOORS_ABOVE[floor]))
    }
    assert offenders == {}


def test_the_check_sees_lazy_and_from_imports():
    source = "import os\nfrom data.encoders import x\ndef f():\n    import train.generate as g\nfrom radial import y\n"
    assert upward_imports(source) == ["data.encoders", "train.generate"]


def test_the_generation_cli_is_an_application():
    assert not (ROOT / "radial" / "generate.py").exists()
    assert (ROOT / "train" / "generate.py").is_file()
