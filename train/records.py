"""JSON records the trainer writes (metrics.jsonl, run_summary.json): strict JSON, with null for NaN / inf.

Python's json writes NaN and Infinity, which are not JSON: other readers (jq, JavaScript, most log tools) refuse
the whole line. A skipped step's loss is unknown, hence null. Also the numbers in them: the final loss, the peak
memory, the config as the trackers take it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float (also inside dicts, lists, tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def append_metrics(out: Path, step: int, logs: dict[str, Any]) -> None:
    """One line of metrics.jsonl (training steps and validations alike; benchmarks read it)."""
    with open(Path(out) / "metrics.jsonl", "a") as f:
        f.write(json.dumps(json_safe({"step": step, **logs}), allow_nan=False) + "\n")


def peak_memory_gb(device) -> float:
    """The peak memory of this process on `device` in GiB: CUDA's allocator peak, else the resident set."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


#: the final loss is the mean over this many last steps (one step's loss is as noisy as its timestep draw)
FINAL_LOSS_STEPS = 10


def final_loss(losses: list[tuple[int, float]]) -> dict:
    """{"final_loss": mean of the last FINAL_LOSS_STEPS finite step losses, "final_loss_steps": how many}."""
    tail = [v for _, v in losses[-FINAL_LOSS_STEPS:] if math.isfinite(v)]
    return {"final_loss": sum(tail) / len(tail) if tail else None, "final_loss_steps": len(tail)}


def flat_config(d: dict, prefix: str = "") -> dict:
    """A nested config as one level of dotted keys with plain values (what trackers take)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_config(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return out
