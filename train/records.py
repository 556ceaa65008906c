"""JSON records the trainer writes (metrics.jsonl, run_summary.json): strict JSON, with null for NaN / inf.

Python's json writes NaN and Infinity, which are not JSON: other readers (jq, JavaScript, most log tools) refuse
the whole line. A skipped step's loss is unknown, hence null.
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
