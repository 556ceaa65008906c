"""One run per output_dir: a folder that holds another run is refused unless the run resumes it or overwrites it.

Without this a second run appends to the first one's metrics, replaces its LoRA and leaves its checkpoints for a
later `train.resume=latest` to pick up. Hydra's own `.hydra/` folder and the synthetic data cache (`data/`) are
not a run; what a run leaves behind is listed in RUN_FILES.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from radial.errors import RadialError

#: what a training run writes into output_dir (the evidence that a folder holds a run), removed by overwrite
RUN_FILES = (
    "checkpoints",
    "metrics.jsonl",
    "run_summary.json",
    "lora",
    "logs",
    "validation",
    "loss_curve.png",
    "mask.png",
)


def previous_run(out: str | Path) -> list[str]:
    """The names in RUN_FILES that `out` holds (an empty checkpoints/ folder does not count)."""
    root = Path(out).expanduser()
    found = []
    for name in RUN_FILES:
        path = root / name
        if path.is_dir() and any(path.iterdir()) or path.is_file():
            found.append(name)
    return found


class RunExistsError(RadialError, FileExistsError):
    """output_dir holds another run (one line `error: ...` from the CLIs; still a FileExistsError for callers)."""


def check_output_dir(out: str | Path, resume: str | None, overwrite: bool) -> None:
    """Refuse an output_dir that holds another run, unless resuming (`train.resume`) or `train.overwrite=true`."""
    if resume or overwrite:
        return
    found = previous_run(out)
    if found:
        raise RunExistsError(
            f"output_dir={str(out)!r} holds another run ({', '.join(found)}): continue it with train.resume=latest, "
            "or replace it with train.overwrite=true (or choose another output_dir=...)"
        )


def clear_previous_run(out: str | Path) -> list[str]:
    """Remove what an earlier run left in `out` (for train.overwrite=true); returns the names removed."""
    root = Path(out).expanduser()
    removed = previous_run(root)
    for name in removed:
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed
