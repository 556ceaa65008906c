"""`python -m train.eval`: compare two generations, or run evaluation hooks on a folder of videos.

    python -m train.eval compare out/wan_s0_radial.mp4 out/wan_s0_dense.mp4 \\
        --latents out/wan_s0_radial.latents.safetensors out/wan_s0_dense.latents.safetensors --out out/cmp
    python -m train.eval hooks out/ --hooks flicker vbench videoreward \\
        --set vbench.python=/envs/vbench/bin/python vbench.dimensions='["temporal_flickering"]' \\
        --settings hooks.yaml          # {hook: {setting: value}}, YAML or JSON; --set wins
    python -m train.eval list          # the registered hooks and their settings
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def _parse_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_settings(files: Sequence[str], pairs: Sequence[str]) -> dict[str, dict]:
    settings: dict[str, dict] = {}
    for f in files:
        from omegaconf import OmegaConf

        data = OmegaConf.to_container(OmegaConf.load(f), resolve=True)
        for name, values in (data or {}).items():
            settings.setdefault(name, {}).update(values or {})
    for pair in pairs:
        key, sep, value = pair.partition("=")
        hook, dot, setting = key.partition(".")
        if not sep or not dot:
            raise ValueError(f"--set {pair!r}: expected HOOK.SETTING=VALUE")
        settings.setdefault(hook, {})[setting] = _parse_value(value)
    return settings


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m train.eval", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="PSNR / SSIM per frame, latent relative error, flicker; JSON + PNG")
    c.add_argument("video", help="the video to judge (e.g. radial): .mp4, .npy or .safetensors with frames")
    c.add_argument("reference", help="the reference (e.g. dense, same seed)")
    c.add_argument("--latents", nargs=2, metavar=("LATENTS", "REFERENCE_LATENTS"), help=".latents.safetensors files")
    c.add_argument("--out", default=None, help="folder for metrics.json and metrics.png (default: beside the video)")
    h = sub.add_parser("hooks", help="run evaluation hooks on a folder of .mp4 videos")
    h.add_argument("videos", help="folder of .mp4 files (prompts from NAME.json sidecars or prompts.json)")
    h.add_argument("--hooks", nargs="+", required=True, help="hook names (or package.module:Class)")
    h.add_argument("--settings", action="append", default=[], help="YAML/JSON file {hook: {setting: value}}")
    h.add_argument("--set", nargs="+", default=[], metavar="HOOK.KEY=VALUE", help="one setting (JSON values)")
    h.add_argument("--out", default=None, help="output folder (default: VIDEOS/eval)")
    sub.add_parser("list", help="registered hooks and their settings")
    args = p.parse_args(argv)

    if args.command == "list":
        from train.eval.hooks import available_hooks, resolve_hook

        out = {name: dict(resolve_hook(name).defaults) for name in available_hooks()}
        print(json.dumps(out, indent=1, default=str))
        return out
    if args.command == "compare":
        from train.eval.metrics import compare_videos, load_frames, load_latents, save_report

        a, b = load_frames(args.video), load_frames(args.reference)
        la = lb = None
        if args.latents:
            la, lb = load_latents(args.latents[0]), load_latents(args.latents[1])
        report = compare_videos(a, b, la, lb, names=(Path(args.video).name, Path(args.reference).name))
        out = Path(args.out) if args.out else Path(args.video).parent
        stem = Path(args.video).stem
        report["files"] = save_report(report, out / f"{stem}_metrics.json", out / f"{stem}_metrics.png")
        print(json.dumps(report["summary"], indent=1))
        return report
    from train.eval.hooks import run_hooks

    try:
        settings = parse_settings(args.settings, args.set)
    except ValueError as e:
        p.exit(2, f"error: {e}\n")
    out = Path(args.out) if args.out else Path(args.videos) / "eval"
    results = run_hooks(args.hooks, args.videos, out, settings)
    for name, r in results.items():
        print(f"{name}: {r['status']} {json.dumps(r['scores'])}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
