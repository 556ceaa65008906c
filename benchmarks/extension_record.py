"""The extension experiment's record: per-arm means over seeds, the verdicts computed from them, the Markdown table,
the JSON, and three PNGs (loss curves, a frame strip per arm, the scores with their seed spread)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import torch

from benchmarks.extension_data import (
    COLOURS,
    FLASH_CHANNELS,
    OBJECT_CHANNELS,
    OCCLUDER_CHANNELS,
    palette,
    scene_codes,
)

LOSSES = ("loss_base", "loss_long", "content_base", "content_long")
# Ground-truth scores of sampled 4L clips; each is judged by its distance to the data's own value.
SCORES = ("late_identity", "objects_q4", "track_rmse", "flash_regularity")
# The same scores of the denoising probe (one-step predictions of held-out 4L clips), judged the same way.
PROBE = tuple(f"dn_{k}" for k in SCORES)
OTHER = ("objects_per_frame", "flash_rate", "frozen", "near_dup", "diff_autocorr")
COSTS = ("step_s", "train_s", "peak_memory_gb", "attention_density", "fit_wall_s")
LOSS_TOLERANCE = 0.05  # (iii): radial LoRA's 4L held-out loss within 5% of dense LoRA's
TRAIN_STEP_JSON = Path(__file__).parent / "results" / "train_step_settings_h200.json"


def _stats(values: list) -> dict:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}


def summarise(record: dict) -> dict:
    """arm -> metric -> {mean, std, n} over seeds."""
    keys = (*LOSSES, *SCORES, *PROBE, *OTHER, *COSTS)
    return {arm: {k: _stats(e[k]) for k in keys if k in e} for arm, e in record["arms"].items()}


def compare(s: dict, ref: dict, x: str, y: str, metric: str) -> str:
    """'better' / 'worse' / 'tie': arm x against arm y on one metric, a tie when the difference is within the larger
    seed spread of the two. Losses: lower is better; scores (sampled or probe): closer to the data's value is better."""
    if metric not in s.get(x, {}) or metric not in s.get(y, {}):
        return "n/a"
    a, b = s[x][metric], s[y][metric]
    if a["n"] == 0 or b["n"] == 0:
        return "n/a"
    if metric in LOSSES:
        da, db = a["mean"], b["mean"]
    else:
        target = ref[metric.removeprefix("dn_")]  # a perfect one-step prediction is the data itself
        da, db = abs(a["mean"] - target), abs(b["mean"] - target)
    spread = max(a["std"], b["std"])
    if abs(da - db) <= spread:
        return "tie"
    return "better" if da < db else "worse"


def real_size_cost(path: Path = TRAIN_STEP_JSON) -> dict | None:
    """Radial (fa4) vs dense (flash-attn-4) training step of Wan2.1-1.3B at 4x from the committed benchmark JSON."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    for run in data.get("runs", []):
        rows = {r.get("backend"): r for r in run.get("rows", []) if r.get("case") == "wan4x"}
        if "fa4" in rows and "dense-fa4" in rows:
            return {
                "radial_step_s": rows["fa4"]["step_s"],
                "dense_step_s": rows["dense-fa4"]["step_s"],
                "speedup": rows["dense-fa4"]["step_s"] / rows["fa4"]["step_s"],
                "source": f"{path.name}: {run.get('command', '')} ({data.get('meta', {}).get('card', '')})",
            }
    return None


def tier_of(samples_passed: bool, probe_passed: bool) -> str | None:
    """What a base's checks allow: "samples" (its samples pass: every verdict), "probe" (only its one-step
    predictions pass: verdicts from held-out losses and probe scores), None (no arm runs)."""
    return "samples" if samples_passed else "probe" if probe_passed else None


def tier(record: dict) -> str | None:
    """Which base check a record's verdicts stand on (a record from before the probe has no `probe_passed`)."""
    return tier_of(bool(record["base"].get("passed")), bool(record["base"].get("probe_passed")))


def verdicts(record: dict, s: dict) -> dict:
    """The questions of the record, answered from the measured means and spreads (nothing is fixed in advance).
    The ground-truth scores they use are the samples' when the base's samples passed their check, else the denoising
    probe's (`dn_` keys) when its probe passed."""
    ref = record["data_reference"]["long"]
    m = {arm: {k: v["mean"] for k, v in metrics.items()} for arm, metrics in s.items()}
    out: dict = {"tier": tier(record)}
    probe = out["tier"] == "probe"
    keys = PROBE if probe else SCORES
    base = record["base"]
    last = (base["checks"][-1].get("probe" if probe else "scores", {}) if base.get("checks") else {}) or {}
    if probe and "probe_recheck" in base:  # a kept base: this run's probe of it
        last = base["probe_recheck"]["probe"]
    worse = {
        k: compare_value(
            last.get(k), m["a"].get(f"dn_{k}" if probe else k), record["data_reference"]["base"].get(k), ref.get(k)
        )
        for k in SCORES
    }
    out["i"] = {
        "answer": bool(out["tier"] and m["a"]["loss_long"] > m["a"]["loss_base"] and any(worse.values())),
        "worse_at_4L": worse,
        "text": f"base {'sample' if not probe else 'probe'} check {'passed' if out['tier'] else 'failed'} at step "
        f"{base.get('steps')}; held-out loss {m['a']['loss_base']:.4f} at L vs {m['a']['loss_long']:.4f} at 4L "
        f"(content tokens {m['a']['content_base']:.4f} vs {m['a']['content_long']:.4f}); "
        f"{'probe' if probe else 'sample'} scores at L -> 4L (data L / 4L): "
        + "; ".join(
            f"{k} {last.get(k, math.nan):.3f} -> {m['a'].get(f'dn_{k}' if probe else k, math.nan):.3f} "
            f"({record['data_reference']['base'].get(k, math.nan):.3f} / {ref.get(k, math.nan):.3f})"
            for k in SCORES
        ),
    }
    rec = {}
    for arm in s:
        if arm == "a":
            continue
        cmp = {k: compare(s, ref, arm, "a", k) for k in ("loss_long", "content_long", *keys)}
        better = sum(v == "better" for k, v in cmp.items() if k in keys)
        worse_n = sum(v == "worse" for k, v in cmp.items() if k in keys)
        rec[arm] = {"against_a": cmp, "recovers": cmp["loss_long"] == "better" and better > worse_n}
    out["ii"] = {
        "recovering": [a for a, r in rec.items() if r["recovers"]],
        "detail": rec,
        "text": f"arms better than (a) on 4L loss and on more {'probe' if probe else 'sample'} scores than they are "
        "worse: " + (", ".join(f"({a})" for a, r in rec.items() if r["recovers"]) or "none"),
    }
    if "c" in s and "d" in s:
        rel = m["d"]["loss_long"] / m["c"]["loss_long"] - 1
        cmp = {k: compare(s, ref, "d", "c", k) for k in keys}
        ok = rel <= LOSS_TOLERANCE and all(v in ("tie", "better", "n/a") for v in cmp.values())
        out["iii"] = {
            "answer": bool(ok),
            "loss_rel": rel,
            "scores": cmp,
            "text": f"radial LoRA's 4L loss is {rel:+.1%} against dense LoRA's ({'within' if rel <= LOSS_TOLERANCE else 'outside'} "
            f"+{LOSS_TOLERANCE:.0%}); ground-truth scores, radial vs dense LoRA: "
            + ", ".join(f"{k} {v}" for k, v in cmp.items()),
        }
    out["iv"] = {}
    for other in ("e", "f", "g", "h", "b"):
        if "d" in s and other in s:
            cmp = {k: compare(s, ref, "d", other, k) for k in ("loss_long", "content_long", *keys)}
            out["iv"][other] = cmp
    if "c" in s and "d" in s:
        speed = m["c"]["step_s"] / m["d"]["step_s"]
        real = real_size_cost()
        out["v"] = {
            "step_speedup_here": speed,
            "real_size": real,
            "text": f"here: radial LoRA step {m['d']['step_s'] * 1000:.0f} ms vs dense {m['c']['step_s'] * 1000:.0f} ms "
            f"({speed:.2f}x), peak memory {m['d']['peak_memory_gb']:.2f} vs {m['c']['peak_memory_gb']:.2f} GB, "
            f"block density {record['geometry']['radial_density']:.3f} (sparse layers)"
            + (
                f"; real size (Wan2.1-1.3B at 4x, 126k tokens): {real['radial_step_s']:.2f} s vs "
                f"{real['dense_step_s']:.2f} s a step ({real['speedup']:.2f}x; {real['source']})"
                if real
                else ""
            ),
        }
    return out


def compare_value(at_l, at_4l, ref_l, ref_4l) -> bool:
    """Is a score farther from the data at 4L than at L (each against the data at its own length)?"""
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (at_l, at_4l, ref_l, ref_4l)):
        return False
    return abs(at_4l - ref_4l) > abs(at_l - ref_l)


def _probe_levels(per_seed: list[dict]) -> str:
    """'sigma 0.7: 0.95 / 1.62; ...': the probe's identity and last-quarter objects at the reported levels, seed means."""
    levels = sorted({level for seed in per_seed for level in seed})
    parts = []
    for level in levels:
        vals = [seed[level] for seed in per_seed if level in seed]
        ident = _stats([v.get("late_identity") for v in vals])["mean"]
        objects = _stats([v.get("objects_q4") for v in vals])["mean"]
        parts.append(f"sigma {level}: {ident:.2f} / {objects:.2f}")
    return "; ".join(parts) or "-"


def _fmt(st: dict | None, digits: int = 4, scale: float = 1.0) -> str:
    if not st or st["n"] == 0:
        return "-"
    mean = st["mean"] * scale
    if st["n"] > 1 and st["std"] > 0:
        return f"{mean:.{digits}f} ± {st['std'] * scale:.{digits}f}"
    return f"{mean:.{digits}f}"


def markdown(record: dict, s: dict, v: dict) -> str:
    g, base, refs = record["geometry"], record["base"], record["data_reference"]
    ref = refs["long"]
    density = {"dense": 1.0, "radial": g["radial_density"], "window": g["window_density"]}
    lines = [
        "# Length extension: radial LoRA against dense, window and training-free arms",
        "",
        f"Device: {record['device']}; seed {record['seed']}; sparse backend `{record['backend']}`; versions "
        f"{record.get('versions', {})}; {record['seeds']} seeds per arm; run time {record['total_s']:.0f}s. "
        "Generated by `benchmarks/extension.py`; every number below is measured in that run."
        + (f" Note: {record['note']}." if record.get("note") else ""),
        "",
        *(
            [
                "**The base did not pass its check; the arms ran only because of `--arms-anyway` (a pipeline test or "
                "a timing pilot): no answer below is a valid verdict.**",
                "",
            ]
            if record.get("arms_anyway")
            else []
        ),
        *(
            [
                "**The base's samples failed their check and its one-step predictions passed theirs (the probe): the "
                "answers below rest on the held-out losses and the probe scores at 4L, not on samples; the sample "
                "columns are measured and shown, not used.**",
                "",
            ]
            if tier(record) == "probe" and not record.get("arms_anyway")
            else []
        ),
        "## Base model check (its own samples at L against the data; the probe: its one-step predictions of held-out "
        "L clips)",
        "",
        "| step | held-out loss L | late identity | objects / frame | track RMSE (px) | flashes / frame | samples | "
        "probe at L |",
        "|---|---|" + "---|" * len(SCORES) + "---|---|",
    ]
    for c in base.get("checks", []):
        cells = [
            f"{c['check']['checks'][n]['value']:.3f} ({c['check']['checks'][n]['op']} "
            f"{c['check']['checks'][n]['limit']:.3f})"
            if n in c["check"]["checks"]
            else f"{c['scores'].get(k, math.nan):.3f}"
            for k, n in zip(SCORES, ("identity", "objects", "tracks", "flashes"), strict=True)
        ]
        val = f"{c['val_loss']:.4f}" if c.get("val_loss") is not None else "-"
        pc = c.get("probe_check")
        probe = (
            "-"
            if pc is None
            else ("PASS " if pc["pass"] else "fail ")
            + ", ".join(f"{n} {r['value']:.3f}" for n, r in pc["checks"].items())
        )
        lines.append(
            f"| {c['step']} | {val} | "
            + " | ".join(cells)
            + f" | {'PASS' if c['check']['pass'] else 'fail'} | {probe} |"
        )
    if "probe_recheck" in base:
        pc = base["probe_recheck"]["probe_check"]
        lines.append(
            "| kept base, probed here | - | "
            + " | ".join("-" for _ in SCORES)
            + " | - | "
            + ("PASS " if pc["pass"] else "fail ")
            + ", ".join(f"{n} {r['value']:.3f}" for n, r in pc["checks"].items())
            + " |"
        )
    lines += [
        "",
        "Checks (fixed before any run): objects per frame >= 0.9 x the data's; >= 90% of last-quarter detections with "
        "the clip's identities; track residual <= max(2 x the scorer's error on real clips, 0.5 px); flash rate >= "
        "0.9 x the data's. Columns show each check's score, the comparison and its limit (objects: per frame; flashes: "
        "per frame). The probe check applies the same thresholds to the scores of the base's one-step clean-clip "
        f"predictions x0^ = x_t - sigma v of the held-out L clips at sigma {record.get('preset', {}).get('eval', {}).get('probe_sigma', 'n/a')} "
        "(fixed before any arm ran, 2026-12-08): a base that denoises the content but cannot yet sample it passes "
        "the probe only.",
        "",
        "## Arms at 4L",
        "",
        "| arm | attention | tuned | density | loss L | loss 4L | content loss 4L | late identity | objects Q4 | "
        "track RMSE (px) | flash regularity | near-dup | diff autocorr | step (ms) | peak mem (GB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| data (held-out 4L clips) | - | - | - | - | - | - | {ref['late_identity']:.3f} | {ref['objects_q4']:.3f} | "
        f"{ref['track_rmse']:.2f} | {ref['flash_regularity']:.3f} | {ref['near_dup']:.3f} | {ref['diff_autocorr']:.3f} "
        "| - | - |",
    ]
    for arm, entry in record["arms"].items():
        st = s[arm]
        extras = f" + {'+'.join(entry['extras'])}" if entry.get("extras") else ""
        lines.append(
            f"| ({arm}) {entry['label']} | {entry['attention']}{extras} | {'yes' if entry['tuned'] else 'no'} | "
            f"{density[entry['attention']]:.3f} | {_fmt(st.get('loss_base'))} | {_fmt(st.get('loss_long'))} | "
            f"{_fmt(st.get('content_long'))} | {_fmt(st.get('late_identity'), 3)} | {_fmt(st.get('objects_q4'), 2)} | "
            f"{_fmt(st.get('track_rmse'), 2)} | {_fmt(st.get('flash_regularity'), 3)} | {_fmt(st.get('near_dup'), 3)} | "
            f"{_fmt(st.get('diff_autocorr'), 3)} | {_fmt(st.get('step_s'), 0, 1000)} | "
            f"{_fmt(st.get('peak_memory_gb'), 2)} |"
        )
    lines += [
        "",
        "Denoising probe at 4L (one-step predictions of the held-out 4L clips, the same noise for every arm):",
        "",
        "| arm | late identity | objects Q4 | track RMSE (px) | flash regularity | other noise levels (reported): "
        "identity / objects Q4 |",
        "|---|---|---|---|---|---|",
        f"| data | {ref['late_identity']:.3f} | {ref['objects_q4']:.3f} | {ref['track_rmse']:.2f} | "
        f"{ref['flash_regularity']:.3f} | - |",
    ]
    for arm, entry in record["arms"].items():
        st = s[arm]
        lines.append(
            f"| ({arm}) {entry['label']} | {_fmt(st.get('dn_late_identity'), 3)} | {_fmt(st.get('dn_objects_q4'), 2)} "
            f"| {_fmt(st.get('dn_track_rmse'), 2)} | {_fmt(st.get('dn_flash_regularity'), 3)} | "
            f"{_probe_levels(entry.get('probes_long', []))} |"
        )
    lines += [
        "",
        "Mean ± standard deviation over seeds (tuned arms: a LoRA per seed; training-free arms: the same model sampled "
        "with each seed's noise; every arm gets the same noise). Content loss: the held-out loss over the tokens an "
        "object (within two radii, hidden or not), the wall or a flash covers. Late identity: share of the last "
        "quarter's detected objects that have the colours of the first quarter's (data 1; forgotten identity ~0.5). "
        "Objects Q4: detected objects per frame in the last quarter. Track RMSE: residual of the best bounce path "
        "through an identity's detections. Flash regularity: share of flash intervals within one frame of the first "
        "interval. Near-dup: share of frames with a near duplicate two or more frames away; diff autocorr: largest "
        "autocorrelation of the frame-difference energy at lags 4 to F/2 (looping).",
        "",
        "## Answers",
        "",
    ]
    if "i" in v:
        lines.append(
            f"- (i) Base good at L and worse at 4L? **{'yes' if v['i']['answer'] else 'no'}**: {v['i']['text']}."
        )
    if "ii" in v:
        lines.append(f"- (ii) Which arms recover 4L quality? {v['ii']['text']}.")
        for arm, r in v["ii"]["detail"].items():
            lines.append(f"  - ({arm}) vs (a): " + ", ".join(f"{k} {x}" for k, x in r["against_a"].items()))
    if "iii" in v:
        lines.append(
            f"- (iii) Radial LoRA within 5% of dense LoRA's 4L loss and within the seed spread on the scores? "
            f"**{'yes' if v['iii']['answer'] else 'no'}**: {v['iii']['text']}."
        )
    for other, cmp in v.get("iv", {}).items():
        lines.append(f"- (iv) radial LoRA (d) vs ({other}): " + ", ".join(f"{k} {x}" for k, x in cmp.items()))
    if "v" in v:
        lines.append(f"- (v) Cost: {v['v']['text']}.")
    for failure in record.get("failed", []):
        lines.append(f"- FAILED run (left out of the means): {failure}")
    model = record.get("model", {})
    lines += [
        "",
        "## Setup",
        "",
        f"- Model: diffusers `{model.get('class')}`, {model.get('parameters', 0) / 1e6:.2f}M parameters "
        f"({model.get('num_layers')} layers, {model.get('num_attention_heads')} heads x "
        f"{model.get('attention_head_dim')}), trained from scratch at L in `train.mode=full`: {base.get('steps')} "
        f"steps; step {base.get('cost', {}).get('step_s', math.nan) * 1000:.0f} ms.",
        f"- Geometry: L = {g['frames_base']} latent frames, 4L = {g['frames_long']}, {g['tokens_per_frame']} tokens "
        f"per frame ({g['tokens_long']} video tokens at 4L), block {g['block_size']}; radial block density "
        f"{g['radial_density']:.3f} in the sparse layers ({g['radial_density_all_layers']:.3f} over all layers with "
        f"{g['dense_layers']} dense); window baseline ±{g['window_frames']} frames (+ sink frame), block density "
        f"{g['window_density']:.3f}.",
        "- Data: latent clips made in Wan's latent layout: two objects of random colour (4-colour palette, never in "
        "the caption) bouncing at constant velocity, hidden behind a wall for 13-32 frames when they cross it, and a "
        "one-frame flash every 9-14 frames; otherwise a zero background. Scorer check on held-out data: recovered "
        f"tracks are {ref['scorer_track_error']:.2f} px from the true ones.",
        f"- Phases (s): {', '.join(f'{k[:-2]} {val:.0f}' for k, val in record.get('phases_s', {}).items())}.",
        "",
        "![held-out loss](extension_loss.png)",
        "",
        "![scores](extension_scores.png)",
        "",
        "![frames](extension_frames.png)",
        "",
    ]
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_png(record: dict, path: Path) -> None:
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    curve = [c for c in record["base"].get("curve", []) if c[1] is not None]
    if curve:
        left.plot([c[0] for c in curve], [c[1] for c in curve], marker="o")
    left.set_title("base, full training at L (held-out loss at each check)")
    left.set_xlabel("step")
    left.set_ylabel("held-out loss at L")
    for arm, entry in record["arms"].items():
        if entry["tuned"]:
            curves = [cv for cv in entry.get("curve", []) if cv]
            if not curves:
                continue
            steps = [c[0] for c in curves[0]]
            values = [[c[1] for c in cv] for cv in curves if len(cv) == len(steps)]
            mean = [statistics.fmean(col) for col in zip(*values, strict=True)]
            (line,) = right.plot(steps, mean, marker="o", label=f"({arm}) {entry['label']}")
            if len(values) > 1:
                lo = [min(col) for col in zip(*values, strict=True)]
                hi = [max(col) for col in zip(*values, strict=True)]
                right.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2)
        elif entry.get("loss_long"):
            right.axhline(statistics.fmean(entry["loss_long"]), ls="--", lw=1, label=f"({arm}) {entry['label']}")
    right.set_title("arms at 4L (mean over seeds, band: min-max)")
    right.set_xlabel("step")
    right.set_ylabel("held-out loss at 4L")
    right.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def scores_png(record: dict, s: dict, path: Path) -> None:
    """One panel per ground-truth score (and the content loss): a bar per arm with its seed spread, data as a line."""
    plt = _plt()
    keys = ("content_long", *SCORES)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.4), dpi=110)
    arms = list(s)
    for ax, k in zip(axes, keys, strict=True):
        means = [s[a][k]["mean"] if k in s[a] else math.nan for a in arms]
        stds = [s[a][k]["std"] if k in s[a] else 0.0 for a in arms]
        ax.bar(range(len(arms)), means, yerr=stds, capsize=3, color="tab:blue")
        ref = record["data_reference"]["long"].get(k)
        if ref is not None and not math.isnan(ref):
            ax.axhline(ref, color="black", ls="--", lw=1, label="data")
            ax.legend(fontsize=6)
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels([f"({a})" for a in arms], fontsize=7)
        ax.set_title(k, fontsize=8)
    fig.suptitle(
        "4L: mean ± std over seeds (content_long: held-out loss on content tokens, lower is better)", fontsize=8
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _rgb(latents: torch.Tensor, frame: int) -> torch.Tensor:
    """A latent frame as RGB: objects in their palette colours, the wall in grey, a flash as a white tint."""
    obj = latents[OBJECT_CHANNELS, frame].float()
    resp = torch.einsum("ck,khw->chw", palette(), obj).clamp(min=0) / 2.5  # [4 colours, H, W]
    rgb = {"red": (1, 0, 0), "green": (0, 0.9, 0), "blue": (0.1, 0.4, 1), "yellow": (1, 0.9, 0)}
    occ_code, flash_code = scene_codes()
    wall = torch.einsum("k,khw->hw", occ_code, latents[OCCLUDER_CHANNELS, frame].float()).clamp(0, 2) / 2
    flash = torch.einsum("k,khw->hw", flash_code, latents[FLASH_CHANNELS, frame].float()).clamp(0, 2) / 2
    img = 0.1 + 0.5 * wall[None].repeat(3, 1, 1) + 0.4 * flash[None]
    for i, name in enumerate(COLOURS):
        img = img + resp[i][None] * torch.tensor(rgb[name])[:, None, None]
    return img.clamp(0, 1).permute(1, 2, 0)


def frames_png(frames: dict, path: Path, columns: int = 10) -> None:
    plt = _plt()
    rows = [k for k in ("data", "base_L", "a", "b", "f", "g", "c", "d", "e", "h") if k in frames]
    fig, axes = plt.subplots(len(rows), columns, figsize=(columns * 1.1, len(rows) * 1.2), dpi=110, squeeze=False)
    for r, name in enumerate(rows):
        latents = frames[name]
        f = latents.shape[1]
        for c in range(columns):
            i = round(c * (f - 1) / (columns - 1))
            ax = axes[r][c]
            ax.imshow(_rgb(latents, i).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"f{i}", fontsize=6)
        label = {"data": "data 4L", "base_L": "base at L"}.get(name, f"({name})")
        axes[r][0].set_ylabel(label, fontsize=7)
    fig.suptitle(
        "first sample of each arm at 4L (seed 0; base at L: its last check sample; data: a held-out clip)", fontsize=8
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_record(record: dict, frames: dict, out: Path, log) -> dict:
    """extension.md, extension.json and three PNGs under `out`; returns the verdicts."""
    s = summarise(record)
    v = verdicts(record, s) if "a" in s else {}
    if not v:
        why = "the base did not pass its check" if not record["base"].get("passed") else "arm (a) did not run"
        v = {"not_answered": why}
    record["summary"], record["verdicts"] = s, v
    loss_png(record, out / "extension_loss.png")
    if s:
        scores_png(record, s, out / "extension_scores.png")
    frames_png(frames, out / "extension_frames.png")
    (out / "extension.json").write_text(json.dumps(record, indent=1, default=float))
    (out / "extension.md").write_text(markdown(record, s, v))
    for key in ("i", "ii", "iii"):
        if key in v:
            log(f"({key}) {v[key]['text']}")
    for other, cmp in v.get("iv", {}).items():
        log(f"(iv) d vs {other}: {cmp}")
    if "v" in v:
        log(f"(v) {v['v']['text']}")
    return v
