"""Per-family fingerprints of tiny runs: per-step losses and a SHA-256 of every exported LoRA tensor of a 3-step
training run (the demo and every family and image-to-video variant), and of the final latents of a tiny 2-step
`train.generate`. Refactors that must not change behaviour compare these before and after, bitwise.

The runs read fixed synthetic videos (tests/data/family_parity_videos/, written once with --make-videos): libx264
does not encode the same frames to the same bytes from one call to the next, so freshly made videos would make
the fingerprints differ between runs of the same code.

    python -m tests.family_parity OUT.json      # writes the fingerprints (tests/test_family_spec_parity.py compares)
    python -m tests.family_parity --make-videos # writes the fixed videos (once)
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

VIDEOS = Path(__file__).resolve().parent / "data" / "family_parity_videos"
#: fixed video sets: name -> (videos, frames, size, fps); "demo" is data=synthetic's default, "f17" tiny_overrides'
VIDEO_SETS = {"demo": (8, 49, 96, 8), "f17": (3, 17, 64, 8), "f13": (3, 13, 64, 8), "i2v": (2, 17, 64, 16)}
#: name -> (model config, extra overrides, data to prepare: None for data=synthetic, else (family, i2v))
TRAIN_CASES: dict[str, tuple[str, list[str], tuple[str, bool] | None]] = {
    "wan": ("tiny_wan", [], None),
    "hunyuan": ("tiny_hunyuan", [], None),
    "hunyuan15": ("tiny_hunyuan15", [], None),
    "mochi": ("tiny_mochi", ["data.frames=13"], None),
    "wan22": ("tiny_wan", ["model.family=wan22", "+model.expert=transformer_2"], None),
    "wan22_ti2v": ("tiny_wan", ["model.family=wan22_ti2v"], None),
    "wan_i2v": ("tiny_wan", ["model.variant=i2v"], ("wan", True)),
    "wan22_i2v": (
        "tiny_wan",
        ["model.family=wan22", "model.variant=i2v", "+model.expert=transformer"],
        ("wan22", True),
    ),
    "wan22_ti2v_i2v": ("tiny_wan", ["model.family=wan22_ti2v"], ("wan22_ti2v", True)),
    "hunyuan15_i2v": ("tiny_hunyuan15", ["model.variant=i2v"], ("hunyuan15", True)),
}
#: tiny `train.generate` runs: family -> frames (the family's k*t+1 rule); default guidance of the family
GENERATE_CASES = {"wan": 17, "wan22": 17, "wan22_ti2v": 17, "hunyuan": 17, "hunyuan15": 17, "mochi": 13}
QUIET = ["logging.trackers=[]", "logging.loss_curve=false", "train.checkpoint_every=3"]


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().contiguous().cpu().numpy().tobytes()).hexdigest()


def _tensor_hashes(path: Path) -> dict[str, str]:
    return {k: _digest(v) for k, v in sorted(load_file(path).items())}


def make_videos() -> None:
    """Write the fixed video sets under VIDEOS (replacing any)."""
    from data.synthetic import make_synthetic_videos

    for name, (num, frames, size, fps) in VIDEO_SETS.items():
        shutil.rmtree(VIDEOS / name, ignore_errors=True)
        make_synthetic_videos(VIDEOS / name, num=num, frames=frames, fps=fps, sizes=((size, size),), seed=0)


def _train(out: Path, overrides: list[str], videos: str) -> dict:
    from train.config import compose, validate
    from train.trainer import Trainer

    shutil.copytree(VIDEOS / videos, out / "data" / "videos")  # data=synthetic reuses videos it finds there
    Trainer(validate(compose([f"output_dir={out}", *overrides, *QUIET]))).fit()
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    lora = out / "lora"
    return {
        "losses": losses,
        "lora": _tensor_hashes(lora / "pytorch_lora_weights.safetensors"),
        "comfy": _tensor_hashes(lora / "comfyui_lora.safetensors"),
    }


def _prepared(root: Path, family: str, image: bool) -> Path:
    from data.prepare import PrepareConfig, prepare

    videos = VIDEOS / "i2v"
    out = root / f"{family}_{'i2v' if image else 't2v'}"
    prepare(
        PrepareConfig(
            model=family, input=str(videos / "manifest.jsonl"), out=str(out), tiny=True, image=image, lengths=(17,),
            fps=16, buckets=("64x64",), progress=False, latent_dtype="fp32", text_dtype="fp32",
        )
    )  # fmt: skip
    return out


def _generate(out: Path, family: str, frames: int) -> dict:
    import train.generate as rgen

    args = ["--tiny", family, "--prompt", "a red ball", "--frames", str(frames), "--height", "64", "--width", "64"]
    (record,) = rgen.main([*args, "--steps", "2", "--block-size", "16", "--out", str(out)])["generated"]
    return {
        "latents": _digest(load_file(record["files"]["latents"])["latents"]),
        "guidance_scale": record["guidance_scale"],
        "shift": record["shift"],
    }


def fingerprints(work: Path) -> dict:
    """Run every case under `work` and return {"train": {case: ...}, "generate": {family: ...}}."""
    from tests.trainer_helpers import tiny_overrides

    torch.set_num_threads(1)  # reductions in one fixed order, whatever the machine's core count
    result: dict = {"train": {}, "generate": {}}
    out = work / "demo"  # the embedded demo: every default, three steps
    result["train"]["demo"] = _train(out, ["train.max_steps=3"], "demo")
    for name, (model, extra, data) in TRAIN_CASES.items():
        out = work / name
        base = tiny_overrides(out, out / "data", model=model, steps=3)
        if data is not None:
            root = _prepared(work / "prepared", *data)
            base = [o for o in base if not o.startswith("data.")] + [
                "data=latents",
                f"data.root={root}",
                "data.num_workers=0",
            ]
        videos = "f13" if "data.frames=13" in extra else "f17"
        result["train"][name] = _train(out, [*base, *extra], videos)
    for family, frames in GENERATE_CASES.items():
        result["generate"][family] = _generate(work / f"gen_{family}", family, frames)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--make-videos"]:
        make_videos()
        return 0
    if len(argv) != 1:
        print("usage: python -m tests.family_parity OUT.json | --make-videos", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        data = fingerprints(Path(tmp))
    Path(argv[0]).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
