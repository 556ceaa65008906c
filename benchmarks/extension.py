"""The length-extension experiment (the paper's Table 2 in miniature), end to end through the project's real paths.

    python benchmarks/extension.py --out $OUT --work /tmp/ext --seed 0             # one H100 / H200
    python benchmarks/extension.py --smoke --out /tmp/ext_out --work /tmp/ext      # the same pipeline on the CPU

1. Data (benchmarks/extension_data.py): latent clips with long-range structure (two objects of random identity that
   hide behind a wall for longer than a local window sees, a flash whose period is longer than that window), at L
   and 4L latent frames, train and held-out splits, ground truth in tracks.json.
2. Base: a WanTransformer3DModel trained from scratch at L in `train.mode=full`, in rounds; after each round its own
   samples at L are scored against the data (benchmarks/extension_score.py `base_check`), and so are its one-step
   clean-clip predictions of the held-out L clips at `eval.probe_sigma` (the denoising probe). The arms run from a
   base that passes either check: with passing samples every verdict stands on samples; with the probe alone the
   verdicts stand on held-out losses and probe scores at 4L (the record says which, and why no arm ran if neither).
3. Arms at 4L from that base, tuned ones with the same data, steps, LR schedule and seeds: (a) dense, (b) radial,
   (f) RIFLEx-style RoPE fix, (g) attention decay past the training window (all training-free); (c) dense LoRA,
   (d) radial LoRA, (e) LoRA under a temporal window of radial's density, (h) radial LoRA with the RIFLEx fix.
4. Metrics: held-out flow-matching loss at L and 4L over all tokens and over the content tokens (objects, wall,
   flashes), the same noise for every arm; the denoising probe at 4L (`dn_` scores); 4L samples (the same noise for every arm) scored for identity after
   re-appearance, tracks, flash rhythm and repetition; step time, peak memory, density.
5. Record (--out): extension.md, extension.json, extension_loss.png, extension_frames.png, extension_scores.png.

One `--seed` drives everything (data, base initialisation, arms, noise of the held-out loss, sampling), so the whole
experiment repeats with a seed it was never run with.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import shutil
import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import yaml  # noqa: E402

from benchmarks.extension_data import ClipGeometry, derive, write_split  # noqa: E402
from benchmarks.extension_measure import heldout_loss, run_cost, sample_scores  # noqa: E402
from benchmarks.extension_record import tier, tier_of  # noqa: E402
from benchmarks.extension_score import base_check, mean_scores, score_clip, track_error  # noqa: E402

PRESETS = Path(__file__).with_name("extension.yaml")
WEIGHTS = "diffusion_pytorch_model.safetensors"  # diffusers' file of a one-file model
# name: (label, attention kind, tuned, extra attention settings)
ARMS: dict[str, tuple[str, str, bool, tuple[str, ...]]] = {
    "a": ("base, dense", "dense", False, ()),
    "b": ("base + radial (training-free)", "radial", False, ()),
    "f": ("base + RIFLEx RoPE (training-free)", "dense", False, ("riflex",)),
    "g": ("base + decay past L (training-free)", "dense", False, ("decay",)),
    "c": ("dense LoRA", "dense", True, ()),
    "d": ("radial LoRA", "radial", True, ()),
    "e": ("window LoRA (radial's density)", "window", True, ()),
    "h": ("radial LoRA + RIFLEx", "radial", True, ("riflex",)),
}
UNTUNED = [a for a, v in ARMS.items() if not v[2]]
TUNED = [a for a, v in ARMS.items() if v[2]]


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
    """The phases of the experiment over one preset, a seed, a work folder and a time budget."""

    def __init__(
        self,
        preset: dict,
        work: Path,
        out: Path,
        budget_s: float,
        backend: str,
        seed: int,
        log,
        note: str = "",
        arms_anyway: bool = False,
        arms: list[str] | None = None,
        reuse: bool = False,
        base_dir: Path | None = None,
        continue_base: bool = False,
    ):
        self.p, self.work, self.out, self.log = preset, work, out, log
        self.arms_anyway = arms_anyway
        self.arms = arms or list(ARMS)
        self.reuse = reuse
        self.base_dir = base_dir
        self.continue_base = continue_base
        self.backend, self.seed = backend, seed
        self.started = time.perf_counter()
        self.deadline = self.started + budget_s
        self.budget_s = budget_s
        self.seeds = preset["arms"]["seeds"]
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.geom = ClipGeometry(
            preset["latent_size"],
            preset["latent_size"],
            preset["text_len"],
            preset["text_dim"],
            sigma=preset["clip"]["sigma"],
            occluder_width=preset["clip"]["occluder_width"],
            period=tuple(preset["clip"]["period"]),
        )
        self.roots: dict[str, Path] = {}
        self.truth: dict[str, dict] = {}
        self.phases: dict[str, float] = {}
        self.frames: dict[str, torch.Tensor] = {}
        self.record: dict = {"preset": preset, "seed": seed, "note": note, "arms": {}, "runs": []}

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    # -- 1. data ------------------------------------------------------------------------------------------------
    def data(self) -> None:
        t0 = time.perf_counter()
        p, c = self.p, self.p["clips"]
        splits = {  # name: (latent frames, count); held-out seeds are never used for training data
            "train_base": (p["frames_base"], c["train_base"]),
            "train_long": (p["frames_long"], c["train_long"]),
            "heldout_base": (p["frames_base"], c["heldout"]),
            "heldout_long": (p["frames_long"], c["heldout"]),
        }
        for name, (frames, count) in splits.items():
            root = self.work / "data" / name
            shutil.rmtree(root, ignore_errors=True)
            seed = derive(self.seed, "data", name)
            self.roots[name] = write_split(root, self.geom, frames, count, seed, name, device=self.device)
            self.truth[name] = json.loads((root / "tracks.json").read_text())["items"]
        self.phases["data_s"] = time.perf_counter() - t0
        self.log(
            f"data: {', '.join(f'{k} {v[1]} x {v[0]} frames' for k, v in splits.items())} "
            f"in {self.phases['data_s']:.1f}s"
        )

    # -- trainer plumbing ---------------------------------------------------------------------------------------
    def attention_overrides(self, kind: str, extras: tuple[str, ...]) -> list[str]:
        p = self.p
        if kind == "dense":
            o = ["attention=dense"]
        else:
            o = [
                "attention=radial",
                f"attention.backend={self.backend}",
                f"attention.dense_layers={p['dense_layers']}",
                f"attention.decay_factor={p['decay_factor']}",
            ]
            if kind == "window":
                o.append(f"attention.window_frames={self.record['geometry']['window_frames']}")
        o.append(f"attention.block_size={p['block_size']}")
        if extras:
            o.append(f"attention.train_frames={p['frames_base']}")
        if "riflex" in extras:
            o.append("attention.rope_extension=riflex")
        if "decay" in extras:
            o.append(f"attention.extrapolation_decay={p['extrapolation_decay']}")
        return o

    def overrides(
        self, run: str, *, seed: int, steps: int, model_path: Path, arm: str | None, validate_every: int
    ) -> list[str]:
        p, a = self.p, self.p["arms"]
        full = arm is None
        o = [
            "model=tiny_wan",
            "model.source=pretrained",
            f"model.path={model_path}",
            f"model.dtype={'float32' if full else p['model_dtype']}",
            f"model.flow_shift={p['flow_shift']}",
            f"output_dir={self.work / 'runs' / run}",
            f"seed={seed}",
            "data=latents",
            f"data.root={self.roots['train_base' if full else 'train_long']}",
            f"data.num_workers={p['num_workers']}",
            f"train.max_steps={steps}",
            f"train.mixed_precision={p['mixed_precision']}",
            "train.gradient_checkpointing=false",
            "train.export_comfy=false",
            "eval=default",
            "eval.hooks=[]",
            f"eval.validation_every={validate_every}",
            f"eval.heldout_root={self.roots['heldout_base' if full else 'heldout_long']}",
            f"eval.num_heldout={p['eval']['heldout']}",
            f"eval.timesteps=[{','.join(str(x) for x in p['eval']['timesteps'])}]",
            "eval.num_samples=0",
            "logging.trackers=[]",
            "logging.loss_curve=false",
        ]
        if full:
            b = p["base"]
            o += self.attention_overrides("dense", ())
            o += [
                "train.mode=full",
                f"data.batch_size={b['batch_size']}",
                f"optim.lr={b['lr']}",
                f"optim.warmup_steps={b['warmup']}",
                f"optim.scheduler={b['schedule']}",
                f"optim.schedule_steps={b['max_steps']}",  # one decay over the planned steps, checked in rounds
                f"train.ema_decay={b['ema_decay']}",
                f"train.checkpoint_every={b['round_steps']}",
                "train.keep_last=1",
            ]
        else:
            o += self.attention_overrides(ARMS[arm][1], ARMS[arm][3])
            o += [
                "optim.scheduler=constant_with_warmup",
                "train.checkpoint_every=0",
                "train.keep_last=1",
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

    # -- measurements of one model ------------------------------------------------------------------------------
    def evaluate(self, trainer, sample_seed: int) -> dict:
        """One arm at one seed: held-out losses at L and 4L, the denoising probe at 4L (`dn_` scores), scored 4L
        samples."""
        out = {}
        for name, split in (("base", "heldout_base"), ("long", "heldout_long")):
            r = heldout_loss(trainer, self.roots[split], self.truth[split], self.geom, self.p, self.seed)
            out[f"loss_{name}"], out[f"content_{name}"] = r["loss"], r["loss_content"]
            if name == "long":
                out.update({f"dn_{k}": v for k, v in r["probe"].items()})
                out["probes_long"] = r["probes"]  # the other noise levels, reported (not verdicts)
        count = self.p["eval"]["samples_per_seed"]
        scores, clip = sample_scores(
            trainer, self.p["frames_long"], count, f"long-{sample_seed}", self.geom, self.p, self.seed
        )
        out.update(mean_scores(scores))
        out["_clip"] = clip
        return out

    # -- 2. base model ------------------------------------------------------------------------------------------
    def reference(self) -> None:
        """The scores of held-out data clips at L and 4L (what a perfect model gets) and the scorer's own error."""
        from data import LatentDataset

        ref = {}
        for name, split in (("base", "heldout_base"), ("long", "heldout_long")):
            ds = LatentDataset(self.roots[split], model="wan")
            scores, errors = [], []
            for i in range(len(ds)):
                item = ds[i]
                truth = self.truth[split][item["meta"]["key"]]
                scores.append(score_clip(item["latents"], self.geom))
                errors.append(track_error(item["latents"], self.geom, truth))
                if i == 0 and name == "long":
                    self.frames["data"] = item["latents"]
            ref[name] = {**mean_scores(scores), "scorer_track_error": statistics.fmean(errors)}
        self.record["data_reference"] = ref
        self.log(
            f"data reference: L {_brief(ref['base'])}; 4L {_brief(ref['long'])}; "
            f"scorer track error {ref['long']['scorer_track_error']:.2f} px"
        )

    def base(self, start: Path | None = None, earlier: list[dict] | None = None) -> bool:
        """Full training at L in rounds until the base's own samples at L pass `base_check` (or steps / time end):
        from a seeded initialisation, or (`start`) from a kept base, a further stage after `earlier` ones."""
        from radial.models import get_adapter

        t0 = time.perf_counter()
        p, b = self.p, self.p["base"]
        init = start or self.work / "base_init"
        if start is None:
            model = get_adapter("wan").build_tiny(seed=derive(self.seed, "base-init"), **p["model"])
            self.record["model"] = {
                "class": type(model).__name__,
                "parameters": sum(x.numel() for x in model.parameters()),
                **p["model"],
            }
            model.save_pretrained(init)
            del model
        limit = t0 + b["budget_share"] * self.left()
        ref = self.record["data_reference"]["base"]
        checks, passed, step, cost = [], False, 0, {}
        self.log(
            f"base: {self.record['model']['parameters'] / 1e6:.2f}M parameters, full training at L in rounds"
            + (f", stage {len(earlier) + 1} from {start} (flow shift {p['flow_shift']})" if earlier else "")
        )
        while step < b["max_steps"] and time.perf_counter() < limit:
            target = min(step + b["round_steps"], b["max_steps"])
            o = self.overrides(
                "base",
                seed=derive(self.seed, "base", *([len(earlier)] if earlier else [])),  # a stage: its own data order
                steps=target,
                model_path=init,
                arm=None,
                validate_every=b["round_steps"],
            )
            if step:
                o.append("train.resume=latest")
            trainer = self.trainer(o)
            summary = trainer.fit()
            step = summary["step"]
            scores, clip = sample_scores(
                trainer, p["frames_base"], b["check_samples"], f"check-{step}", self.geom, p, self.seed
            )
            sample = mean_scores(scores)
            check = base_check(sample, ref, ref["scorer_track_error"])
            probe = self.probe(trainer)
            val = [h["val/loss"] for h in trainer.validator.history if "val/loss" in h]
            checks.append(
                {
                    "step": step,
                    "scores": sample,
                    "check": check,
                    **probe,
                    "val_loss": val[-1] if val else None,
                    "elapsed_s": time.perf_counter() - t0,
                }
            )
            self.frames["base_L"] = clip
            self.base_path = trainer.out / "transformer"
            self.record["base"] = {"steps": step, "passed": check["pass"], "checks": checks}
            self.save_partial()  # each check is kept, also when the run is cut short
            self.log(
                f"base check at step {step}: {_check_line(check)}; probe at L: {_check_line(probe['probe_check'])}"
            )
            cost = run_cost(trainer.out)
            del trainer
            if check["pass"]:
                passed = True
                break
        probe_passed = bool(checks and checks[-1]["probe_check"]["pass"])
        stage = {"steps": step, "flow_shift": p["flow_shift"], "settings": b, "passed": passed,
                 "probe_passed": probe_passed}  # fmt: skip
        stages = [*(earlier or []), stage]
        self.record["base"] = {
            "steps": sum(x["steps"] for x in stages),
            "passed": passed,
            "probe_passed": probe_passed,
            "tier": tier_of(passed, probe_passed),
            "checks": checks,
            "cost": cost,
            "curve": [(c["step"], c["val_loss"]) for c in checks],
            "stages": stages,
        }
        self.phases["base_s"] = time.perf_counter() - t0
        self.log(
            f"base: {step} steps, sample check {'passed' if passed else 'FAILED'}, probe check "
            f"{'passed' if probe_passed else 'FAILED'}, {self.phases['base_s']:.0f}s"
        )
        return tier(self.record) is not None

    def probe(self, trainer) -> dict:
        """The denoising probe of a base at L (its one-step predictions of the held-out L clips, scored) and its check
        against the data with the sample check's thresholds."""
        ref = self.record["data_reference"]["base"]
        r = heldout_loss(trainer, self.roots["heldout_base"], self.truth["heldout_base"], self.geom, self.p, self.seed)
        check = base_check(r["probe"], ref, ref["scorer_track_error"])
        return {"probe": r["probe"], "probe_check": check, "probes": r["probes"]}

    def data_fingerprint(self) -> str:
        """A hash of every split's ground truth: the same seed and preset on the same device kind give the same."""
        h = hashlib.sha256()
        for name in sorted(self.roots):
            h.update((self.roots[name] / "tracks.json").read_bytes())
        return h.hexdigest()[:16]

    def keep_base(self) -> None:
        """The base (its exported weights in bf16, what the arms load: 14 MB) and its record in --out/base, so that
        the arms can run from it in another session (--base)."""
        from safetensors.torch import load_file, save_file

        dst = self.out / "base"
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir(parents=True)
        shutil.copy(self.base_path / "config.json", dst / "config.json")
        weights = load_file(str(self.base_path / WEIGHTS))
        save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, str(dst / WEIGHTS))
        kept = {
            "seed": self.seed,
            "data": self.data_fingerprint(),
            "model": self.record["model"],
            "flow_shift": self.p["flow_shift"],
        }
        (dst / "base.json").write_text(json.dumps({**kept, "base": self.record["base"]}, indent=1, default=str))
        self.log(f"base kept in {dst} (bf16)")

    def use_base(self, folder: Path, train_more: bool = False) -> bool:
        """--base: a base kept by an earlier run of this seed and preset, checked again here on fresh sample noise
        (its own checks are in its record); the arms run only if both passed. `train_more` (--continue-base): a
        further training stage from it instead (the preset's base schedule, fresh optimizer), then its checks."""
        prior = json.loads((folder / "base.json").read_text())
        if prior["seed"] != self.seed or prior["data"] != self.data_fingerprint():
            raise SystemExit(
                f"error: --base {folder}: kept by seed {prior['seed']} on data {prior['data']}; this run is seed "
                f"{self.seed} on data {self.data_fingerprint()} (the same --seed, preset and device kind are needed)"
            )
        shift = prior.get("flow_shift", self.p["flow_shift"])
        if shift != self.p["flow_shift"] and not train_more:
            raise SystemExit(
                f"error: --base {folder} was trained at flow_shift={shift}, this run samples at "
                f"{self.p['flow_shift']}: --set flow_shift={shift}, or --continue-base to train it at the new shift"
            )
        self.record["model"] = prior["model"]
        if train_more:
            earlier = prior["base"].get("stages") or [
                {"steps": prior["base"]["steps"], "flow_shift": shift, "passed": prior["base"]["passed"]}
            ]
            return self.base(start=folder, earlier=earlier)
        self.base_path = self.work / "runs" / "base" / "transformer"
        self.base_path.mkdir(parents=True)
        for name in ("config.json", WEIGHTS):
            shutil.copy(folder / name, self.base_path / name)
        o = self.overrides("base-recheck", seed=derive(self.seed, "base"), steps=1, model_path=self.base_path,
                           arm="a", validate_every=0)  # fmt: skip
        trainer = self.trainer(o)
        ref = self.record["data_reference"]["base"]
        scores, clip = sample_scores(
            trainer, self.p["frames_base"], self.p["base"]["check_samples"], "recheck", self.geom, self.p, self.seed
        )
        probe = self.probe(trainer)
        del trainer
        check = base_check(mean_scores(scores), ref, ref["scorer_track_error"])
        self.frames["base_L"] = clip
        passed = bool(prior["base"]["passed"]) and check["pass"]
        # a base kept before the probe existed has no probe check of its own: this run's decides
        probe_passed = bool(prior["base"].get("probe_passed", True)) and probe["probe_check"]["pass"]
        self.record["base"] = {**prior["base"], "from": str(folder), "recheck": check, "passed": passed,
                               "probe_recheck": probe, "probe_passed": probe_passed,
                               "tier": tier_of(passed, probe_passed)}  # fmt: skip
        self.log(
            f"base from {folder}: trained {prior['base']['steps']} steps, its check "
            f"{'passed' if prior['base']['passed'] else 'FAILED'}; checked again here: {_check_line(check)}; "
            f"probe at L: {_check_line(probe['probe_check'])}"
        )
        return tier(self.record) is not None

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
            for k in range(1, p["frames_long"] // 2)
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
            f"geometry: {g['frames_long']} x {tpf} tokens at 4L, radial block density {g['radial_density']:.3f} "
            f"(sparse layers), window +-{k} frames block density {g['window_density']:.3f}"
        )

    # -- 3. arms ----------------------------------------------------------------------------------------------------
    def untuned(self) -> None:
        """The training-free arms: the base with each attention setting (LoRA attached, untrained: B = 0)."""
        t0 = time.perf_counter()
        for arm in [a for a in UNTUNED if a in self.arms]:
            try:
                o = self.overrides(
                    arm,
                    seed=derive(self.seed, "arm", arm),
                    steps=1,
                    model_path=self.base_path,
                    arm=arm,
                    validate_every=0,
                )
                trainer = self.trainer(o)
                for k in range(self.seeds):
                    self._add(arm, k, self.evaluate(trainer, k), cost=None)
                del trainer
            except Exception as e:  # noqa: BLE001 - a failed arm is recorded; the others still run
                self._failed(arm, 0, e)
        self.phases["untuned_s"] = time.perf_counter() - t0
        self.log(f"training-free arms evaluated in {self.phases['untuned_s']:.0f}s")

    def tuned(self) -> None:
        t0 = time.perf_counter()
        a = self.p["arms"]
        steps = a["steps"]
        every = max(1, steps // a["validations"])
        done, round_s = 0, 0.0
        for k in range(self.seeds):
            if k and self.left() < round_s + self.p["reserve_s"]:
                self.log(f"stopping after {k} seeds: {self.left():.0f}s left, a round takes ~{round_s:.0f}s")
                break
            r0 = time.perf_counter()
            for arm in [a for a in TUNED if a in self.arms]:
                o = self.overrides(
                    f"{arm}-s{k}",
                    seed=derive(self.seed, "arm", arm, k),
                    steps=steps,
                    model_path=self.base_path,
                    arm=arm,
                    validate_every=every,
                )
                try:
                    trainer = self.trainer(o)
                    w0 = time.perf_counter()
                    trainer.fit()
                    wall = time.perf_counter() - w0
                    cost = run_cost(trainer.out)
                    cost["fit_wall_s"] = wall
                    curve = [(h["step"], h["val/loss"]) for h in trainer.validator.history if "val/loss" in h]
                    result = self.evaluate(trainer, k)
                except Exception as e:  # noqa: BLE001 - one failed run is recorded; the others still run
                    self._failed(arm, k, e)
                    continue
                finally:
                    trainer = None
                result["curve"] = curve
                self._add(arm, k, result, cost)
                self.save_partial()
                self.log(
                    f"{arm} seed {k}: 4L loss {result['loss_long']:.4f} (content {result['content_long']:.4f}), "
                    f"{_brief(result)}, step {cost['step_s'] * 1000:.0f}ms, {wall:.0f}s"
                )
            done = k + 1
            round_s = time.perf_counter() - r0
        self.seeds_done = done
        self.phases["tuned_s"] = time.perf_counter() - t0

    def _failed(self, arm: str, k: int, e: BaseException) -> None:
        self.log(f"{arm} seed {k} FAILED: {type(e).__name__}: {e}\n{traceback.format_exc()}")
        self.record.setdefault("failed", []).append(f"{arm} seed {k}: {type(e).__name__}: {e}")

    def _add(self, arm: str, k: int, result: dict, cost: dict | None) -> None:
        label, kind, tuned, extras = ARMS[arm]
        entry = self.record["arms"].setdefault(
            arm, {"label": label, "attention": kind, "tuned": tuned, "extras": list(extras), "seeds": []}
        )
        clip = result.pop("_clip")
        if k == 0:
            self.frames[arm] = clip
        entry["seeds"].append(k)
        for key, v in {**result, **(cost or {})}.items():
            entry.setdefault(key, []).append(v)
        self.record["runs"].append(
            {"arm": arm, "seed": k, **{x: v for x, v in result.items() if x != "curve"}, **(cost or {})}
        )

    def save_partial(self) -> None:
        """What is measured so far, as JSON in --out: something comes back even if the run is cut short."""
        data = {**self.record, "partial": True, "elapsed_s": time.perf_counter() - self.started}
        (self.out / "extension.json").write_text(json.dumps(data, indent=1, default=str))

    def trim_untuned(self) -> None:
        """The training-free arms keep the sample seeds that the tuned arms reached (the same seeds for every arm)."""
        for arm in UNTUNED:
            entry = self.record["arms"].get(arm)
            if not entry:
                continue
            keep = [i for i, s in enumerate(entry["seeds"]) if s < self.seeds_done]
            for key, v in entry.items():
                if isinstance(v, list) and len(v) == len(entry["seeds"]) and key != "seeds":
                    entry[key] = [v[i] for i in keep]
            entry["seeds"] = [entry["seeds"][i] for i in keep]
        self.record["runs"] = [r for r in self.record["runs"] if r["arm"] in TUNED or r["seed"] < self.seeds_done]

    def restore(self) -> bool:
        """--reuse: the data, base and measured arms of an earlier run with this --work and --out; more arms follow."""
        prior = json.loads((self.out / "extension.json").read_text())
        if prior.get("partial") or prior.get("seed") != self.seed:
            raise SystemExit(f"error: --reuse needs a finished record of seed {self.seed} in {self.out}/extension.json")
        for name in ("train_base", "train_long", "heldout_base", "heldout_long"):
            self.roots[name] = self.work / "data" / name
            self.truth[name] = json.loads((self.roots[name] / "tracks.json").read_text())["items"]
        for key in ("geometry", "data_reference", "model", "base", "arms", "runs", "failed"):
            if key in prior:
                self.record[key] = prior[key]
        self.record["failed"] = [f for f in self.record.get("failed", []) if f.split()[0] not in self.arms]
        for arm in self.arms:
            self.record["arms"].pop(arm, None)
        self.record["runs"] = [r for r in self.record["runs"] if r["arm"] not in self.arms]
        self.phases = prior.get("phases_s", {})
        frames = self.work / "frames.pt"
        if frames.is_file():
            self.frames.update(torch.load(frames))
        self.base_path = self.work / "runs" / "base" / "transformer"
        self.log(f"reusing data, base and arms {sorted(self.record['arms'])} of {self.out}; now arms {self.arms}")
        return tier(self.record) is not None

    def run(self) -> dict:
        if self.reuse:
            passed = self.restore()
            for arm in self.arms:
                shutil.rmtree(self.work / "runs" / arm, ignore_errors=True)
                for k in range(self.seeds):
                    shutil.rmtree(self.work / "runs" / f"{arm}-s{k}", ignore_errors=True)
        else:
            shutil.rmtree(self.work / "runs", ignore_errors=True)  # a rerun must not append to old metrics
            self.data()
            self.geometry()
            self.reference()
            self.save_partial()
            if self.base_dir is not None:
                passed = self.use_base(self.base_dir, train_more=self.continue_base)
            else:
                passed = self.base()
            if self.base_dir is None or self.continue_base:
                self.keep_base()
            self.save_partial()
        self.seeds_done = 0
        if passed or self.arms_anyway:
            if not passed:
                self.log("the base passed neither check; --arms-anyway: the arms run, and no verdict is valid")
                self.record["arms_anyway"] = True
            elif tier(self.record) == "probe":
                self.log("the base passed its probe check only: verdicts from losses and probe scores, not samples")
            self.untuned()
            self.save_partial()
            self.tuned()
            if not any(a in TUNED for a in self.arms):  # training-free arms only: their sample seeds all count
                self.seeds_done = self.seeds
            self.trim_untuned()
            torch.save(self.frames, self.work / "frames.pt")
        else:
            self.log("the base passed neither check: no arm runs (the record says why)")
        self.record["seeds"] = self.seeds_done
        self.record["phases_s"] = self.phases
        self.record["total_s"] = time.perf_counter() - self.started
        self.record["budget_s"] = self.budget_s
        self.record["backend"] = self.backend
        self.record["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        self.record["versions"] = _versions()
        return self.record


def _check_line(check: dict) -> str:
    return f"{'PASS' if check['pass'] else 'fail'} " + ", ".join(
        f"{k} {v['value']:.3f} ({v['op']} {v['limit']:.3f})" for k, v in check["checks"].items()
    )


def _brief(scores: dict) -> str:
    keys = ("late_identity", "objects_q4", "track_rmse", "flash_regularity", "near_dup")
    return ", ".join(f"{k} {scores[k]:.3f}" for k in keys if k in scores)


def _versions() -> dict:
    import diffusers
    import peft

    out = {"torch": torch.__version__, "diffusers": diffusers.__version__, "peft": peft.__version__}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        pass
    try:
        from importlib.metadata import version

        out["flash_attn_4"] = version("flash-attn-4")
    except Exception:  # noqa: BLE001 - not installed
        pass
    return out


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
    ap.add_argument("--out", type=Path, required=True, help="the record: md, json, PNGs, log")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ext"), help="shards, models and runs")
    ap.add_argument("--seed", type=int, default=0, help="drives data, base init, arms, held-out noise and sampling")
    ap.add_argument("--budget-minutes", type=float, default=20.0, help="wall-clock guard (seeds stop when it ends)")
    ap.add_argument("--smoke", action="store_true", help="toy sizes on the CPU (the test suite runs this)")
    ap.add_argument("--backend", default="auto", help="attention.backend of the sparse arms (auto, triton, ...)")
    ap.add_argument("--no-log-file", action="store_true", help="print the log only (when stdout is captured)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per arm (default: the preset's)")
    ap.add_argument("--note", default="", help="a line kept in the record (e.g. 'shared the GPU with seed 1')")
    ap.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=None, help="run only these arms")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="keep the data, base and arms of the finished run in --work / --out and run --arms into that record",
    )
    ap.add_argument(
        "--base",
        type=Path,
        default=None,
        help="a base kept by an earlier run of this --seed (its --out/base): checked again, then the arms run from it",
    )
    ap.add_argument(
        "--continue-base",
        action="store_true",
        help="with --base: train it further (the preset's base schedule and settings, e.g. another flow_shift), check, "
        "keep it in --out/base, then the arms if it passes",
    )
    ap.add_argument(
        "--arms-anyway",
        action="store_true",
        help="run the arms even from a base that failed its check (pipeline tests, timing pilots; no valid verdict)",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset value (benchmarks/extension.yaml), e.g. --set arms.rank=64 --set dense_layers=2",
    )
    args = ap.parse_args(argv)
    if args.continue_base and args.base is None:
        ap.error("--continue-base needs --base DIR (the kept base to train further)")
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
    if args.seeds is not None:
        preset["arms"]["seeds"] = args.seeds
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    log = Log(None if args.no_log_file else args.out / "extension.log")
    log(
        f"extension experiment: {'smoke' if args.smoke else 'full'}, seed {args.seed}, budget {args.budget_minutes} "
        f"min, backend {args.backend}, work {args.work}, preset overrides {args.set or 'none'}"
    )
    exp = Experiment(
        preset,
        args.work,
        args.out,
        args.budget_minutes * 60,
        args.backend,
        args.seed,
        log,
        note=args.note,
        arms_anyway=args.arms_anyway,
        arms=args.arms,
        reuse=args.reuse,
        base_dir=args.base,
        continue_base=args.continue_base,
    )
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
