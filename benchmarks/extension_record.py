"""The extension experiment's record: per-arm means over seeds, the verdicts computed from them, the Markdown table
(shaped like the paper's Table 2), the JSON, the loss-vs-steps PNG and the frame-strip PNG."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import torch

from benchmarks.extension_data import BG_CHANNELS, BLOB_CHANNELS, COLOURS, palette

METRICS = ("loss_base", "loss_long", "track_rmse", "identity_cos", "purity_q4", "strength_ratio", "flicker")
COSTS = ("step_s", "train_s", "peak_memory_gb", "attention_density", "fit_wall_s")
LOSS_TOLERANCE = 0.05  # (iii): radial LoRA's 4L held-out loss within 5% of dense LoRA's


def _stats(values: list[float]) -> dict:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}


def summarise(record: dict) -> dict:
    """arm -> metric -> {mean, std, n} over seeds."""
    return {
        arm: {k: _stats(entry[k]) for k in (*METRICS, *COSTS) if k in entry} for arm, entry in record["arms"].items()
    }


def verdicts(record: dict, s: dict) -> dict:
    """The four questions, answered from the measured means (nothing here is fixed in advance)."""
    m = {arm: {k: v["mean"] for k, v in metrics.items()} for arm, metrics in s.items()}
    sd = {arm: {k: v["std"] for k, v in metrics.items()} for arm, metrics in s.items()}
    out: dict = {}
    a = m["a"]
    gap = a["loss_long"] / a["loss_base"] - 1
    ref = record["data_reference"]["track_rmse"]
    out["i"] = {
        "answer": bool(a["loss_long"] > a["loss_base"]),
        "text": f"held-out loss {a['loss_long']:.4f} at 4L vs {a['loss_base']:.4f} at L ({gap:+.1%}); track RMSE of "
        f"its 4L samples {a['track_rmse']:.2f} px (data: {ref:.2f} px)",
    }
    worst_loss = min(m["a"]["loss_long"], m["b"]["loss_long"])
    worst_track = min(m["a"]["track_rmse"], m["b"]["track_rmse"])
    rec = {}
    for arm in ("c", "d"):
        rec[arm] = {
            "loss": bool(m[arm]["loss_long"] < worst_loss),
            "track": bool(m[arm]["track_rmse"] < worst_track),
        }
    out["ii"] = {
        "answer": all(all(r.values()) for r in rec.values()),
        "detail": rec,
        "text": "; ".join(
            f"{arm}: 4L loss {m[arm]['loss_long']:.4f} vs best untuned {worst_loss:.4f} "
            f"({'lower' if rec[arm]['loss'] else 'not lower'}), track {m[arm]['track_rmse']:.2f} vs {worst_track:.2f} px "
            f"({'better' if rec[arm]['track'] else 'not better'})"
            for arm in ("c", "d")
        ),
    }
    rel = m["d"]["loss_long"] / m["c"]["loss_long"] - 1
    spread = max(sd["c"]["track_rmse"], sd["d"]["track_rmse"])
    diff = m["d"]["track_rmse"] - m["c"]["track_rmse"]
    loss_ok = rel <= LOSS_TOLERANCE
    track_ok = diff <= spread
    out["iii"] = {
        "answer": bool(loss_ok and track_ok),
        "loss_rel": rel,
        "track_diff": diff,
        "seed_spread": spread,
        "text": f"radial LoRA's 4L loss is {rel:+.1%} against dense LoRA's ({'within' if loss_ok else 'outside'} "
        f"+{LOSS_TOLERANCE:.0%}); its track RMSE differs by {diff:+.2f} px, seed spread (largest std) {spread:.2f} px "
        f"({'within' if track_ok else 'outside'})",
    }
    speed = m["c"]["step_s"] / m["d"]["step_s"]
    total = m["c"]["train_s"] / m["d"]["train_s"]
    out["iv"] = {
        "step_speedup": speed,
        "train_time_ratio": total,
        "text": f"radial LoRA step {m['d']['step_s'] * 1000:.0f} ms vs dense {m['c']['step_s'] * 1000:.0f} ms "
        f"({speed:.2f}x); training {m['d']['train_s']:.0f}s vs {m['c']['train_s']:.0f}s ({total:.2f}x); peak memory "
        f"{m['d']['peak_memory_gb']:.2f} vs {m['c']['peak_memory_gb']:.2f} GB; attention density "
        f"{record['geometry']['radial_density']:.3f} (sparse layers)",
    }
    win = m.get("e")
    if win:
        out["window"] = {
            "text": f"window LoRA (density {record['geometry']['window_density']:.3f}): 4L loss "
            f"{win['loss_long']:.4f}, track {win['track_rmse']:.2f} px, against radial LoRA's "
            f"{m['d']['loss_long']:.4f} and {m['d']['track_rmse']:.2f} px"
        }
    return out


def _fmt(st: dict | None, digits: int = 4, scale: float = 1.0) -> str:
    if not st or st["n"] == 0:
        return "-"
    mean = st["mean"] * scale
    if st["n"] > 1 and st["std"] > 0:
        return f"{mean:.{digits}f} ± {st['std'] * scale:.{digits}f}"
    return f"{mean:.{digits}f}"


def markdown(record: dict, s: dict, v: dict) -> str:
    g, base, ref = record["geometry"], record["base"], record["data_reference"]
    yes = {True: "**yes**", False: "**no**"}
    lines = [
        "# Length extension: the paper's Table 2 in miniature",
        "",
        f"Device: {record['device']}; attention backend of the sparse arms: `{record['backend']}`; "
        f"{record['seeds']} seeds per tuned arm, {record['steps_per_run']} steps each (same data, seeds, LR schedule "
        f"for every arm); run time {record['total_s']:.0f}s of a {record['budget_s']:.0f}s budget. "
        "Generated by `benchmarks/extension.py`; every number below is measured in that run.",
        "",
        "| arm | attention | tuned | density | held-out loss L | held-out loss 4L | track RMSE (px) ↓ | "
        "identity cos ↑ | purity Q4 ↑ | strength Q4/Q1 | flicker | step (ms) | train (s) | peak mem (GB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| data (held-out 4L clips) | - | - | - | - | - | {ref['track_rmse']:.2f} | {ref['identity_cos']:.3f} | "
        f"{ref['purity_q4']:.3f} | "
        f"{ref['strength_ratio']:.3f} | {ref['flicker']:.4f} | - | - | - |",
    ]
    density = {"dense": 1.0, "radial": g["radial_density"], "window": g["window_density"]}
    for arm, entry in record["arms"].items():
        st = s[arm]
        lines.append(
            f"| ({arm}) {entry['label']} | {entry['attention']} | {'yes' if entry['tuned'] else 'no'} | "
            f"{density[entry['attention']]:.3f} | {_fmt(st.get('loss_base'))} | {_fmt(st.get('loss_long'))} | "
            f"{_fmt(st.get('track_rmse'), 2)} | {_fmt(st.get('identity_cos'), 3)} | {_fmt(st.get('purity_q4'), 3)} | "
            f"{_fmt(st.get('strength_ratio'), 3)} | {_fmt(st.get('flicker'), 4)} | "
            f"{_fmt(st.get('step_s'), 0, 1000)} | {_fmt(st.get('train_s'), 1)} | {_fmt(st.get('peak_memory_gb'), 2)} |"
        )
    lines += [
        "",
        "Mean ± standard deviation over seeds (untuned arms: the same model, sampled with each seed). Track RMSE: the "
        "blobs recovered from the sampled 4L latents against the best constant-velocity-with-bounces path; identity "
        "cos: the blob's colour vector, first vs last quarter; purity: in the last quarter, the named colours' response over "
        "itself plus that of the palette colour the caption does not name (only the right blobs: 1, noise: ~0.5); strength: its peak response, last over first quarter; "
        "flicker: mean absolute frame-to-frame change of the background channels (data value for reference).",
        "",
        "## Answers",
        "",
        f"- (i) Is the base model worse at 4L than at L? {yes[v['i']['answer']]}: {v['i']['text']}.",
        f"- (ii) Do dense and radial LoRA both recover 4L quality over (a) and (b)? {yes[v['ii']['answer']]}: "
        f"{v['ii']['text']}.",
        f"- (iii) Radial LoRA within 5% of dense LoRA's 4L loss and within the seed spread on the ground-truth score? "
        f"{yes[v['iii']['answer']]}: {v['iii']['text']}.",
        f"- (iv) How much cheaper is radial training at 4L? {v['iv']['text']}.",
    ]
    if "window" in v:
        lines.append(f"- Sparse baseline: {v['window']['text']}.")
    for failure in record.get("failed", []):
        lines.append(f"- FAILED run (left out of the means): {failure}")
    lines += [
        "",
        "## Setup",
        "",
        f"- Model: diffusers `{record['model']['class']}`, {record['model']['parameters'] / 1e6:.2f}M parameters "
        f"({record['model']['num_layers']} layers, {record['model']['num_attention_heads']} heads x "
        f"{record['model']['attention_head_dim']}), trained from scratch at L in `train.mode=full`: "
        f"{base['steps']} steps, ended by: {base['ended']}; step {base['cost']['step_s'] * 1000:.0f} ms.",
        f"- Geometry: L = {g['frames_base']} latent frames, 4L = {g['frames_long']}, {g['tokens_per_frame']} tokens "
        f"per frame ({g['tokens_long']} video tokens at 4L), block {g['block_size']}; radial block density "
        f"{g['radial_density']:.3f} ({g['radial_density_all_layers']:.3f} counting the {g['dense_layers']} dense "
        f"layer(s)); window baseline ±{g['window_frames']} frames (+ sink frame), density {g['window_density']:.3f}.",
        "- Data: latent-space clips made directly in Wan's latent layout (no pretrained VAE exists here, a random "
        "VAE's latents would carry no structure, and latent space is where the transformer's length generalisation "
        "is tested): two Gaussian blobs with palette colours moving at constant velocity and bouncing off the walls "
        "over a smoothly panning periodic background; train and held-out splits from different seeds; text: fixed "
        "random states for 3 caption classes (the pair of colours). Scorer check on held-out data: recovered tracks "
        f"are {ref['scorer_track_error']:.2f} px from the true ones.",
        f"- Phases (s): {', '.join(f'{k[:-2]} {val:.0f}' for k, val in record['phases_s'].items())}.",
        "",
        "![held-out loss](extension_loss.png)",
        "",
        "![frames](extension_frames.png)",
        "",
    ]
    return "\n".join(lines)


def loss_png(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    curve = record["base"]["curve"]
    if curve:
        left.plot([c[0] for c in curve], [c[1] for c in curve], marker="o")
    left.set_title("base, full training at L")
    left.set_xlabel("step")
    left.set_ylabel("held-out loss at L")
    colours = {"c": "tab:blue", "d": "tab:red", "e": "tab:green"}
    for arm, entry in record["arms"].items():
        if entry["tuned"]:
            curves = entry.get("curve", [])
            if not curves:
                continue
            steps = [c[0] for c in curves[0]]
            values = [[c[1] for c in cv] for cv in curves if len(cv) == len(steps)]
            mean = [statistics.fmean(col) for col in zip(*values, strict=True)]
            right.plot(steps, mean, marker="o", color=colours.get(arm), label=f"({arm}) {entry['label']}")
            if len(values) > 1:
                lo = [min(col) for col in zip(*values, strict=True)]
                hi = [max(col) for col in zip(*values, strict=True)]
                right.fill_between(steps, lo, hi, color=colours.get(arm), alpha=0.2)
        else:
            right.axhline(
                entry["loss_long"][0],
                ls="--",
                color="gray" if arm == "a" else "black",
                label=f"({arm}) {entry['label']}",
            )
    right.set_title("arms at 4L (mean over seeds, band: min-max)")
    right.set_xlabel("step")
    right.set_ylabel("held-out loss at 4L")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _rgb(latents: torch.Tensor, frame: int) -> torch.Tensor:
    """A latent frame as RGB: the blobs in their palette colours over the background's first channel in grey."""
    blob = latents[BLOB_CHANNELS, frame].float()
    resp = torch.einsum("ck,khw->chw", palette(), blob).clamp(min=0) / 2.5  # [3 colours, H, W]
    rgb = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0.4, 1)}
    img = 0.35 + 0.1 * latents[BG_CHANNELS][0, frame].float()[None].repeat(3, 1, 1)
    for i, name in enumerate(COLOURS):
        img = img + resp[i][None] * torch.tensor(rgb[name])[:, None, None]
    return img.clamp(0, 1).permute(1, 2, 0)


def frames_png(frames: dict, path: Path, columns: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [k for k in ("data", "a", "b", "c", "d", "e") if k in frames]
    fig, axes = plt.subplots(len(rows), columns, figsize=(columns * 1.2, len(rows) * 1.3), dpi=110, squeeze=False)
    for r, name in enumerate(rows):
        latents = frames[name]
        f = latents.shape[1]
        for c in range(columns):
            i = round(c * (f - 1) / (columns - 1))
            ax = axes[r][c]
            ax.imshow(_rgb(latents, i).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"frame {i}", fontsize=7)
        axes[r][0].set_ylabel(name if name == "data" else f"({name})", fontsize=8)
    fig.suptitle("4L clips (seed 0, caption class 0; data: a held-out clip)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_record(record: dict, frames: dict, out: Path, log) -> dict:
    """extension.md, extension.json, extension_loss.png, extension_frames.png under `out`; returns the verdicts."""
    s = summarise(record)
    missing = [arm for arm in "abcd" if arm not in s]
    if missing:  # a failed arm: the record says so instead of answering
        text = f"not answerable: arm(s) {', '.join(missing)} did not run (see extension.log)"
        v = {k: {"answer": False, "text": text} for k in ("i", "ii", "iii", "iv")}
    else:
        v = verdicts(record, s)
    record["summary"], record["verdicts"] = s, v
    loss_png(record, out / "extension_loss.png")
    frames_png(frames, out / "extension_frames.png")
    (out / "extension.json").write_text(json.dumps(record, indent=1, default=float))
    (out / "extension.md").write_text(markdown(record, s, v))
    for key in ("i", "ii", "iii"):
        log(f"({key}) {'yes' if v[key]['answer'] else 'no'}: {v[key]['text']}")
    log(f"(iv) {v['iv']['text']}")
    return v
