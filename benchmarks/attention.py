"""Radial attention kernels vs dense attention on the official masks (Hopper, bf16, head dim 128).

    python benchmarks/attention.py                      # all cases, all backends -> results/attention.{json,md}
    python benchmarks/attention.py --cases wan4x --explore   # sweep Triton tile configs on one case

Per case: block density, ideal speed-up (1/token density), forward and forward+backward time of each backend, its
speed-up over dense cuDNN SDPA and over the fastest dense kernel of the run (cuDNN or flash-attn-4's dense kernel,
`fa4-dense`), the share of the ideal reached against each, and the achieved TFLOP/s (FLOPs of the kept token pairs:
forward 4*pairs*D per head, backward 2.5x that). Backends: dense-cudnn (alias dense), fa4-dense, triton, fa4, flex,
flashinfer, and the Triton variants below.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import radial  # noqa: E402
from radial.kernels import triton_common as tc  # noqa: E402

# name: (frames, tokens per frame, text tokens, model, heads, note)
CASES = {
    "wan1x": (21, 1560, 0, "wan", 12, "Wan2.1 480p 81 frames"),
    "wan2x": (41, 1560, 0, "wan", 12, "Wan2.1 480p 161 frames"),
    "wan4x": (81, 1560, 0, "wan", 12, "Wan2.1 480p 321 frames"),
    "hun4x": (128, 3600, 256, "hunyuan", 4, "HunyuanVideo 720p 4x (4 of 24 heads)"),
}


def timed(fn, min_reps=3, max_reps=20, budget_s=1.5):
    """Median ms of fn() over CUDA events, after one warm-up; repeats until the budget or max_reps."""
    fn()
    torch.cuda.synchronize()
    times = []
    while len(times) < min_reps or (sum(times) < budget_s * 1e3 and len(times) < max_reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), times


def dense_sdpa(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        return torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        ).transpose(1, 2)


# Triton variants that `--backends` may name beside the default: name -> (forward config, backward config), None =
# the default. Both were slower than the default on an H100 (benchmarks/NOTES_attention.md), so not timed by default.
TRITON_VARIANTS = {
    # one backward launch: dQ by per-element fp32 atomics inside the dK/dV pass (5 matmul units)
    "triton_fused": (None, tc.BwdConfig(64, 128, 8, 3, 0, 0, 0, 0, atomic_dq=True)),
    # one backward launch, dQ by TMA reduce-adds (1 stage: 2 and 3 stages need 279 KB of shared memory), TMA loads
    "triton_tma": (
        tc.FwdConfig(128, 128, 8, 3, tma=True),
        tc.BwdConfig(64, 128, 8, 1, 0, 0, 0, 0, atomic_dq=True, dq_tma=True, tma_loads=True),
    ),
}


# Dense kernels (no sparsity): the baselines. `dense` is the old name of dense-cudnn.
DENSE = ("dense", "dense-cudnn", "fa4-dense")
SPARSE = ("triton", "fa4", "flex", "flashinfer")


def make_fns(name, plan):
    if name in ("dense", "dense-cudnn"):
        return lambda q, k, v: dense_sdpa(q, k, v)
    if name == "fa4-dense":
        from radial.kernels import fa4

        return lambda q, k, v: fa4.dense(q, k, v)
    backend = "triton" if name in TRITON_VARIANTS else name
    return lambda q, k, v: radial.radial_attention(q, k, v, plan, backend=backend)


def measure(fn, q, k, v, do, backward=True):
    with torch.no_grad():
        fwd_ms, _ = timed(lambda: fn(q, k, v))
    res = {"fwd_ms": fwd_ms}
    if backward:

        def step():
            out = fn(q, k, v)
            torch.autograd.grad(out, (q, k, v), do)

        res["fwdbwd_ms"], _ = timed(step)
    return res


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def add_speedups(row: dict, backends: list[str], ideal: float) -> None:
    """Speed-ups of each sparse backend over cuDNN (`_speedup`, `_pct_ideal`) and over the fastest dense kernel of the
    run (`_speedup_best`, `_pct_ideal_best`); row["fastest_dense"] names that kernel per pass."""
    cudnn = next((row[n] for n in ("dense-cudnn", "dense") if n in row and "error" not in row[n]), None)
    dense_ok = [n for n in backends if n in DENSE and "error" not in row[n]]
    row["fastest_dense"] = {}
    for key in ("fwd", "fwdbwd"):
        timed_dense = [n for n in dense_ok if f"{key}_ms" in row[n]]
        if timed_dense:
            row["fastest_dense"][key] = min(timed_dense, key=lambda n: row[n][f"{key}_ms"])
    for name in backends:
        r = row[name]
        if name in DENSE or "error" in r:
            continue
        for key in ("fwd", "fwdbwd"):
            if f"{key}_ms" not in r:
                continue
            if cudnn is not None and f"{key}_ms" in cudnn:
                r[f"{key}_speedup"] = cudnn[f"{key}_ms"] / r[f"{key}_ms"]
                r[f"{key}_pct_ideal"] = 100 * r[f"{key}_speedup"] / ideal
            best = row["fastest_dense"].get(key)
            if best is not None:
                r[f"{key}_speedup_best"] = row[best][f"{key}_ms"] / r[f"{key}_ms"]
                r[f"{key}_pct_ideal_best"] = 100 * r[f"{key}_speedup_best"] / ideal


def run_case(case, backends, args, log):
    frames, tpf, text, model, heads, note = CASES[case]
    heads = args.heads or heads
    plan = radial.make_plan(frames, tpf, text_tokens=text, model=model, device="cuda")
    seq, dim = plan.seq_len, 128
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, do = (
        torch.randn(1, seq, heads, dim, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_(i < 3)
        for i in range(4)
    )
    pairs = plan.stats.token_density * seq * seq
    fwd_flops = 4 * pairs * dim * heads
    dense_fwd_flops = 4 * seq * seq * dim * heads
    row = {
        "case": case,
        "note": note,
        "frames": frames,
        "tokens_per_frame": tpf,
        "text_tokens": text,
        "seq_len": seq,
        "heads": heads,
        "head_dim": dim,
        "block_density": plan.stats.block_density,
        "token_density": plan.stats.token_density,
        "ideal_speedup": plan.stats.ideal_speedup,
        "floor_fwd_ms_at_650": fwd_flops / 650e12 * 1e3,
        "floor_fwdbwd_ms_at_650": 3.5 * fwd_flops / 650e12 * 1e3,
    }
    for name in backends:
        try:
            fn = make_fns(name, plan)
            tc.set_config_override(*TRITON_VARIANTS.get(name, (None, None)))
            res = measure(fn, q, k, v, do, backward=(name != "flashinfer"))
            flops = dense_fwd_flops if name in DENSE else fwd_flops
            res["fwd_tflops"] = flops / (res["fwd_ms"] * 1e-3) / 1e12
            if "fwdbwd_ms" in res:
                res["fwdbwd_tflops"] = 3.5 * flops / (res["fwdbwd_ms"] * 1e-3) / 1e12
            row[name] = res
        except Exception as err:  # a missing optional backend must not stop the table
            row[name] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
        finally:
            tc.set_config_override()
        log(f"{case} {name}: {row[name]}")
        torch.cuda.empty_cache()
    add_speedups(row, backends, plan.stats.ideal_speedup)
    if not args.no_check:
        # Cross-check every backend against triton on this case (all bf16; triton itself is checked against the fp32
        # reference in tests/gpu): catches a wrong fast path at full size. Variants: their dQ against triton's.
        check = {}
        try:
            with torch.no_grad():
                want = make_fns("triton", plan)(q, k, v)
            for name in backends:
                if name in ("flex", "flashinfer") and "error" not in row[name]:
                    with torch.no_grad():
                        check[f"{name}_out_rel"] = rel(make_fns(name, plan)(q, k, v), want)
            if "fa4" in backends and "error" not in row["fa4"]:
                dq_triton = torch.autograd.grad(make_fns("triton", plan)(q, k, v), q, do)[0]
                out = make_fns("fa4", plan)(q, k, v)
                check["fa4_out_rel"] = rel(out, want)
                check["fa4_dq_rel"] = rel(torch.autograd.grad(out, q, do)[0], dq_triton)
            variants = [n for n in backends if n in TRITON_VARIANTS and "error" not in row[n]]
            if variants:
                dq_want = torch.autograd.grad(make_fns("triton", plan)(q, k, v), q, do)[0]
                for name in variants:
                    tc.set_config_override(*TRITON_VARIANTS[name])
                    try:
                        out = make_fns(name, plan)(q, k, v)
                        dq = torch.autograd.grad(out, q, do)[0]
                    finally:
                        tc.set_config_override()
                    check[f"{name}_out_rel"] = rel(out, want)
                    check[f"{name}_dq_rel"] = rel(dq, dq_want)
        except Exception as err:
            check["error"] = f"{type(err).__name__}: {str(err)[:300]}"
        row["check_vs_triton"] = check
        log(f"{case} check vs triton: {check}")
        torch.cuda.empty_cache()
    return row


FWD_VARIANTS = [
    tc.FwdConfig(128, 128, 8, 3),
    tc.FwdConfig(128, 128, 8, 3, tma=True),
    tc.FwdConfig(128, 128, 8, 2, tma=True),
]
_F = dict(atomic_dq=True)
BWD_VARIANTS = [
    tc.BwdConfig(64, 128, 8, 3, 128, 128, 8, 2),
    tc.BwdConfig(64, 128, 8, 3, 128, 128, 8, 2, tma_loads=True),
    tc.BwdConfig(64, 128, 8, 3, 0, 0, 0, 0, **_F),
    tc.BwdConfig(64, 128, 8, 3, 0, 0, 0, 0, **_F, rotate=True),
    tc.BwdConfig(64, 128, 8, 2, 0, 0, 0, 0, **_F, dq_tma=True, rotate=True),
    tc.BwdConfig(64, 128, 8, 1, 0, 0, 0, 0, **_F, dq_tma=True, rotate=True),
    tc.BwdConfig(64, 64, 4, 3, 0, 0, 0, 0, **_F, dq_tma=True, rotate=True),
    tc.BwdConfig(64, 128, 8, 2, 0, 0, 0, 0, **_F, dq_tma=True, rotate=True, tma_loads=True),
    tc.BwdConfig(32, 128, 8, 3, 0, 0, 0, 0, **_F, dq_tma=True, rotate=True),
]


def explore(case, args, log):
    """Time the Triton backend under each tile config (forward and backward separately)."""
    frames, tpf, text, model, heads, _ = CASES[case]
    heads = args.heads or heads
    plan = radial.make_plan(frames, tpf, text_tokens=text, model=model, device="cuda")
    seq = plan.seq_len
    q, k, v, do = (
        torch.randn(1, seq, heads, 128, device="cuda", dtype=torch.bfloat16).requires_grad_(i < 3) for i in range(4)
    )
    fwd_flops = 4 * plan.stats.token_density * seq * seq * 128 * heads
    fn = make_fns("triton", plan)
    results = []
    base_out = base_grads = None
    for cfg in FWD_VARIANTS:
        tc.set_config_override(fwd=cfg)
        try:
            with torch.no_grad():
                out = fn(q, k, v)
                err = rel(out, base_out) if base_out is not None else 0.0
                base_out = out if base_out is None else base_out
                ms, _ = timed(lambda: fn(q, k, v))
            results.append(
                {"kind": "fwd", "cfg": repr(cfg), "ms": ms, "tflops": fwd_flops / ms / 1e9, "rel_vs_first": err}
            )
        except Exception as e:
            results.append({"kind": "fwd", "cfg": repr(cfg), "error": f"{type(e).__name__}: {str(e)[:200]}"})
        log(results[-1])
    tc.set_config_override()
    out = fn(q, k, v)
    for cfg in BWD_VARIANTS:
        tc.set_config_override(bwd=cfg)
        try:
            grads = torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
            err = max(rel(a, b) for a, b in zip(grads, base_grads, strict=False)) if base_grads is not None else 0.0
            base_grads = grads if base_grads is None else base_grads
            ms, _ = timed(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True))
            results.append(
                {"kind": "bwd", "cfg": repr(cfg), "ms": ms, "tflops": 2.5 * fwd_flops / ms / 1e9, "rel_vs_first": err}
            )
        except Exception as e:
            results.append({"kind": "bwd", "cfg": repr(cfg), "error": f"{type(e).__name__}: {str(e)[:200]}"})
        log(results[-1])
    tc.set_config_override()
    return {"case": case, "heads": heads, "variants": results}


def profile(case, args, log):
    """Per-kernel CUDA time of one Triton forward+backward (torch.profiler), to see where the time goes."""
    frames, tpf, text, model, heads, _ = CASES[case]
    heads = args.heads or heads
    plan = radial.make_plan(frames, tpf, text_tokens=text, model=model, device="cuda")
    q, k, v, do = (
        torch.randn(1, plan.seq_len, heads, 128, device="cuda", dtype=torch.bfloat16).requires_grad_(i < 3)
        for i in range(4)
    )
    fn = make_fns("triton", plan)
    torch.autograd.grad(fn(q, k, v), (q, k, v), do)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            torch.autograd.grad(fn(q, k, v), (q, k, v), do)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60)
    log(f"profile {case} (3 iterations)\n{table}")


def variants_table(rows, cell):
    """Rows of the Triton-variant table (TRITON_VARIANTS timed in the same run)."""
    lines = [
        "",
        "Triton variants (same run): triton fused = one backward launch, dQ by element atomics; triton tma = TMA "
        "loads in the forward and dQ by TMA reduce-adds.",
        "",
        "| case | triton fwd / fwd+bwd ms | triton fused fwd / fwd+bwd ms (x, % ideal) "
        "| triton tma fwd ms (x, % ideal) | triton tma fwd+bwd ms (x, % ideal) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        t = r.get("triton", {})
        base = "n/a" if "error" in t or not t else f"{t['fwd_ms']:.1f} / {t.get('fwdbwd_ms', float('nan')):.1f}"
        fu = r.get("triton_fused", {})
        fused = "n/a" if "error" in fu or not fu else f"{fu['fwd_ms']:.1f} / {cell(fu, 'fwdbwd')}"
        lines.append(
            f"| {r['case']} | {base} | {fused} | {cell(r.get('triton_tma'), 'fwd')} "
            f"| {cell(r.get('triton_tma'), 'fwdbwd')} |"
        )
    return lines


def markdown(rows, meta):
    lines = [
        f"{meta['device']}, torch {meta['torch']}, triton {meta['triton']}, flashinfer {meta['flashinfer']}, "
        f"flash-attn-4 {meta.get('fa4', 'not installed')}, {meta['date']}. bf16, head dim 128, batch 1, official "
        "masks (block 128). Times are medians of CUDA-event timings after a warm-up. Each sparse cell: ms (speed-up "
        "over cuDNN SDPA, % of the ideal 1 / token density; speed-up over the fastest dense kernel of the run, % "
        "ideal). triton = the default (deterministic backward).",
        "",
    ]
    sparse = [n for n in SPARSE if any(n in r for r in rows)]
    dense = [n for n in DENSE if any(n in r for r in rows)]
    head = ["case", "tokens", "heads", "density", "ideal"] + [f"{n} fwd / fwd+bwd ms" for n in dense]
    head += [f"{n} {p}" for n in sparse for p in ("fwd", "fwd+bwd")]
    lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]

    def cell(r, key, pct=True):
        if not r or "error" in r:
            return "n/a"
        if f"{key}_ms" not in r:
            return "-"
        s = f"{r[f'{key}_ms']:.1f}"
        parts = []
        for suffix in ("", "_best"):
            if f"{key}_speedup{suffix}" in r:
                x = f"{r[f'{key}_speedup{suffix}']:.2f}x"
                parts.append(x + (f", {r[f'{key}_pct_ideal{suffix}']:.0f}%" if pct else ""))
        return s + (f" ({'; '.join(parts)})" if parts else "")

    def dense_cell(d):
        if not d or "error" in d:
            return "n/a"
        return f"{d['fwd_ms']:.1f} / " + (f"{d['fwdbwd_ms']:.1f}" if "fwdbwd_ms" in d else "-")

    for r in rows:
        cells = [
            r["case"],
            str(r["seq_len"]),
            str(r["heads"]),
            f"{r['token_density']:.3f}",
            f"{r['ideal_speedup']:.2f}",
        ]
        cells += [dense_cell(r.get(n)) for n in dense]
        cells += [cell(r.get(n), p) for n in sparse for p in ("fwd", "fwdbwd")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Fastest dense kernel per case (fwd / fwd+bwd): "
        + "; ".join(
            f"{r['case']} {r.get('fastest_dense', {}).get('fwd', 'n/a')} / {r.get('fastest_dense', {}).get('fwdbwd', 'n/a')}"
            for r in rows
        ),
    ]
    if any(n in r for r in rows for n in TRITON_VARIANTS):
        lines += variants_table(rows, cell)
    lines += ["", "Achieved TFLOP/s (kept-pair FLOPs, backward counted 2.5x forward; dense: all pairs):", ""]
    names = [n for n in (*DENSE, "triton", "fa4", *TRITON_VARIANTS, "flex", "flashinfer") if any(n in r for r in rows)]
    lines += ["| case | " + " | ".join(f"{n} fwd / fwd+bwd" for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    for r in rows:

        def tf(name, r=r):
            x = r.get(name, {})
            if "error" in x or "fwd_tflops" not in x:
                return "n/a"
            return f"{x['fwd_tflops']:.0f} / " + (f"{x['fwdbwd_tflops']:.0f}" if "fwdbwd_tflops" in x else "-")

        lines.append(f"| {r['case']} | " + " | ".join(tf(n) for n in names) + " |")
    lines += ["", "Full-size cross-checks against triton (relative L2 difference, bf16 vs bf16):", ""]
    for r in rows:
        c = r.get("check_vs_triton", {})
        lines.append(
            f"- {r['case']}: "
            + (", ".join(f"{k} {v:.1e}" if isinstance(v, float) else f"{k} {v}" for k, v in c.items()) or "not run")
        )
    errors = [f"- {r['case']} {n}: {r[n]['error']}" for r in rows for n in names if "error" in r.get(n, {})]
    if errors:
        lines += ["", "Errors:", "", *errors]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="wan1x,wan2x,wan4x,hun4x")
    ap.add_argument("--backends", default="dense-cudnn,fa4-dense,triton,fa4,flex,flashinfer")
    ap.add_argument("--heads", type=int, default=0, help="override the head count of every case")
    ap.add_argument("--explore", action="store_true", help="sweep Triton tile configs instead of the table")
    ap.add_argument("--no-check", action="store_true", help="skip the per-case cross-check against triton")
    ap.add_argument("--profile", action="store_true", help="per-kernel times of triton fwd+bwd instead of the table")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "attention"))
    args = ap.parse_args()
    os.makedirs(Path(args.out).parent, exist_ok=True)
    logf = open(args.out + ".log", "a")  # noqa: SIM115 - open for the whole run

    def log(msg):
        print(msg, flush=True)
        logf.write(f"{msg}\n")
        logf.flush()

    try:
        import flashinfer

        fi_version = getattr(flashinfer, "__version__", "?")
    except Exception:
        fi_version = "not installed"
    import triton

    try:
        import importlib.metadata

        import flash_attn.cute.interface  # noqa: F401

        fa4_version = importlib.metadata.version("flash-attn-4")
    except Exception:
        fa4_version = "not installed"
    meta = {
        "fa4": fa4_version,
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "flashinfer": fi_version,
        "date": datetime.date.today().isoformat(),
    }
    log(meta)
    cases = args.cases.split(",")
    if args.profile:
        for c in cases:
            profile(c, args, log)
        return
    if args.explore:
        res = [explore(c, args, log) for c in cases]
        Path(args.out + "_explore.json").write_text(json.dumps({"meta": meta, "results": res}, indent=1))
        return
    rows = []
    for c in cases:  # the JSON is rewritten after each case, so that a cut-off run keeps what it measured
        rows.append(run_case(c, args.backends.split(","), args, log))
        Path(args.out + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    md = markdown(rows, meta)
    Path(args.out + ".md").write_text(md)
    print(md)
    if any(math.isnan(r.get("triton", {}).get("fwd_ms", 0.0)) for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
