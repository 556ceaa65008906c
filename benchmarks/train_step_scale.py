"""Scale measured HunyuanVideo training steps (a few blocks) to the whole model by a per-block fit.

Each row of benchmarks/train_step.py's JSON is one step of `layers` blocks, of which the first `dense_layers` (all of
them for the dense backend) run dense attention. Per case, least squares over the rows of all given files fits

    step = overhead + n_dense * dense_block + n_radial * radial_block

and predicts the whole model (HunyuanVideo: 20 double + 40 single blocks) with the paper's dense layers:

    python benchmarks/train_step_scale.py benchmarks/results/train_step_hunyuan/sp2_*.json --layers 60 --dense 2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

DENSE_ENTRIES = ("dense", "dense-cudnn", "dense-fa4")  # benchmarks/train_step.py's dense --backends entries


def load_rows(paths: list[Path], backends: list[str] | None = None) -> list[dict]:
    """Rows with a step time (of the given --backends entries, e.g. one dense kernel and one radial backend; all
    when None), each tagged with how many of its blocks ran dense."""
    rows = []
    for path in paths:
        data = json.loads(path.read_text())
        dense_layers = int(data["meta"]["args"]["dense_layers"])
        for row in data["rows"]:
            if "step_s" not in row or (backends is not None and row["backend"] not in backends):
                continue
            dense = row["backend"].removesuffix("+plain") in DENSE_ENTRIES
            n_dense = row["layers"] if dense else min(dense_layers, row["layers"])
            rows.append({**row, "n_dense": n_dense, "n_radial": row["layers"] - n_dense, "file": path.name})
    return rows


def fit_case(rows: list[dict]) -> dict:
    """Per-block dense and radial step time and the fixed overhead (0 when the rows cannot separate it)."""
    a = np.array([[1.0, r["n_dense"], r["n_radial"]] for r in rows])
    y = np.array([r["step_s"] for r in rows])
    with_overhead = np.linalg.matrix_rank(a) == 3
    cols = a if with_overhead else a[:, 1:]
    coef, *_ = np.linalg.lstsq(cols, y, rcond=None)
    overhead, dense, radial = coef if with_overhead else (0.0, *coef)
    worst = float(np.max(np.abs(cols @ coef - y) / y))
    return {
        "overhead_s": float(overhead),
        "dense_block_s": float(dense),
        "radial_block_s": float(radial),
        "fitted_overhead": bool(with_overhead),
        "rows": len(rows),
        "worst_rel_residual": worst,
    }


def predict(fit: dict, layers: int, dense: int) -> dict:
    """Whole-model step times: all dense, radial with `dense` dense blocks, and the speed-up."""
    all_dense = fit["overhead_s"] + layers * fit["dense_block_s"]
    radial = fit["overhead_s"] + dense * fit["dense_block_s"] + (layers - dense) * fit["radial_block_s"]
    return {
        "layers": layers,
        "dense_layers": dense,
        "dense_step_s": all_dense,
        "radial_step_s": radial,
        "speedup": all_dense / radial,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--layers", type=int, default=60, help="blocks of the whole model (HunyuanVideo: 20 + 40)")
    p.add_argument("--dense", type=int, nargs="+", default=[2, 0], help="dense blocks in the radial model")
    p.add_argument("--backends", nargs="+", default=None, help="rows to fit, e.g. dense-fa4 fa4 (default: all)")
    args = p.parse_args(argv)
    rows = load_rows(args.files, args.backends)
    lines = [
        "| case | rows | overhead s | dense block s | radial block s | block speed-up | worst residual "
        + "".join(f"| {args.layers} blocks, {k} dense: dense / radial s (speed-up) " for k in args.dense)
        + "|",
        "|---|---|---|---|---|---|---" + "|---" * len(args.dense) + "|",
    ]
    for case in dict.fromkeys(r["case"] for r in rows):
        fit = fit_case([r for r in rows if r["case"] == case])
        cells = []
        for k in args.dense:
            pr = predict(fit, args.layers, k)
            cells.append(f"{pr['dense_step_s']:.0f} / {pr['radial_step_s']:.0f} s (**{pr['speedup']:.2f}x**)")
        overhead = f"{fit['overhead_s']:.2f}" if fit["fitted_overhead"] else "0 (not separable)"
        lines.append(
            f"| {case} | {fit['rows']} | {overhead} | {fit['dense_block_s']:.2f} | {fit['radial_block_s']:.2f} | "
            f"{fit['dense_block_s'] / fit['radial_block_s']:.2f}x | {fit['worst_rel_residual']:.1%} | "
            + " | ".join(cells)
            + " |"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
