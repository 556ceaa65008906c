"""JSON records the trainer writes (metrics.jsonl, run_summary.json): strict JSON, with null for NaN / inf.

Python's json writes NaN and Infinity, which are not JSON: other readers (jq, JavaScript, most log tools) refuse
the whole line. A skipped step's loss is unknown, hence null.
"""

from __future__ import annotations

import math
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
