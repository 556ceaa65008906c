"""Time the radial mask and plan construction on one CPU core; optionally against the official generator.

    python benchmarks/mask.py [--official PATH/TO/radial_attn/attn_mask.py] [--out benchmarks/results/mask.md]

Writes the table (`--out`) and its raw numbers beside it (the same name with .json: seconds, not rounded).

The official file imports GPU-only packages at its top, so only its mask functions are extracted (by AST) and
run on the CPU; the official masks are also compared with ours for equality.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import functools
import hashlib
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from radial import make_plan, radial_block_mask
from radial.plan import _cached_plan

CASES = [
    # name, frames, tokens per frame, text tokens, model
    ("Wan 480p 1x", 21, 1560, 0, "wan"),
    ("Wan 480p 4x", 81, 1560, 0, "wan"),
    ("HunyuanVideo 720p 1x", 33, 3600, 256, "hunyuan"),
    ("HunyuanVideo 720p 4x", 128, 3600, 256, "hunyuan"),
]
OFFICIAL_FUNCS = {"shrinkMaskStrict", "get_diagonal_split_mask", "get_window_width", "gen_log_mask_shrinked"}


def _load_official(path: Path):
    tree = ast.parse(path.read_text())
    keep = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in OFFICIAL_FUNCS]
    namespace = {"torch": torch, "print": lambda *a, **k: None}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), namespace)
    return namespace["gen_log_mask_shrinked"]


def _fresh_plan(frames: int, tpf: int, **kwargs) -> None:
    _cached_plan.cache_clear()
    make_plan(frames, tpf, **kwargs)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _cpu_name() -> str:
    """The CPU's model name (Linux), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--official", type=Path, help="the official radial_attn/attn_mask.py, to time and compare")
    p.add_argument("--official-max-frames", type=int, default=21, help="skip the official code above this")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/mask.md"))
    args = p.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    official = _load_official(args.official) if args.official else None
    rows, raw = [], []
    for name, frames, tpf, text, model in CASES:
        kwargs = dict(model=model, text_tokens=text)
        mask_s = _median_time(functools.partial(radial_block_mask, frames, tpf, **kwargs), 5)
        plan_s = _median_time(functools.partial(_fresh_plan, frames, tpf, **kwargs), 3)
        nb = math.ceil((frames * tpf + text) / 128)
        off, off_s, same = "", None, None
        if official is not None and frames <= args.official_max_frames:
            q = torch.empty(1, 1, 1, 1)
            start = time.perf_counter()
            theirs = official(
                q,
                nb * 128,
                frames * tpf,
                frames,
                block_size=128,
                sparse_type="radial",
                decay_factor=1.0,
                model_type=model,
            )
            off_s = time.perf_counter() - start
            same = torch.equal(theirs, radial_block_mask(frames, tpf, model=model, text_tokens=text))
            off = f"{off_s:.1f} s ({'equal' if same else 'DIFFERENT'})"
        raw.append(
            {"case": name, "frames": frames, "tokens_per_frame": tpf, "text_tokens": text, "model": model,
             "blocks": nb, "mask_s": mask_s, "mask_plan_s": plan_s, "official_s": off_s, "official_equal": same}
        )  # fmt: skip
        rows.append(
            (
                name,
                f"{frames} x {tpf} + {text}",
                f"{nb} x {nb}",
                f"{mask_s * 1e3:.1f} ms",
                f"{plan_s * 1e3:.0f} ms",
                off or "not run",
            )
        )
        print(rows[-1], flush=True)
    header = "| case | frames x tokens + text | blocks | mask | mask + plan (CPU) | official generator |\n|---|---|---|---|---|---|\n"
    table = header + "".join("| " + " | ".join(r) + " |\n" for r in rows)
    # the machine's load is recorded because a shared machine slows single-thread times (seen: 1.3-1.6x at load 3)
    load = {"before": load_before[0], "after": os.getloadavg()[0]}
    cpu = _cpu_name()
    meta = (
        f"Measured {datetime.date.today()} on {cpu} ({os.cpu_count()} cores; load average {load['before']:.1f} "
        f"before, {load['after']:.1f} after), one thread (torch.set_num_threads(1)), torch {torch.__version__}, "
        f"Python {platform.python_version()}. Median of 5 (mask) / 3 (plan, cache cleared) runs. Raw: "
        f"{args.out.with_suffix('.json').name}.\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("# Radial mask construction time\n\n" + meta + "\n" + table)
    info = {"date": str(datetime.date.today()), "machine": platform.machine(), "cpu": cpu, "cores": os.cpu_count(),
            "load_average_1min": load, "threads": 1, "torch": torch.__version__, "python": platform.python_version(),
            "repeats": {"mask": 5, "mask_plan": 3}, "official": str(args.official) if args.official else None,
            "official_sha256": hashlib.sha256(args.official.read_bytes()).hexdigest() if args.official else None}  # fmt: skip
    args.out.with_suffix(".json").write_text(json.dumps({"meta": info, "rows": raw}, indent=1))
    print(table)


if __name__ == "__main__":
    main()
