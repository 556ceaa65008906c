"""The length-extension experiment (the paper's Table 2 in miniature), end to end through the project's real paths.

    python benchmarks/extension.py --out $OUT --work /tmp/ext --budget-minutes 9   # one H200, ~9 minutes in all
    python benchmarks/extension.py --smoke --out /tmp/ext_out --work /tmp/ext      # the same pipeline on the CPU

1. Data (benchmarks/extension_data.py): latent clips of two bouncing blobs over a panning background, at L and 4L
   latent frames, train and held-out splits (different seeds), written as trainer shards with tracks.json beside.
2. Base: a WanTransformer3DModel (benchmarks/extension.yaml: ~36M parameters) trained from scratch at L in
   `train.mode=full`, until its held-out loss plateaus (train.early_stop_patience) or its share of the budget ends.
3. Arms at 4L, from the exported base, each with the same data, seeds, steps and LR schedule:
   (a) base, dense, untuned; (b) base, radial, untuned; (c) dense LoRA; (d) radial LoRA; (e) LoRA under a temporal
   window mask of radial's density. The step count is sized from a timing probe so that every arm and seed fits.
4. Metrics: held-out flow-matching loss at fixed noise levels at L and 4L (the trainer's Validator); 4L clips
   sampled with the diffusers WanPipeline (radial.generation.generate) and scored against the physics
   (benchmarks/extension_score.py); step time, training time, peak memory, attention density.
5. Record (--out): extension.md (table + computed verdicts), extension.json, extension_loss.png,
   extension_frames.png, extension.log. Models and shards stay in --work.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import shutil
import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import yaml  # noqa: E402

from benchmarks.extension_data import CLASSES, ClipGeometry, caption, class_text_states, write_split  # noqa: E402
from benchmarks.extension_score import mean_scores, score_clip, track_error  # noqa: E402

PRESETS = Path(__file__).with_name("extension.yaml")
ARMS = {  # name: (label, attention, tuned)
    "a": ("base, dense", "dense", False),
    "b": ("base + radial (training-free)", "radial", False),
    "c": ("dense LoRA", "dense", True),
    "d": ("radial LoRA", "radial", True),
    "e": ("window LoRA (same density)", "window", True),
}


class Log:
    """Prints and appends to the run log (kept in --out; None: print only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.started = time.perf_counter()

    def __call__(self, msg: str) -> None:
        line = f"[{time.perf_counter() - self.started:7.1f}s] {msg}"
        print(line, flush=True)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(line + "\n")


def _reset_accelerate() -> None:
    """Accelerate keeps one process-wide state; each trainer of this script starts from a fresh one."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


class Experiment:
    """The phases of the experiment over one preset, a work folder and a time budget."""

    def __init__(self, preset: dict, work: Path, out: Path, budget_s: float, backend: str, seeds: int | None, log):
        self.p, self.work, self.out, self.log = preset, work, out, log
        self.backend = backend
        self.started = time.perf_counter()
        self.deadline = self.started + budget_s
        self.budget_s = budget_s
        self.seeds = seeds or preset["arms"]["seeds"]
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.geom = ClipGeometry(preset["latent_size"], preset["latent_size"], preset["text_len"], preset["text_dim"])
        self.roots: dict[str, Path] = {}
        self.phases: dict[str, float] = {}
        self.record: dict = {"preset": preset, "arms": {}, "runs": []}

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    # -- 1. data ------------------------------------------------------------------------------------------------
    def data(self) -> None:
        t0 = time.perf_counter()
        p, c = self.p, self.p["clips"]
        splits = {  # name: (latent frames, count, seed); held-out seeds are never used for training data
            "train_base": (p["frames_base"], c["train_base"], 1),
            "train_long": (p["frames_long"], c["train_long"], 2),
            "heldout_base": (p["frames_base"], c["heldout"], 101),
            "heldout_long": (p["frames_long"], c["heldout"], 102),
        }
        for name, (frames, count, seed) in splits.items():
            root = self.work / "data" / name
            shutil.rmtree(root, ignore_errors=True)
            self.roots[name] = write_split(root, self.geom, frames, count, seed, name, device=self.device)
        self.phases["data_s"] = time.perf_counter() - t0
        self.log(
            f"data: {', '.join(f'{k} {v[1]} x {v[0]} frames' for k, v in splits.items())} "
            f"in {self.phases['data_s']:.1f}s"
        )

    # -- trainer plumbing ---------------------------------------------------------------------------------------
    def overrides(
        self,
        run: str,
        *,
        seed: int,
        steps: int,
        model_path: Path,
        attention: str,
        data: str,
        heldout: str,
        validate_every: int,
        full: bool = False,
    ) -> list[str]:
        p, a = self.p, self.p["arms"]
        o = [
            "model=tiny_wan",
            "model.source=pretrained",
            f"model.path={model_path}",
            f"model.dtype={'float32' if full else p['model_dtype']}",
            f"model.flow_shift={p['flow_shift']}",
            f"output_dir={self.work / 'runs' / run}",
            f"seed={seed}",
            "data=latents",
            f"data.root={self.roots[data]}",
            f"data.num_workers={p['num_workers']}",
            f"train.max_steps={steps}",
            "train.checkpoint_every=0",
            "train.keep_last=1",
            f"train.mixed_precision={p['mixed_precision']}",
            "train.gradient_checkpointing=false",
            "train.export_comfy=false",
            "eval=default",
            "eval.hooks=[]",
            f"eval.validation_every={validate_every}",
            f"eval.heldout_root={self.roots[heldout]}",
            f"eval.num_heldout={p['eval']['heldout']}",
            f"eval.timesteps=[{','.join(str(x) for x in p['eval']['timesteps'])}]",
            "eval.num_samples=0",
            "logging.trackers=[]",
            "logging.loss_curve=false",
            "optim.scheduler=constant_with_warmup",
        ]
        if attention == "dense":
            o += ["attention=dense"]
        else:
            o += [
                "attention=radial",
                f"attention.backend={self.backend}",
                f"attention.dense_layers={p['dense_layers']}",
                f"attention.decay_factor={p['decay_factor']}",
            ]
            if attention == "window":
                o += [f"attention.window_frames={self.record['geometry']['window_frames']}"]
        o += [f"attention.block_size={p['block_size']}"]
        if full:
            b = p["base"]
            o += [
                "train.mode=full",
                f"data.batch_size={b['batch_size']}",
                f"optim.lr={b['lr']}",
                f"optim.warmup_steps={b['warmup']}",
                f"train.early_stop_patience={b['patience']}",
                f"train.early_stop_min_delta={b['min_delta']}",
            ]
        else:
            o += [
                "data.batch_size=1",
                f"optim.lr={a['lr']}",
                f"lora.rank={a['rank']}",
                f"lora.alpha={a['rank']}",
                f"optim.warmup_steps={int(a['warmup_frac'] * steps)}",
            ]
        return o

    def trainer(self, overrides: list[str]):
        from train.config import compose, validate
        from train.trainer import Trainer

        _reset_accelerate()
        return Trainer(validate(compose(overrides)))

    # -- 2. base model ------------------------------------------------------------------------------------------
    def base(self) -> None:
        from radial.models import get_adapter

        t0 = time.perf_counter()
        p, b = self.p, self.p["base"]
        init = self.work / "base_init"
        model = get_adapter("wan").build_tiny(seed=0, **p["model"])
        self.record["model"] = {
            "class": type(model).__name__,
            "parameters": sum(x.numel() for x in model.parameters()),
            **p["model"],
        }
        model.save_pretrained(init)
        del model
        limit = max(10.0, b["budget_share"] * self.left())
        o = self.overrides(
            "base",
            seed=0,
            steps=b["max_steps"],
            model_path=init,
            attention="dense",
            data="train_base",
            heldout="heldout_base",
            validate_every=b["validate_every"],
            full=True,
        )
        o.append(f"train.time_limit_s={limit:.0f}")
        trainer = self.trainer(o)
        self.log(
            f"base: {self.record['model']['parameters'] / 1e6:.2f}M parameters, full training at L for at most "
            f"{limit:.0f}s or until the held-out loss plateaus"
        )
        summary = trainer.fit()
        run = trainer.out
        self.base_path = run / "transformer"
        self.record["base"] = {
            "steps": summary["step"],
            "ended": summary["ended_early"] or "train.max_steps reached",
            "curve": [(h["step"], h["val/loss"]) for h in trainer.validator.history if "val/loss" in h],
            "cost": _cost(run),
        }
        del trainer
        self.phases["base_s"] = time.perf_counter() - t0
        self.log(f"base: {summary['step']} steps, {self.record['base']['ended']}, {self.phases['base_s']:.0f}s")

    # -- geometry ------------------------------------------------------------------------------------------------
    def geometry(self) -> None:
        from radial.plan import make_plan

        p = self.p
        tpf = (p["latent_size"] // 2) ** 2
        radial = make_plan(
            p["frames_long"], tpf, block_size=p["block_size"], model="wan", decay_factor=p["decay_factor"]
        )
        windows = {
            k: make_plan(p["frames_long"], tpf, block_size=p["block_size"], model="wan", window_frames=k)
            for k in range(1, p["frames_long"])
        }
        k = min(windows, key=lambda k: abs(windows[k].stats.block_density - radial.stats.block_density))
        layers, dense = p["model"]["num_layers"], p["dense_layers"]
        self.record["geometry"] = {
            "tokens_per_frame": tpf,
            "frames_base": p["frames_base"],
            "frames_long": p["frames_long"],
            "tokens_long": p["frames_long"] * tpf,
            "block_size": p["block_size"],
            "radial_density": radial.stats.block_density,
            "decay_factor": p["decay_factor"],
            "window_frames": k,
            "window_density": windows[k].stats.block_density,
            "dense_layers": dense,
            "radial_density_all_layers": (dense + (layers - dense) * radial.stats.block_density) / layers,
        }
        g = self.record["geometry"]
        self.log(
            f"geometry: {g['frames_long']} x {tpf} tokens at 4L, radial density {g['radial_density']:.3f}, "
            f"window +-{k} frames density {g['window_density']:.3f}"
        )

    # -- evaluation of one model -----------------------------------------------------------------------------------
    def evaluate(self, trainer, seed: int) -> dict:
        from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

        from radial.generation import ClipSpec, PromptEmbeds, generate
        from train.eval.validation import Validator

        p = self.p
        t0 = time.perf_counter()
        out = {"loss_long": trainer.validator.heldout_loss()["val/loss"]}
        self.heldout_s = time.perf_counter() - t0
        base_val = Validator(trainer)
        base_val.settings = dataclasses.replace(base_val.settings, heldout_root=str(self.roots["heldout_base"]))
        out["loss_base"] = base_val.heldout_loss()["val/loss"]
        model = trainer._unwrapped()
        model.eval()
        pipe = WanPipeline(
            tokenizer=None,
            text_encoder=None,
            transformer=model,
            vae=None,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=p["flow_shift"]),
        )
        pipe.set_progress_bar_config(disable=True)
        text = class_text_states(p["text_len"], p["text_dim"])
        scores, clips = [], []
        for cls in range(p["eval"]["samples_per_seed"]):
            embeds = PromptEmbeds(
                {
                    "prompt_embeds": text[cls][None],
                    "prompt_attention_mask": torch.ones(1, p["text_len"], dtype=torch.int64),
                },
                prompt=caption(cls),
            )
            clip = ClipSpec(
                frames=4 * (p["frames_long"] - 1) + 1,
                height=8 * p["latent_size"],
                width=8 * p["latent_size"],
                num_inference_steps=p["eval"]["sample_steps"],
                guidance_scale=1.0,
                seed=1000 * seed + cls,
                max_sequence_length=p["text_len"],
            )
            with trainer.accelerator.autocast():
                result = generate(pipe, clip, embeds=embeds, handles=trainer.parts.handle, decode=False, family="wan")
            latents = result.latents[0]
            scores.append(score_clip(latents, list(CLASSES[cls])))
            clips.append(latents)
        out.update(mean_scores(scores))
        out["_clip"] = clips[0]
        return out

    # -- 3. arms ----------------------------------------------------------------------------------------------------
    def untuned(self) -> None:
        """Arms (a) and (b): the base with dense or radial attention (LoRA attached, untrained: B = 0)."""
        t0 = time.perf_counter()
        for arm in ("a", "b"):
            o = self.overrides(
                f"{arm}",
                seed=0,
                steps=1,
                model_path=self.base_path,
                attention=ARMS[arm][1],
                data="train_long",
                heldout="heldout_long",
                validate_every=0,
            )
            trainer = self.trainer(o)
            for seed in range(self.seeds):
                result = self.evaluate(trainer, seed)
                self._add(arm, seed, result, cost=None)
            del trainer
        self.phases["untuned_s"] = time.perf_counter() - t0
        self.eval_s = self.phases["untuned_s"] / (2 * self.seeds)
        self.log(f"arms a, b evaluated in {self.phases['untuned_s']:.0f}s ({self.eval_s:.1f}s per evaluation)")

    def probe(self) -> None:
        """A few steps of each tuned arm: the step times that size the common step count."""
        t0 = time.perf_counter()
        steps = self.p["arms"]["probe_steps"]
        self.step_s, setup = {}, []
        for arm in ("c", "d", "e"):
            o = self.overrides(
                f"probe-{arm}",
                seed=0,
                steps=steps,
                model_path=self.base_path,
                attention=ARMS[arm][1],
                data="train_long",
                heldout="heldout_long",
                validate_every=0,
            )
            s0 = time.perf_counter()
            trainer = self.trainer(o)
            setup.append(time.perf_counter() - s0)
            trainer.fit()
            times = [m["step_time_s"] for m in _metrics(trainer.out)]
            self.step_s[arm] = statistics.median(times[len(times) // 2 :])
            del trainer
        self.setup_s = max(setup)
        self.phases["probe_s"] = time.perf_counter() - t0
        self.log(
            f"probe: step {', '.join(f'{a} {t * 1000:.0f}ms' for a, t in self.step_s.items())}; "
            f"setup {self.setup_s:.1f}s"
        )

    def plan_steps(self) -> int:
        a = self.p["arms"]
        # Per run besides its steps: setup, the final evaluation, the held-out validations, export and checkpoint.
        per_round_fixed = 3 * (self.setup_s + self.eval_s + a["validations"] * self.heldout_s + 2.0)
        usable = self.left() - self.p["reserve_s"]
        seeds = self.seeds
        while True:
            steps = (usable - seeds * per_round_fixed) / (seeds * sum(self.step_s.values()))
            if steps >= a["min_steps"] or seeds <= a["min_seeds"]:
                break
            seeds -= 1
        self.seeds = seeds
        steps = int(min(max(steps, a["min_steps"]), a["max_steps"]))
        self.round_s = per_round_fixed + steps * sum(self.step_s.values())
        self.log(
            f"plan: {steps} steps per run, {seeds} seeds, ~{self.round_s:.0f}s per seed round, {self.left():.0f}s left"
        )
        return steps

    def tuned(self, steps: int) -> None:
        t0 = time.perf_counter()
        every = max(1, steps // self.p["arms"]["validations"])
        done = 0
        for seed in range(self.seeds):
            if seed >= self.p["arms"]["min_seeds"] and self.left() < self.round_s + self.p["reserve_s"]:
                self.log(f"stopping after {seed} seeds: {self.left():.0f}s left, a round takes ~{self.round_s:.0f}s")
                break
            for arm in ("c", "d", "e"):
                o = self.overrides(
                    f"{arm}-s{seed}",
                    seed=seed,
                    steps=steps,
                    model_path=self.base_path,
                    attention=ARMS[arm][1],
                    data="train_long",
                    heldout="heldout_long",
                    validate_every=every,
                )
                try:
                    trainer = self.trainer(o)
                    r0 = time.perf_counter()
                    trainer.fit()
                    wall = time.perf_counter() - r0
                except Exception as e:  # noqa: BLE001 - one failed run is recorded; the others still run
                    self.log(f"{arm} seed {seed} FAILED: {type(e).__name__}: {e}\n{traceback.format_exc()}")
                    self.record.setdefault("failed", []).append(f"{arm} seed {seed}: {type(e).__name__}: {e}")
                    trainer = None
                    continue
                cost = _cost(trainer.out)
                cost["fit_wall_s"] = wall
                curve = [(h["step"], h["val/loss"]) for h in trainer.validator.history if "val/loss" in h]
                result = self.evaluate(trainer, seed)
                result["curve"] = curve
                self._add(arm, seed, result, cost)
                self.save_partial()
                self.log(
                    f"{arm} seed {seed}: 4L loss {result['loss_long']:.4f}, track {result['track_rmse']:.2f}, "
                    f"step {cost['step_s'] * 1000:.0f}ms, {wall:.0f}s"
                )
                del trainer
            done = seed + 1
        self.seeds_done = done
        self.phases["tuned_s"] = time.perf_counter() - t0

    def _add(self, arm: str, seed: int, result: dict, cost: dict | None) -> None:
        entry = self.record["arms"].setdefault(
            arm, {"label": ARMS[arm][0], "attention": ARMS[arm][1], "tuned": ARMS[arm][2], "seeds": []}
        )
        clip = result.pop("_clip")
        if seed == 0:
            self.frames[arm] = clip
        entry["seeds"].append(seed)
        for k, v in result.items():
            entry.setdefault(k, []).append(v)
        if cost is not None:
            for k, v in cost.items():
                entry.setdefault(k, []).append(v)
        self.record["runs"].append(
            {"arm": arm, "seed": seed, **{k: v for k, v in result.items() if k != "curve"}, **(cost or {})}
        )

    def save_partial(self) -> None:
        """What is measured so far, as JSON in --out: something comes back even if the run is cut short."""
        data = {**self.record, "partial": True, "elapsed_s": time.perf_counter() - self.started}
        (self.out / "extension.json").write_text(json.dumps(data, indent=1, default=str))

    def trim_untuned(self) -> None:
        """The untuned arms keep the seeds that the tuned arms reached (the same seeds for every arm)."""
        for arm in ("a", "b"):
            entry = self.record["arms"].get(arm)
            if not entry:
                continue
            keep = [i for i, s in enumerate(entry["seeds"]) if s < self.seeds_done]
            for k, v in entry.items():
                if isinstance(v, list) and len(v) == len(entry["seeds"]) and k != "seeds":
                    entry[k] = [v[i] for i in keep]
            entry["seeds"] = [entry["seeds"][i] for i in keep]
        self.record["runs"] = [
            r for r in self.record["runs"] if r["arm"] not in ("a", "b") or r["seed"] < self.seeds_done
        ]

    def reference(self) -> None:
        """The scores of held-out 4L data clips (what a perfect model would get) and the scorer's own error."""
        from data import LatentDataset

        ds = LatentDataset(self.roots["heldout_long"], model="wan")
        truth = json.loads((self.roots["heldout_long"] / "tracks.json").read_text())["items"]
        scores, errors = [], []
        for i in range(len(ds)):
            item = ds[i]
            t = truth[item["meta"]["key"]]
            scores.append(score_clip(item["latents"], t["colours"]))
            errors.append(track_error(item["latents"], t["colours"], t["tracks"]))
            if i == 0:
                self.frames["data"] = item["latents"]
        self.record["data_reference"] = {**mean_scores(scores), "scorer_track_error": sum(errors) / len(errors)}

    def run(self) -> dict:
        self.frames: dict = {}
        shutil.rmtree(self.work / "runs", ignore_errors=True)  # a rerun must not append to old metrics
        self.data()
        self.geometry()
        self.reference()
        self.base()
        self.save_partial()
        self.untuned()
        self.save_partial()
        self.probe()
        steps = self.plan_steps()
        self.record["steps_per_run"] = steps
        self.tuned(steps)
        self.trim_untuned()
        self.record["seeds"] = self.seeds_done
        self.record["phases_s"] = self.phases
        self.record["total_s"] = time.perf_counter() - self.started
        self.record["budget_s"] = self.budget_s
        self.record["backend"] = self.backend
        self.record["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        return self.record


def _metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return [x for x in lines if "step_time_s" in x]  # training steps (validation lines hold val/* only)


def _cost(run: Path) -> dict:
    """Step time (median after two warm-up steps), training time (sum of step times), peak memory of a run."""
    m = _metrics(run)
    times = [x["step_time_s"] for x in m]
    steady = times[2:] or times
    return {
        "step_s": statistics.median(steady) if steady else math.nan,
        "train_s": sum(times),
        "peak_memory_gb": max((x.get("peak_memory_gb", 0.0) for x in m), default=math.nan),
        "attention_density": m[-1].get("block_density", 1.0) if m else math.nan,
    }


def set_value(preset: dict, item: str) -> None:
    """Apply one `KEY=VALUE` (dotted key, YAML value) to the preset; an unknown key is an error naming it."""
    key, sep, text = item.partition("=")
    if not sep:
        raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. arms.rank=128")
    node, parts = preset, key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise ValueError(f"--set {item!r}: no key {'.'.join(parts[: i + 1])!r} in {PRESETS.name}")
        if i < len(parts) - 1:
            node = node[part]
    node[parts[-1]] = yaml.safe_load(text)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="the record: md, json, PNGs, log (at most 5 files)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ext"), help="shards, models and runs")
    ap.add_argument("--budget-minutes", type=float, default=9.0, help="wall-clock for everything (the phases fit)")
    ap.add_argument("--smoke", action="store_true", help="toy sizes on the CPU (the test suite runs this)")
    ap.add_argument("--backend", default="auto", help="attention.backend of the sparse arms (auto, triton, ...)")
    ap.add_argument(
        "--no-log-file", action="store_true", help="print the log only (when stdout is captured; one file fewer)"
    )
    ap.add_argument("--seeds", type=int, default=None, help="seeds per tuned arm (default: the preset's)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset value (benchmarks/extension.yaml), e.g. --set arms.rank=128 --set dense_layers=2",
    )
    args = ap.parse_args(argv)
    if args.budget_minutes <= 0:
        ap.error(f"--budget-minutes={args.budget_minutes}: expected > 0")
    if args.seeds is not None and args.seeds < 1:
        ap.error(f"--seeds={args.seeds}: expected >= 1")
    preset = yaml.safe_load(PRESETS.read_text())["smoke" if args.smoke else "full"]
    for item in args.set:
        try:
            set_value(preset, item)
        except ValueError as e:
            ap.error(str(e))
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    log = Log(None if args.no_log_file else args.out / "extension.log")
    log(
        f"extension experiment: {'smoke' if args.smoke else 'full'}, budget {args.budget_minutes} min, "
        f"backend {args.backend}, work {args.work}, preset overrides {args.set or 'none'}"
    )
    exp = Experiment(preset, args.work, args.out, args.budget_minutes * 60, args.backend, args.seeds, log)
    try:
        record = exp.run()
    except BaseException:
        log(f"experiment FAILED:\n{traceback.format_exc()}")
        (args.out / "extension.json").write_text(json.dumps(exp.record, indent=1, default=str))  # what was measured
        raise
    from benchmarks.extension_record import write_record

    write_record(record, exp.frames, args.out, log)
    log(f"done in {record['total_s']:.0f}s; record in {args.out}")
    return record


if __name__ == "__main__":
    main()
