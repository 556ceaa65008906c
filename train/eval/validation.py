"""Validation during training and the end-of-training evaluation hooks.

Every `eval.validation_every` steps:
- held-out flow-matching loss at fixed noise levels (`eval.timesteps`, sigma in (0, 1); those inside the trained
  `train.timestep_range`): the same items, the same noise (seeded per item and level) every time, so the curve
  moves only with the model; needs no weights beyond the model. Items: the first `eval.num_heldout` of `eval.heldout_root` (prepared latents; set it for a truly
  held-out set), else of the training data.
- sample videos from fixed prompts and seeds through the family's diffusers pipeline built around the training
  transformer (LoRA and radial attention as trained; `dense_timesteps` honoured), decoded by the VAE of the data
  (the tiny seeded one for tiny data, else `eval.vae_path` or `model.path`). Prompts: `eval.prompt_embeds` files
  (radial.generation.embeds), else `eval.prompts` (encoded once with the family's text encoders), else the
  captions and stored embeddings of the first `eval.num_samples` held-out items (HunyuanVideo-1.5: Qwen and ByT5
  states). Guidance (`eval.guidance_scale` > 1) against the empty prompt uses the states that data.prepare stores
  beside the data; another `eval.negative_prompt` is encoded. Image-to-video models (and Wan2.2
  TI2V-5B given images) sample through the family's image-to-video pipeline from first frames: `eval.images` (one
  per prompt), else, for held-out items, the first frame of their stored image conditioning, decoded by the VAE
  (written to <output_dir>/validation/first_frames/); the sidecar's `image` / `image_source` say which.
Logged through `accelerator.log` (val/loss, val/loss_t0.50 ...; TensorBoard gets a frame strip per sample, wandb
the mp4); files under <output_dir>/validation/step-XXXXXX/ (mp4 + JSON sidecar per sample, metrics.json).

Wiring in train/trainer.py (two calls, both on every rank):

    from train.eval.validation import Validator
    self.validator = Validator(self.view)        # end of Trainer.__init__ (self.view: train.run_parts.RunView)
    ...
    metrics = self.validator.maybe_run(step + 1) # in fit(), after self.state.step = step + 1: None or a dict
    ...
    summary["eval"] = self.validator.run_end_hooks()   # end of fit(), after the export, before end_training()

`run_end_hooks` samples a final set (or scores `eval.hooks_videos`), runs `eval.hooks` on the main process
(train.eval.hooks; a hook never raises), logs eval/<hook>/<metric> and writes <output_dir>/eval/hooks.json.
Config keys are read with defaults (`getattr`), so a schema without them still works.

One idea per file: this one schedules and records; train.eval.heldout measures the held-out loss,
train.eval.samples generates the samples, train.eval.sample_pipeline loads what their pipeline needs (assembled by
radial.generation.assemble, as the tiny pipelines are), train.eval.media logs them to the trackers.
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from train.config import EvalConfig, check_eval, check_eval_images
from train.console import say
from train.eval.heldout import HeldOutLoss
from train.eval.media import log_media
from train.eval.sample_pipeline import SamplePipeline
from train.eval.samples import SampleVideos
from train.records import append_metrics, json_safe
from train.run_parts import RunView


def eval_settings(ev: Any) -> EvalConfig:
    """The validator's settings: `cfg.eval` as a checked EvalConfig (a DictConfig, mapping or object with its keys
    is merged over the schema, so missing keys take their defaults)."""
    from omegaconf import DictConfig, OmegaConf

    if ev is None:
        ev = EvalConfig()
    elif not isinstance(ev, EvalConfig):
        if not isinstance(ev, (dict, DictConfig)):
            ev = vars(ev)  # an object with the keys as attributes
        ev = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EvalConfig), ev))
    check_eval(ev)
    return ev


class Validator(HeldOutLoss, SampleVideos, SamplePipeline):
    """Held-out loss and sample videos every `eval.validation_every` steps; evaluation hooks at the end."""

    def __init__(self, run: RunView) -> None:
        self.view = run
        self.settings = eval_settings(getattr(run.cfg, "eval", None))
        self.family = run.cfg.model.family
        check_eval_images(self.settings, self.family, run.parts.transformer.config)
        self._heldout = None
        self._pipe = None
        self._embeds = None
        self._enc = None
        self._use_images: bool | None = None
        self._images: list | None = None
        self.history: list[dict] = []

    # -- the two calls ----------------------------------------------------------------------------------------------
    def maybe_run(self, step: int) -> dict | None:
        """Validate at multiples of eval.validation_every (0 = never); call on every rank. Returns the metrics."""
        every = self.settings.validation_every
        if every <= 0 or step <= 0 or step % every:
            return None
        return self.run(step)

    def run(self, step: int, *, samples: bool = True, folder: Path | None = None) -> dict:
        acc = self.view.accelerator
        started = time.perf_counter()
        items = len(self.heldout_indices())
        if not self.history and not self.settings.heldout_root:
            say(acc, f"note: the held-out loss is measured on the first {items} training items (eval.heldout_root is "
                "not set): it shows fit, not generalisation; point eval.heldout_root at latents not trained on")  # fmt: skip
        sampled = self._num_prompts() if samples else 0
        say(acc, f"step {step}: validating ({items} held-out items" + (f", {sampled} samples)" if sampled else ")"))
        metrics: dict[str, Any] = {}
        folder = folder or self.view.out / "validation" / f"step-{step:06d}"
        records: list[dict] = []
        with self.view.averaged_weights():  # train.ema_decay: the average is what is validated (one swap)
            metrics.update(self.heldout_loss())
            if samples and self._num_prompts() > 0:
                try:
                    records = self.sample(folder, step)
                    metrics["val/sample_seconds"] = sum(r["time"]["wall_s"] for r in records)
                except Exception as e:  # noqa: BLE001 - sampling trouble is reported, training goes on
                    metrics["val/sample_failed"] = 1.0
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()  # an OOM while sampling must not leave training short of memory
                    acc.print(f"validation sampling failed at step {step}: {type(e).__name__}: {e}")
                    if acc.is_main_process:
                        traceback.print_exc()
        metrics["val/seconds"] = time.perf_counter() - started
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        acc.log(numbers, step=step)
        if "val/loss" in metrics:
            say(
                acc,
                f"step {step}: held-out loss {metrics['val/loss']:.4f} ({items} items, {metrics['val/seconds']:.1f} s)",
            )
        if acc.is_main_process:
            append_metrics(self.view.out, step, numbers)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "metrics.json").write_text(json.dumps(json_safe({"step": step, **metrics}), indent=1))
            log_media(acc, records, step)
        self.history.append({"step": step, **metrics})
        acc.wait_for_everyone()
        return metrics

    def run_end_hooks(self) -> dict:
        """eval.hooks on the final samples (or eval.hooks_videos); call on every rank; never raises."""
        from train.eval.hooks import flat_scores, run_hooks

        s = self.settings
        if not s.hooks:
            return {}
        acc = self.view.accelerator
        step = self.view.state.step
        videos = Path(s.hooks_videos).expanduser() if s.hooks_videos else self.view.out / "validation" / "final"
        if not s.hooks_videos and self._num_prompts() > 0:
            try:
                self.sample(videos, step)
            except Exception as e:  # noqa: BLE001 - the hooks then report that there are no videos
                acc.print(f"final validation samples failed: {type(e).__name__}: {e}")
        results: dict = {}
        if acc.is_main_process:
            results = run_hooks(s.hooks, videos, self.view.out / "eval", s.hook_settings, log=acc.print)
            scores = flat_scores(results)
            if scores:
                try:
                    acc.log(scores, step=step)
                except Exception as e:  # noqa: BLE001
                    acc.print(f"logging hook scores failed: {e}")
        acc.wait_for_everyone()
        return results
