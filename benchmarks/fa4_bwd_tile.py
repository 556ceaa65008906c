"""Why flash-attn-4's block-sparse backward is slower per kept block than its dense backward (Hopper, head dim 128).

flash-attn-4 4.0.0b36 picks the SM90 backward tile in `_tile_size_bwd_sm90`: 80 query rows x 128 keys for dense
non-causal head dim 128, but 64 x 128 whenever block-sparse tensors with 128-row query blocks are given (the tile must
divide the sparse block; its own config search, flash_attn/cute/sm90_config_search.py, finds no 128-row tile that fits
the register budget at head dim 128). This benchmark separates the three possible causes of the gap on one layer:

  dense-80       the dense kernel as shipped (80-row backward tile)
  dense-64       the same dense kernel with the backward tile forced to the sparse path's 64 rows
  sparse-all     the block-sparse kernel over a list that keeps every block (64 rows; sparse bookkeeping only)
  radial         the block-sparse kernel over the radial plan (64 rows), as the fa4 backend calls it (the plan's
                 128-row query blocks: flash-attn-4 loops two 64-row tiles per list entry)
  radial-q64     the same backward given 64-row query blocks (each 128-row block split in two): one tile per entry.
                 Timed against `radial` in alternating order (ABBA rounds): when each was timed once, in a fixed
                 order, whichever ran second came out 0.5-3% faster in all four runs on an H200.

so that  tile cost = dense-64 / dense-80,  sparse bookkeeping = sparse-all / dense-64,  and the radial plan's
per-block efficiency = density x sparse-all / radial. Forward times are given alongside (both paths use 128 x 128).

With `--band-counts C...` it also times band masks in which every key block is attended by exactly C query blocks
(contiguous, around the diagonal) and fits backward ms = A + B x C: A / B is the fixed cost of one key tile (K/V loads,
the dK/dV epilogue, pipeline fill and drain) in query-block iterations, and A + B x (the radial lists' mean count)
predicts the radial backward from count alone (no scatter, no imbalance).

With `--pattern-study` it times masks that keep one property of the radial plan and change another, to tell where a
radial backward slower than the band of its mean count loses its time: `counts-band` (each key block keeps its radial
count, its query blocks made contiguous: the count imbalance without the scatter), and the radial mask with its key
blocks (columns: the backward's tiles, launched in index order) or query blocks (rows: the forward's tiles)
reordered, spatial position first (`kv-spatial`, `q-spatial`) or at random (`kv-random`): the same work and scatter,
another launch order (which decides what the tiles running at once share in L2). Attention is invariant to a
permutation of the keys (and equivariant to one of the queries), so an order that helps could be applied by gathering
q/k/v before the kernels.

    python benchmarks/fa4_bwd_tile.py --out $OUT/fa4_tile [--cases wan1x wan2x wan4x]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import radial  # noqa: E402
from benchmarks.attention import CASES, rel, timed  # noqa: E402
from radial.plan import block_index_lists, plan_from_mask  # noqa: E402

FORCED_Q_BLOCK = 128  # the sparse path's query block: the tile must divide it, which gives 64 rows at head dim 128


@contextlib.contextmanager
def forced_bwd_tile(interface) -> Iterator[None]:
    """Within the block, flash-attn-4's dense SM90 backward picks the tile it would pick for 128-row sparse blocks.

    The tile is part of flash-attn-4's compile key, so the forced kernel compiles on its own and the shipped one is
    untouched after the block."""
    original = interface._tile_size_bwd_sm90

    def tile(head_dim, head_dim_v, causal, local, sparse_block_size_q=None):
        return original(head_dim, head_dim_v, causal, local, sparse_block_size_q=sparse_block_size_q or FORCED_Q_BLOCK)

    interface._tile_size_bwd_sm90 = tile
    try:
        yield
    finally:
        interface._tile_size_bwd_sm90 = original


def bwd_tile_rows(interface, sparse: bool, head_dim: int = 128) -> int:
    """Query rows of the SM90 backward tile flash-attn-4 picks for a non-causal call (sparse: 128-row blocks)."""
    return interface._tile_size_bwd_sm90(
        head_dim, head_dim, False, False, FORCED_Q_BLOCK if sparse else None
    ).m_block_size


def derived(row: dict) -> dict:
    """The ratios of the module doc from one case's backward / forward milliseconds."""
    b = {k: row[k]["bwd_ms"] for k in ("dense-80", "dense-64", "sparse-all", "radial")}
    f = {k: row[k]["fwd_ms"] for k in ("dense-80", "sparse-all", "radial")}
    density = row["block_density"]
    return {
        "tile_cost_bwd": b["dense-64"] / b["dense-80"],
        "sparse_bookkeeping_bwd": b["sparse-all"] / b["dense-64"],
        "radial_block_efficiency_bwd": density * b["sparse-all"] / b["radial"],
        "radial_vs_ideal_bwd": density * b["dense-80"] / b["radial"],
        "radial_vs_ideal_fwd": density * f["dense-80"] / f["radial"],
        "bwd_over_fwd_dense": b["dense-80"] / f["dense-80"],
        "bwd_over_fwd_radial": b["radial"] / f["radial"],
        # the radial backward if its tile were the dense one's, all else equal
        "radial_bwd_ms_at_dense_tile": b["radial"] * b["dense-80"] / b["dense-64"],
        "radial_q64_over_radial_bwd": row["radial-q64"]["bwd_ms"] / row["radial-q64"]["radial_bwd_ms_same_rounds"],
    }


def q64_bwd_tensors(plan, fa4, bst, device: torch.device):
    """The plan's backward lists (per key block, the query blocks that attend it) with 64-row query blocks."""
    rows = -(-plan.seq_len // 64)
    mask = plan.block_mask.to(device).repeat_interleave(2, dim=0)[:rows]  # [q blocks of 64, kv blocks of 128]
    idx, cnt = block_index_lists(mask.t().contiguous())
    return bst(*fa4._as_fa4(cnt, idx, device), block_size=(64, plan.block_size))


def alternating(fns: dict, rounds: int = 4) -> dict[str, float]:
    """Median ms of each function over `rounds` timings in ABBA order (A B, B A, ...), so that neither is always
    the one timed first."""
    names, times = list(fns), {name: [] for name in fns}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(timed(fns[name])[0])
    return {name: statistics.median(t) for name, t in times.items()}


def band_mask(num_blocks: int, count: int) -> torch.Tensor:
    """[q, kv] bool block mask in which every key block is attended by `count` contiguous query blocks near it."""
    return counts_band_mask(torch.full((num_blocks,), count))


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of ys over xs."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def time_lists(fa4, q, k, v, do, lists: tuple, block_size: int, forward: bool = True) -> dict:
    """One layer under (forward, backward) flash-attn-4 lists: {"fwd_ms" (when `forward`), "bwd_ms", "grads", "out",
    "lse", "bwd" (the timed backward call)}; the output and LSE it runs on come from one untimed forward."""
    fwd_lists, bwd_lists = lists
    scale = q.shape[-1] ** -0.5
    with torch.no_grad():
        out, lse = fa4.fa4_attn_fwd(q, k, v, *fwd_lists, *bwd_lists, block_size, scale)
        res = {"out": out, "lse": lse}
        if forward:
            res["fwd_ms"] = timed(lambda: fa4.fa4_attn_fwd(q, k, v, *fwd_lists, *bwd_lists, block_size, scale))[0]

        def bwd():
            return fa4.fa4_attn_bwd(do, q, k, v, out, lse, *bwd_lists, block_size, scale)

        res["bwd"], res["grads"] = bwd, bwd()
        res["bwd_ms"] = timed(bwd)[0]
    return res


def mask_lists(plan, mask: torch.Tensor, fa4, device: torch.device) -> tuple:
    """flash-attn-4 (forward, backward) lists of any [q, kv] block mask on the plan's layout."""
    frames, tpf, text = plan.num_frames, plan.tokens_per_frame, plan.text_tokens
    return fa4.plan_tensors(plan_from_mask(mask, frames, tpf, text, plan.options), device)


def band_study(plan, counts: list[int], fa4, q, k, v, do, radial_bwd_ms: float) -> dict:
    """Backward ms of band masks per count, the fitted fixed cost per key tile, and the radial prediction."""
    times = {}
    for c in counts:
        lists = mask_lists(plan, band_mask(plan.num_blocks, c), fa4, q.device)
        times[c] = time_lists(fa4, q, k, v, do, lists, plan.block_size, forward=False)["bwd_ms"]
        print(f"band {c}: bwd {times[c]:.2f} ms", flush=True)
    a, b = fit_line([float(c) for c in counts], [times[c] for c in counts])
    mean_count = float(plan.q_counts.float().mean())
    return {
        "bwd_ms_by_count": {str(c): t for c, t in times.items()},
        "intercept_ms": a,
        "ms_per_count": b,
        "fixed_cost_in_q_blocks": a / b,
        "radial_mean_count": mean_count,
        "radial_bwd_ms_predicted": a + b * mean_count,
        "radial_bwd_ms_measured": radial_bwd_ms,
        "worst_fit_residual": max(abs(times[c] - (a + b * c)) / times[c] for c in counts),
    }


def counts_band_mask(counts: torch.Tensor) -> torch.Tensor:
    """[q, kv] bool mask in which key block n is attended by counts[n] contiguous query blocks around n."""
    nb = counts.numel()
    c = counts.to(torch.long)
    start = (torch.arange(nb) - c // 2).clamp(min=0)
    start = torch.minimum(start, nb - c)
    q = torch.arange(nb)[:, None]
    return (q >= start[None, :]) & (q < (start + c)[None, :])


def spatial_order(plan) -> torch.Tensor:
    """Block indices sorted by their first token's position within its frame, then by frame; the last (partial)
    block stays last, as flash-attn-4's forward expects of a row's highest key block."""
    first = torch.arange(plan.num_blocks) * plan.block_size
    pos, frame = first % plan.tokens_per_frame, first // plan.tokens_per_frame
    order = sorted(range(plan.num_blocks - 1), key=lambda b: (int(pos[b]) // plan.block_size, int(frame[b])))
    return torch.tensor(order + [plan.num_blocks - 1])


def random_order(num_blocks: int, seed: int = 0) -> torch.Tensor:
    """A random order of the blocks but the last, which stays last."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randperm(num_blocks - 1, generator=g), torch.tensor([num_blocks - 1])])


def pattern_masks(plan) -> dict[str, torch.Tensor]:
    """The study's [q, kv] masks (see the module doc), each with the radial plan's number of kept blocks."""
    m = plan.block_mask.cpu()
    kv_spatial, kv_random = spatial_order(plan), random_order(plan.num_blocks)
    return {
        "counts-band": counts_band_mask(m.sum(dim=0)),
        "kv-spatial": m[:, kv_spatial],
        "kv-random": m[:, kv_random],
        "q-spatial": m[spatial_order(plan)],
    }


def pattern_study(plan, fa4, q, k, v, do) -> dict:
    """Forward and backward ms of each pattern mask, with the radial mask's for reference."""
    rows = {}
    for name, mask in pattern_masks(plan).items():
        t = time_lists(fa4, q, k, v, do, mask_lists(plan, mask, fa4, q.device), plan.block_size)
        rows[name] = {"fwd_ms": t["fwd_ms"], "bwd_ms": t["bwd_ms"], "kept_blocks": int(mask.sum())}
        print(f"pattern {name}: fwd {t['fwd_ms']:.2f} ms, bwd {t['bwd_ms']:.2f} ms", flush=True)
    return rows


def run_case(case: str, fa4, interface, bst, band_counts: list[int] = (), patterns: bool = False) -> dict:
    frames, tpf, text, model, heads, note = CASES[case]
    plan = radial.make_plan(frames, tpf, text_tokens=text, model=model, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, do = (
        torch.randn(1, plan.seq_len, heads, 128, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4)
    )
    bs, scale = plan.block_size, 128**-0.5
    none4 = (None,) * 4
    lists = {"dense-80": (none4, none4), "dense-64": (none4, none4)}
    lists["sparse-all"] = mask_lists(plan, torch.ones_like(plan.block_mask, dtype=torch.bool), fa4, q.device)
    lists["radial"] = fa4.plan_tensors(plan, q.device)
    row: dict = {"case": case, "note": note, "tokens": plan.seq_len, "heads": heads}
    row["block_density"] = float(plan.block_mask.float().mean())
    timings = {}
    for name, pair in lists.items():
        with forced_bwd_tile(interface) if name == "dense-64" else contextlib.nullcontext():
            timings[name] = time_lists(fa4, q, k, v, do, pair, bs)
        row[name] = {key: timings[name][key] for key in ("fwd_ms", "bwd_ms")}
        print(f"{case} {name}: fwd {row[name]['fwd_ms']:.2f} ms, bwd {row[name]['bwd_ms']:.2f} ms", flush=True)
    grads = {name: t["grads"] for name, t in timings.items()}
    radial_out, radial_lse = timings["radial"]["out"], timings["radial"]["lse"]
    with torch.no_grad():
        sparse64 = q64_bwd_tensors(plan, fa4, bst, q.device)

        def bwd_q64():
            return interface._flash_attn_bwd(
                q, k, v, radial_out, do, radial_lse, scale, False, block_sparse_tensors=sparse64, deterministic=False
            )[:3]

        grads["radial-q64"] = bwd_q64()
        pair = alternating({"radial": timings["radial"]["bwd"], "radial-q64": bwd_q64})
    row["radial-q64"] = {"bwd_ms": pair["radial-q64"], "radial_bwd_ms_same_rounds": pair["radial"]}
    print(f"{case} radial vs radial-q64 (ABBA): bwd {pair['radial']:.2f} / {pair['radial-q64']:.2f} ms", flush=True)
    row["max_rel_err_radial_q64_vs_radial"] = max(
        rel(a, b) for a, b in zip(grads["radial-q64"], grads["radial"], strict=True)
    )
    # the forced tile and the all-blocks list compute the same gradients as the shipped dense kernel
    row["max_rel_err_vs_dense_80"] = {
        name: max(rel(a, b) for a, b in zip(grads[name], grads["dense-80"], strict=True))
        for name in ("dense-64", "sparse-all")
    }
    row["bwd_tile_rows"] = {"dense": bwd_tile_rows(interface, False), "sparse": bwd_tile_rows(interface, True)}
    row.update(derived(row))
    if band_counts:
        row["band"] = band_study(plan, list(band_counts), fa4, q, k, v, do, row["radial"]["bwd_ms"])
    if patterns:
        row["patterns"] = pattern_study(plan, fa4, q, k, v, do)
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"# flash-attn-4 backward tile: dense vs block-sparse, one layer ({meta['card']}, {meta['date']})",
        "",
        f"torch {meta['torch']}, flash-attn-4 {meta['fa4']}; bf16, head dim 128, batch 1. Milliseconds, median.",
        "",
        "| case | tokens | density | dense-80 fwd / bwd | dense-64 bwd | sparse-all fwd / bwd | radial fwd / bwd "
        "| radial / radial-q64 bwd (ABBA) | tile cost | sparse bookkeeping | radial per-block eff. | radial vs ideal fwd / bwd |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d80, d64, sa, ra = (r[k] for k in ("dense-80", "dense-64", "sparse-all", "radial"))
        lines.append(
            f"| {r['case']} | {r['tokens']} | {r['block_density']:.3f} | {d80['fwd_ms']:.1f} / {d80['bwd_ms']:.1f} "
            f"| {d64['bwd_ms']:.1f} | {sa['fwd_ms']:.1f} / {sa['bwd_ms']:.1f} | {ra['fwd_ms']:.1f} / {ra['bwd_ms']:.1f} "
            f"| {r['radial-q64']['radial_bwd_ms_same_rounds']:.1f} / {r['radial-q64']['bwd_ms']:.1f} | {r['tile_cost_bwd']:.3f} | {r['sparse_bookkeeping_bwd']:.3f} | {r['radial_block_efficiency_bwd']:.3f} "
            f"| {r['radial_vs_ideal_fwd']:.2f} / {r['radial_vs_ideal_bwd']:.2f} |"
        )
    bands = [r for r in rows if "band" in r]
    if bands:
        lines += [
            "",
            "Band masks (every key block attended by C contiguous query blocks), backward = A + B x C:",
            "",
            "| case | ms by C | A ms | B ms | fixed cost (query blocks) | radial mean C | radial predicted / measured ms |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in bands:
            b = r["band"]
            by_c = ", ".join(f"{c}: {t:.1f}" for c, t in b["bwd_ms_by_count"].items())
            lines.append(
                f"| {r['case']} | {by_c} | {b['intercept_ms']:.2f} | {b['ms_per_count']:.4f} "
                f"| {b['fixed_cost_in_q_blocks']:.1f} | {b['radial_mean_count']:.1f} "
                f"| {b['radial_bwd_ms_predicted']:.1f} / {b['radial_bwd_ms_measured']:.1f} |"
            )
    studied = [r for r in rows if "patterns" in r]
    if studied:
        lines += [
            "",
            "Pattern study (same number of kept blocks; ms):",
            "",
            "| case | mask | fwd | bwd |",
            "|---|---|---|---|",
        ]
        for r in studied:
            lines.append(f"| {r['case']} | radial | {r['radial']['fwd_ms']:.1f} | {r['radial']['bwd_ms']:.1f} |")
            for name, t in r["patterns"].items():
                lines.append(f"| {r['case']} | {name} | {t['fwd_ms']:.1f} | {t['bwd_ms']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["wan1x", "wan2x", "wan4x"], choices=sorted(CASES))
    p.add_argument("--out", required=True)
    p.add_argument("--band-counts", nargs="*", type=int, default=[], help="query blocks per key block of band masks")
    p.add_argument("--pattern-study", action="store_true", help="time radial-derived masks (see the module doc)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
        raise SystemExit("fa4_bwd_tile.py: needs a Hopper GPU (compute capability 9.x): it measures the SM90 tile")
    from importlib.metadata import version

    from radial.kernels import fa4

    interface, bst = fa4._cute()
    meta = {
        "card": torch.cuda.get_device_name(),
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "fa4": version("flash-attn-4"),
    }
    rows = [run_case(case, fa4, interface, bst, args.band_counts, args.pattern_study) for case in args.cases]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fa4_bwd_tile.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    table = markdown(rows, meta)
    (out / "fa4_bwd_tile.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
