"""Prepare's inputs: the videos and captions of a folder (a .txt caption beside each video) or of a CSV / JSONL
manifest, in a stable order, with the problems of bad rows recorded instead of raised."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from data.video import VIDEO_EXTENSIONS

PATH_COLUMNS = ("path", "video", "file", "file_name", "filename", "video_path")
CAPTION_COLUMNS = ("caption", "text", "prompt", "description")


@dataclass
class Source:
    rel: str  # id: path relative to the input folder / manifest folder
    path: Path
    caption: str | None
    problem: str | None = None


def _pick(columns: Sequence[str], wanted: str | None, choices: Sequence[str], what: str, where: Path) -> str:
    if wanted:
        if wanted not in columns:
            raise ValueError(f"manifest {where}: no column {wanted!r} for the {what}; columns are {list(columns)}")
        return wanted
    for c in choices:
        if c in columns:
            return c
    raise ValueError(f"manifest {where}: no {what} column; expected one of {list(choices)}, got {list(columns)}")


def read_sources(input_path: str | Path, path_column: str | None = None, caption_column: str | None = None):
    """The videos and captions of a folder or a CSV / JSONL manifest, in a stable order."""
    src = Path(input_path)
    if src.is_dir():
        out = []
        for p in sorted(src.rglob("*")):
            if p.suffix.lower() not in VIDEO_EXTENSIONS or not p.is_file() or ".part" in p.name:
                continue
            rel = p.relative_to(src).as_posix()
            txt = p.with_suffix(".txt")
            if txt.is_file():
                out.append(Source(rel, p, txt.read_text(errors="replace").strip()))
            else:
                out.append(Source(rel, p, None, f"no caption ({txt.name} is missing)"))
        return out
    if not src.is_file():
        raise FileNotFoundError(f"input {src}: no such folder or manifest")
    rows: list[tuple[int, dict]] = []
    if src.suffix.lower() == ".csv":
        with open(src, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = [(i + 2, row) for i, row in enumerate(reader)]
    elif src.suffix.lower() in (".jsonl", ".json"):
        columns_set: dict[str, None] = {}
        with open(src, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"manifest {src}: line {i} is not valid JSON ({e})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"manifest {src}: line {i} is not a JSON object")
                columns_set.update(dict.fromkeys(row))
                rows.append((i, row))
        columns = list(columns_set)
    else:
        raise ValueError(f"input {src}: expected a folder, a .csv or a .jsonl manifest")
    if not rows:
        return []
    pcol = _pick(columns, path_column, PATH_COLUMNS, "video path", src)
    ccol = _pick(columns, caption_column, CAPTION_COLUMNS, "caption", src)
    out, seen = [], {}
    for line, row in rows:
        value = row.get(pcol)
        if not value:
            out.append(Source(f"{src.name}:line{line}", src, None, f"line {line}: empty {pcol!r}"))
            continue
        p = Path(value)
        p = p if p.is_absolute() else src.parent / p
        try:
            rel = p.resolve().relative_to(src.parent.resolve()).as_posix()
        except ValueError:
            rel = p.resolve().as_posix()
        caption = row.get(ccol)
        if rel in seen:
            out.append(Source(f"{rel}@line{line}", p, None, f"line {line}: duplicate of line {seen[rel]}"))
            continue
        seen[rel] = line
        if caption is None or not str(caption).strip():
            out.append(Source(rel, p, None, f"line {line}: empty caption"))
        else:
            out.append(Source(rel, p, str(caption).strip()))
    return out
