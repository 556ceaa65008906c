"""Where a base of the extension experiment fails: its clean-clip predictions by noise level, and sampling started
part-way (SDEdit) from a held-out clip, scored as the base check scores samples.

A base whose x0 predictions are sharp at mid noise but whose samples from pure noise lose objects fails where the
objects are decided (high noise); one that loses them from every start fails everywhere. Runs on the CPU (a forward
of 16 frames x 1024 tokens takes ~10 s on two cores) or a GPU.

    python benchmarks/extension_diagnose.py benchmarks/results/extension_2026-12-07/base_s0 --out /tmp/diag
    python benchmarks/extension_diagnose.py BASE --out DIR --starts 0.8 0.9 0.95 0.98 1.0 --seeds 1 2 --steps 12
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import yaml  # noqa: E402

from benchmarks.extension_data import OBJECT_CHANNELS, ClipGeometry, make_clip, palette, text_states  # noqa: E402
from benchmarks.extension_score import base_check, mean_scores, score_clip, track_error  # noqa: E402

PRESETS = Path(__file__).with_name("extension.yaml")


def objects_map(x: torch.Tensor) -> torch.Tensor:
    """[F, H, W]: the strongest palette response of the object channels of a clip [16, F, H, W]."""
    return torch.einsum("ck,kfhw->cfhw", palette(), x[OBJECT_CHANNELS].float()).amax(0)


def velocity(model, x: torch.Tensor, sigma: float, text: torch.Tensor) -> torch.Tensor:
    """The model's flow velocity at noise level `sigma` (bf16 autocast, as the experiment samples)."""
    device = x.device
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        t = torch.tensor([sigma * 1000.0], device=device)
        return model(x, timestep=t, encoder_hidden_states=text, return_dict=False)[0].float()


def sdedit(
    model, x0: torch.Tensor, start: float, steps: int, seed: int, text: torch.Tensor, given: int = 0
) -> torch.Tensor:
    """Euler sampling from `x0` noised to `start` down to 0 in `steps` equal steps (start 1.0: from pure noise).

    `given` > 0: the first `given` latent frames are replaced at every step by `x0` noised to the step's level (the
    replacement method of conditioning an unconditional model on frames it has to continue)."""
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(x0.device)
    x = (1 - start) * x0 + start * noise
    sig = torch.linspace(start, 0.0, steps + 1).tolist()
    for i in range(steps):
        if given:
            x[:, :, :given] = (1 - sig[i]) * x0[:, :, :given] + sig[i] * noise[:, :, :given]
        x = x + (sig[i + 1] - sig[i]) * velocity(model, x, sig[i], text)
    if given:
        x[:, :, :given] = x0[:, :, :given]
    return x


def probe(model, g: ClipGeometry, frames: int, clips: list[int], sigma: float, text: torch.Tensor) -> dict:
    """The experiment's denoising probe on clips of these seeds (noise seed: clip seed + 1): the mean scores of the
    one-step predictions x0^ and of the clips themselves, and the base check of the one against the other."""
    device = text.device
    data, pred, errors = [], [], []
    for seed in clips:
        x0, truth = make_clip(g, frames, torch.Generator().manual_seed(seed))
        noise = torch.randn(x0[None].shape, generator=torch.Generator().manual_seed(seed + 1))
        xt = ((1 - sigma) * x0[None] + sigma * noise).to(device)
        data.append(score_clip(x0, g))
        errors.append(track_error(x0, g, truth))
        pred.append(score_clip((xt - sigma * velocity(model, xt, sigma, text))[0].cpu(), g))
    d, q = mean_scores(data), mean_scores(pred)
    return {
        "sigma": sigma,
        "clips": clips,
        "data": d,
        "scores": q,
        "check": base_check(q, d, sum(errors) / len(errors)),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", type=Path, help="a kept base folder (config.json + weights), e.g. --out/base of a run")
    ap.add_argument("--out", type=Path, required=True, help="diagnose.json and x0_predictions.png")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.9, 0.7, 0.5, 0.3], help="x0-prediction levels")
    ap.add_argument("--starts", type=float, nargs="*", default=[0.8, 0.9, 0.95, 0.98, 1.0], help="SDEdit starts")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="noise seeds per start")
    ap.add_argument("--steps", type=int, default=12, help="Euler steps per SDEdit run")
    ap.add_argument("--given", type=int, nargs="+", default=[0], help="latent frames given by replacement (0: none)")
    ap.add_argument("--clip-seed", type=int, default=777, help="the held-out clip (never a training seed)")
    ap.add_argument("--probe-clips", type=int, nargs="*", default=[], help="clip seeds of the denoising probe")
    ap.add_argument("--probe-sigma", type=float, default=0.5, help="the probe's noise level (the preset's probe_sigma)")
    ap.add_argument("--smoke", action="store_true", help="the smoke preset's sizes (tests)")
    args = ap.parse_args(argv)
    for s in [*args.sigmas, *args.starts, args.probe_sigma]:
        if not 0 < s <= 1:
            ap.error(f"noise level {s}: expected in (0, 1]")
    from diffusers import WanTransformer3DModel

    p = yaml.safe_load(PRESETS.read_text())["smoke" if args.smoke else "full"]
    c = p["clip"]
    if not all(0 <= k < p["frames_base"] for k in args.given):
        ap.error(f"--given {args.given}: expected 0 to {p['frames_base'] - 1} latent frames")
    g = ClipGeometry(p["latent_size"], p["latent_size"], p["text_len"], p["text_dim"], sigma=c["sigma"],
                     occluder_width=c["occluder_width"], period=tuple(c["period"]))  # fmt: skip
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = WanTransformer3DModel.from_pretrained(args.base, torch_dtype=torch.float32).to(device).eval()
    x0, _ = make_clip(g, p["frames_base"], torch.Generator().manual_seed(args.clip_seed))
    x0 = x0[None].to(device)
    text = text_states(p["text_len"], p["text_dim"])[None].to(device)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"base": str(args.base), "device": device, "data": score_clip(x0[0].cpu(), g), "x0": {}, "sdedit": []}
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1)).to(device)
    predictions = {}
    for s in args.sigmas:
        xt = (1 - s) * x0 + s * noise
        x0_hat = xt - s * velocity(model, xt, s, text)
        predictions[s] = objects_map(x0_hat[0].cpu())
        report["x0"][str(s)] = score_clip(x0_hat[0].cpu(), g)
        print(f"x0 at sigma {s}: objects/frame {report['x0'][str(s)]['objects_per_frame']:.2f}", flush=True)
    for start, given, seed in [(s, k, e) for s in args.starts for k in args.given for e in args.seeds]:
        t0 = time.perf_counter()
        scores = score_clip(sdedit(model, x0, start, args.steps, seed, text, given)[0].cpu(), g)
        report["sdedit"].append({"start": start, "given": given, "seed": seed, "steps": args.steps, **scores})
        print(f"from sigma {start} given {given} seed {seed}: objects/frame {scores['objects_per_frame']:.2f}, identity "
              f"{scores['late_identity']:.2f}, tracks {scores['track_rmse']:.2f} ({time.perf_counter() - t0:.0f}s)",
              flush=True)  # fmt: skip
    if args.probe_clips:
        report["probe"] = probe(model, g, p["frames_base"], args.probe_clips, args.probe_sigma, text)
        print(
            f"probe at sigma {args.probe_sigma}: {'PASS' if report['probe']['check']['pass'] else 'fail'}", flush=True
        )
    (args.out / "diagnose.json").write_text(json.dumps(report, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = sorted({round(i * (p["frames_base"] - 1) / 5) for i in range(6)})
    rows = [("data", objects_map(x0[0].cpu()))] + [(f"x0^ s={s}", m) for s, m in predictions.items()]
    fig, ax = plt.subplots(len(rows), len(frames), figsize=(2 * len(frames), 2 * len(rows)), squeeze=False)
    for i, (name, m) in enumerate(rows):
        for j, f in enumerate(frames):
            ax[i, j].imshow(m[f], vmin=0, vmax=g.amplitude)
            ax[i, j].set_title(f"{name} f{f}", fontsize=8)
            ax[i, j].axis("off")
    fig.tight_layout()
    fig.savefig(args.out / "x0_predictions.png", dpi=60)
    return report


if __name__ == "__main__":
    main()
