"""Measured numbers rest on raw data: each row of the README's "Measured" table points at the JSON a benchmark wrote
(numbers copied from a log stay in the results pages, marked, not in the README), every JSON the result records name exists and parses, and a device
call bundles its JSON files into one so that none is lost on the way back."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmarks.bundle_results import BUNDLE, bundle

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
UNREPRODUCED = "not reproduced from raw data"


def measured_rows() -> list[tuple[str, str, str]]:
    """(what, result, record) of each row of the README's Measured table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Measured\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| what ")]
    cells = [[c.strip() for c in row.strip().strip("|").split(" | ")] for row in rows]
    assert cells and all(len(c) == 3 for c in cells), cells
    return [tuple(c) for c in cells]


def raw_files(link: str) -> list[Path]:
    """The JSON files a record link names: the file itself, or the JSON files in a linked folder."""
    path = ROOT / link
    return sorted(path.glob("*.json")) if path.is_dir() else [path] if path.suffix == ".json" else []


@pytest.mark.parametrize("what, result, record", measured_rows(), ids=[r[0][:50] for r in measured_rows()])
def test_each_measured_row_points_at_raw_data(what, result, record):
    """A row's numbers come from the JSON of the run that measured them, linked in its record cell; a number without
    one (marked "not reproduced from raw data" in the results pages) has no place in the README's table."""
    links = re.findall(r"\]\(([^)]+)\)", record)
    files = [f for link in links for f in raw_files(link)]
    assert files, f"{what}: no raw JSON linked"
    assert UNREPRODUCED not in result, f"{what}: a number not reproduced from raw data"
    for f in files:
        assert f.is_file() and f.resolve().is_relative_to(RESULTS), f
        json.loads(f.read_text())


def test_json_named_by_the_results_exists():
    """Every `*.json` a results page names as its raw numbers exists (a pattern: at least one file matches)."""
    named = set()
    for page in RESULTS.glob("*.md"):
        named |= {(page.name, m) for m in re.findall(r"`([^` ]+\.json)`", page.read_text()) if m != BUNDLE}
    assert named
    missing = sorted((page, name) for page, name in named if not list(RESULTS.glob(name)))
    assert not missing, f"named but not in benchmarks/results: {missing}"


def test_a_device_calls_json_files_are_bundled(tmp_path):
    """benchmarks/bundle_results.py (the last step of gpu_run.sh): every JSON under $OUT, nested ones included, in
    one file; an unreadable one named with its error; an earlier bundle not bundled again."""
    (tmp_path / "step1").mkdir()
    (tmp_path / "step1" / "train_step.json").write_text(json.dumps({"rows": [{"step_s": 8.5}]}))
    (tmp_path / "attention").mkdir()
    (tmp_path / "attention" / "attention.json").write_text("{truncated")
    (tmp_path / "card.txt").write_text("H200")
    (tmp_path / BUNDLE).write_text("{}")
    out = json.loads(bundle(tmp_path).read_text())
    assert out["files"] == {"step1/train_step.json": {"rows": [{"step_s": 8.5}]}}
    assert list(out["unreadable"]) == ["attention/attention.json"]
    assert "JSONDecodeError" in out["unreadable"]["attention/attention.json"]
