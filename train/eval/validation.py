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
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from train.config import EvalConfig, check_eval, check_eval_images
from train.console import say
from train.flow import flow_loss, noisy_latents
from train.records import append_metrics, json_safe
from train.run_parts import RunView
from train.step import conditions_of, input_dtype

#: the text states of an item that a sample is generated from (those its family has)
TEXT_KEYS = (
    "prompt_embeds",
    "prompt_attention_mask",
    "pooled_prompt_embeds",
    "prompt_embeds_2",
    "prompt_attention_mask_2",
)


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


def _seeded(*parts) -> torch.Generator:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


class Validator:
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
        with self.view.averaged_weights():  # train.ema_decay: the average is what is validated
            metrics.update(self.heldout_loss())
        folder = folder or self.view.out / "validation" / f"step-{step:06d}"
        records: list[dict] = []
        if samples and self._num_prompts() > 0:
            try:
                with self.view.averaged_weights():
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
            self._log_media(records, step)
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

    # -- held-out loss ----------------------------------------------------------------------------------------------
    def heldout_dataset(self):
        if self._heldout is None:
            s = self.settings
            if s.heldout_root:
                from data import Expect, LatentDataset

                transformer = self._transformer()
                expect = Expect.from_transformer_config(self.family, transformer.config)
                self._heldout = LatentDataset(Path(s.heldout_root).expanduser(), model=self.family, expect=expect)
            else:
                self._heldout = self.view.dataset
        return self._heldout

    def heldout_indices(self) -> list[int]:
        return list(range(min(self.settings.num_heldout, len(self.heldout_dataset()))))

    def heldout_loss(self) -> dict[str, float]:
        """Mean flow-matching loss of the held-out items at each fixed noise level; identical on every rank."""
        from data import collate

        s, t = self.settings, self.view
        acc = t.accelerator
        indices = self.heldout_indices()
        # A run trained on part of the schedule (a Wan2.2 expert, train.timestep_range) is measured on that part.
        lo, hi = t.sigma_range
        # (position in eval.timesteps, sigma): the noise is seeded by the position, whichever levels are kept.
        levels = [(j, float(x)) for j, x in enumerate(s.timesteps) if lo <= float(x) <= hi]
        if not indices or not levels:
            return {}
        ds = self.heldout_dataset()
        world = acc.num_processes
        # Items are shared out by data-parallel rank: the ranks of a sequence-parallel group run the same item
        # together, and only the group's first rank counts it (its loss is the full item's on every group rank).
        rank, ranks = t.dp_rank, t.dp_world
        counts_here = t.sp is None or t.sp.rank == 0
        per_rank = math.ceil(len(indices) / ranks)  # every rank runs as many forwards (collectives stay in step)
        mine = [indices[(rank * per_rank + k) % len(indices)] for k in range(per_rank)]
        real = [counts_here and rank * per_rank + k < len(indices) for k in range(per_rank)]
        sums = torch.zeros(len(levels) + 1, dtype=torch.float64, device=acc.device)
        model = t.model()
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model_dtype = input_dtype(model)
                for index, counts in zip(mine, real, strict=True):
                    item = ds[index]
                    batch = collate([item])
                    x0 = batch["latents"].to(acc.device, torch.float32)
                    conds = conditions_of(batch, acc.device, model_dtype)
                    key = item["meta"]["key"]
                    for j, (position, sigma) in enumerate(levels):
                        gen = _seeded(t.cfg.seed, "heldout", key, position)
                        noise = torch.randn(x0.shape, generator=gen).to(acc.device)
                        sig = torch.full((x0.shape[0],), sigma, device=acc.device)
                        x_t, target = noisy_latents(x0, noise, sig)
                        with acc.autocast():
                            pred = t.parts.adapter.predict(model, x_t.to(model_dtype), sig * 1000, conds)
                        if counts:
                            mask = conds.get("first_frame_mask")  # as the training loss: clean latents excluded
                            sums[j] += flow_loss(pred, target, torch.ones_like(sig), mask).double()
                    if counts:
                        sums[-1] += 1
        finally:
            model.train(was_training)
        total = acc.reduce(sums, reduction="sum") if world > 1 else sums
        n = max(float(total[-1]), 1.0)
        out = {f"val/loss_t{sigma:.2f}": float(total[j]) / n for j, (_, sigma) in enumerate(levels)}
        out["val/loss"] = sum(out.values()) / len(levels)
        out["val/heldout_items"] = float(total[-1])
        return out

    # -- samples ----------------------------------------------------------------------------------------------------
    def _num_prompts(self) -> int:
        s = self.settings
        if s.prompt_embeds or s.prompts:
            return 1
        return min(s.num_samples, len(self.heldout_indices()))

    def _transformer(self):
        return self.view.unwrapped()

    def _text_len(self) -> int:
        from radial.models import get_adapter

        fixed = get_adapter(self.family).fixed_text_len(self.view.parts.transformer.config)
        if fixed:
            return fixed  # Wan2.1 I2V splits its context at the last 512 tokens: text after the image states
        fields = getattr(self.heldout_dataset(), "text_fields", {})
        seq = fields.get("prompt_embeds")
        return seq.max_len if seq is not None and seq.max_len else get_adapter(self.family).text_len

    def _tiny_seed(self) -> int | None:
        """The seed of the tiny encoders the data was prepared with (None: pretrained encoders)."""
        source = self._data_encoder_source()
        if not source.startswith("tiny"):
            return None
        return int(source.split("seed=")[1]) if "seed=" in source else self.view.cfg.seed

    def _encoders(self):
        if self._enc is None:
            from data.encoders import load_encoders

            seed, device = self._tiny_seed(), self.view.accelerator.device
            if seed is not None:
                self._enc = load_encoders(self.family, tiny=True, seed=seed, device=device)
            else:
                self._enc = load_encoders(self.family, self._data_encoder_source(), device=device)
        return self._enc

    def _data_encoder_source(self) -> str:
        header = getattr(self.heldout_dataset(), "header", None) or {}
        source = (header.get("encoders") or {}).get("source")
        if source:
            return str(source)
        cfg = self.view.cfg
        return f"tiny:seed={cfg.seed}" if cfg.model.source == "tiny" else str(cfg.model.path)

    def prompt_embeds(self) -> list:
        """The fixed validation prompts as radial.generation.PromptEmbeds (built once)."""
        if self._embeds is not None:
            return self._embeds
        from radial.generation import PromptEmbeds, load_prompt_embeds
        from radial.generation.embeds import _fit_length

        s = self.settings
        text_len = self._text_len()
        embeds: list = []
        if s.prompt_embeds:
            for path in s.prompt_embeds:
                embeds += load_prompt_embeds(Path(path).expanduser(), text_len=text_len, family=self.family)
        elif s.prompts:
            enc = self._encoders()
            for caption, fields in zip(s.prompts, enc.encode_text(list(s.prompts)), strict=True):
                embeds.append(self._embeds_from_fields(fields, caption, text_len))
        else:
            ds = self.heldout_dataset()
            for index in self.heldout_indices()[: s.num_samples]:
                item = ds[index]
                tensors = {k: item[k][None] for k in TEXT_KEYS if k in item}
                for k in tensors:
                    if "mask" in k:
                        tensors[k] = tensors[k].to(torch.int64)
                tensors["prompt_embeds"], tensors["prompt_attention_mask"] = _fit_length(
                    tensors["prompt_embeds"], tensors["prompt_attention_mask"], text_len, "prompt_embeds", "held-out"
                )
                embeds.append(
                    PromptEmbeds(tensors, prompt=item["meta"]["caption"], source=f"heldout:{item['meta']['key']}")
                )
        if s.guidance_scale > 1 and not all(e.has_negative for e in embeds):
            neg = self._negative_embeds(text_len)
            for e in embeds:
                if not e.has_negative:
                    e.tensors.update({f"negative_{k}": v for k, v in neg.tensors.items()})
                    e.negative_prompt = s.negative_prompt
        self._embeds = embeds
        return embeds

    def _negative_embeds(self, text_len: int):
        """eval.negative_prompt's states for classifier-free guidance: for the empty prompt (the default) those that
        data.prepare stored beside the held-out data (no text encoder loads), else encoded by the family's encoders."""
        s = self.settings
        stored = getattr(self.heldout_dataset(), "stored_empty_prompt", lambda: None)
        states = stored() if s.negative_prompt == "" else None
        if states is not None:
            return self._embeds_from_fields(states, "", text_len, "stored empty prompt")
        return self._embeds_from_fields(
            self._encoders().encode_text([s.negative_prompt])[0], s.negative_prompt, text_len
        )

    def _embeds_from_fields(self, fields: dict, caption: str, text_len: int, source: str = "eval.prompts"):
        """PromptEmbeds of one prompt's unpadded text states (every field: Qwen and ByT5 for HunyuanVideo-1.5):
        prompt_embeds padded to `text_len`, other sequences to their dataset field's length, each with its mask."""
        from radial.generation import PromptEmbeds
        from radial.generation.embeds import _fit_length

        text_fields = getattr(self.heldout_dataset(), "text_fields", {})
        tensors = {}
        for name, states in fields.items():
            t = states.float().cpu()[None]
            if name.startswith("pooled"):
                tensors[name] = t
                continue
            field = text_fields.get(name)
            length = text_len if name == "prompt_embeds" else (field.max_len if field else t.shape[1])
            mask_name = field.mask if field else "prompt_attention_mask" + name.removeprefix("prompt_embeds")
            mask = torch.ones(t.shape[:2], dtype=torch.int64)
            tensors[name], tensors[mask_name] = _fit_length(t, mask, length, name, source)
        return PromptEmbeds(tensors, prompt=caption, source=source)

    def uses_images(self) -> bool:
        """Whether the samples generate from first frames: those of eval.images, else (samples of held-out items of
        an image-to-video model) those in the items' image conditioning. An image-to-video model whose held-out items
        carry no first frame this family can decode raises (sampling reports it and is skipped; the loss runs)."""
        if self._use_images is None:
            from radial.models import get_adapter

            s, adapter = self.settings, get_adapter(self.family)
            takes = adapter.image_input(self.view.parts.transformer.config)
            if takes == "none" or s.images or s.prompts or s.prompt_embeds:
                use = bool(s.images)  # check_eval_images refused the other combinations
            else:
                indices = self.heldout_indices()[: s.num_samples]
                ds = self.heldout_dataset()
                use = bool(indices) and adapter.first_frame_latent(ds[indices[0]]) is not None
                if not use and takes == "required":
                    raise ValueError(
                        f"validation samples of this {self.family} image-to-video model need first frames: the "
                        f"held-out items carry none that radial can decode for {self.family}; give eval.prompts "
                        "with eval.images (the held-out loss runs)"
                    )
            self._use_images = use
        return self._use_images

    def first_frames(self) -> list[tuple[str, str] | None]:
        """Per validation prompt, the first frame it samples from as (image file, where it came from), or None."""
        if self._images is None:
            s, n = self.settings, len(self.prompt_embeds())
            if not self.uses_images():
                self._images = [None] * n
            elif s.images:
                self._images = [(str(Path(p).expanduser()), f"eval.images[{i}]") for i, p in enumerate(s.images)]
            else:  # the held-out items of prompt_embeds(), in its order
                self._images = [self._heldout_first_frame(i) for i in self.heldout_indices()[: s.num_samples]]
        return self._images

    def _heldout_first_frame(self, index: int) -> tuple[str, str]:
        """Decode a held-out item's first-frame latent with the sampling VAE into a PNG (written by every rank, each
        atomically: they all read it back)."""
        from PIL import Image

        from data.latents import denormalize_latents
        from radial.models import get_adapter

        ds = self.heldout_dataset()
        item = ds[index]
        latent = get_adapter(self.family).first_frame_latent(item)
        vae = self.pipeline().vae
        raw = denormalize_latents(latent[None].float(), ds.latent_norm, channel_dim=1)
        with torch.no_grad():
            pixels = vae.decode(raw.to(vae.device, vae.dtype), return_dict=False)[0][0, :, 0]  # [3, H, W] in [-1, 1]
        frame = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        key = str(item["meta"]["key"])
        folder = self.view.out / "validation" / "first_frames"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / ("".join(c if c.isalnum() or c in "-_." else "_" for c in key) + ".png")
        tmp = path.with_name(f"{path.stem}.{self.view.accelerator.process_index}.part.png")
        Image.fromarray(frame).save(tmp)
        tmp.replace(path)
        return str(path), f"heldout:{key}"

    def pipeline(self):
        """The family pipeline around the training transformer (no text encoders), built once: its image-to-video
        pipeline (with the image encoder it needs) when the samples take first frames."""
        if self._pipe is not None:
            return self._pipe
        import inspect

        import diffusers

        from data.encoders import encoder_class, load_image_encoder
        from radial.generation.pipeline import TEXT_COMPONENTS
        from radial.models import get_adapter

        cfg, s = self.view.cfg, self.settings
        adapter = get_adapter(self.family)
        image = self.uses_images()
        pipeline_name = adapter.image_pipeline_class_name if image else adapter.pipeline_class_name
        if pipeline_name is None:
            raise ValueError(f"no image-to-video pipeline is known for {self.family} (image_pipeline_class_name)")
        device = self.view.accelerator.device
        source = self._data_encoder_source()
        if s.vae_path is None and source.startswith("tiny"):
            vae = self._encoders().vae
        else:
            root = Path(s.vae_path or source or cfg.model.path).expanduser()
            vae_cls = getattr(diffusers, encoder_class(self.family).vae_class)
            vae = vae_cls.from_pretrained(str(root), subfolder="vae" if (root / "vae").is_dir() else None)
        vae = vae.to(device).eval()
        sched_root = Path(str(cfg.model.path)).expanduser() / "scheduler" if cfg.model.path else None
        if sched_root is not None and (sched_root / "scheduler_config.json").is_file() and s.sample_shift is None:
            name = json.loads((sched_root / "scheduler_config.json").read_text())["_class_name"]
            scheduler = getattr(diffusers, name).from_pretrained(str(sched_root.parent), subfolder="scheduler")
        else:
            scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=s.sample_shift or cfg.model.flow_shift)
        cls = getattr(diffusers, pipeline_name)
        takes = inspect.signature(cls.__init__).parameters
        extra = {k: None for k in TEXT_COMPONENTS if k in takes}
        extra.update(adapter.pipeline_config)
        if "guider" in takes:  # HunyuanVideo-1.5: guidance is a component (radial.generation sets its scale per clip)
            guider_root = sched_root.parent / "guider" if sched_root is not None else None
            if guider_root is not None and guider_root.is_dir():
                extra["guider"] = diffusers.ClassifierFreeGuidance.from_pretrained(
                    str(guider_root.parent), subfolder="guider"
                )
            else:
                extra["guider"] = diffusers.ClassifierFreeGuidance(guidance_scale=s.guidance_scale)
        if image and "image_encoder" in takes:
            seed = self._tiny_seed()
            encoder, processor = load_image_encoder(
                self.family, source, tiny=seed is not None, seed=seed or 0, device=device
            )
            extra["image_encoder"] = None if encoder is None else encoder.to(device).eval()
            extra.update({k: processor for k in ("image_processor", "feature_extractor") if k in takes})
        parts = {"vae": vae, **self._other_vaes(source, device), **extra}  # every VAE it decodes with (H3's audio_vae)
        pipe = adapter.build_pipeline(pipeline_name, self._transformer(), scheduler, parts)
        pipe.set_progress_bar_config(disable=True)
        self._pipe = pipe
        return pipe

    def _other_vaes(self, source: str, device) -> dict:
        """The family's decoders besides the video VAE (MiniMax-H3's audio_vae): the tiny encoders' for tiny data,
        else from `eval.vae_path`, the data's encoder folder or `model.path` (classes: the encoder module's
        PRETRAINED_CLASSES)."""
        import importlib

        import diffusers

        from data.encoders import encoder_class

        cls = encoder_class(self.family)
        names = [n for n in cls.components if n.endswith("vae") and n != "vae"]
        if not names:
            return {}
        s = self.settings
        if s.vae_path is None and source.startswith("tiny"):
            return {n: getattr(self._encoders(), n).to(device).eval() for n in names}
        root = Path(s.vae_path or source or self.view.cfg.model.path).expanduser()
        classes = importlib.import_module(cls.__module__).PRETRAINED_CLASSES
        return {
            n: getattr(diffusers, classes[n]).from_pretrained(str(root), subfolder=n).to(device).eval() for n in names
        }

    def _clip(self, seed: int):
        from radial.families import geometry
        from radial.generation import ClipSpec

        s = self.settings
        first = self.heldout_dataset()[self.heldout_indices()[0]]["meta"] if self.heldout_indices() else {}
        g = geometry(self.family)
        return ClipSpec(
            frames=int(s.sample_frames or first.get("frames") or g.base_frames),
            height=int(s.sample_height or first.get("height") or g.base_height),
            width=int(s.sample_width or first.get("width") or g.base_width),
            num_inference_steps=int(s.num_inference_steps),
            guidance_scale=float(s.guidance_scale),
            seed=int(seed),
            fps=int(s.fps or first.get("fps") or g.fps),
            max_sequence_length=self._text_len(),
        )

    def sample(self, folder: Path, step: int) -> list[dict]:
        """One video per prompt and seed into `folder` (main process writes); returns the sidecars."""
        from radial.generation import build_sidecar, generate, save_result

        t = self.view
        acc = t.accelerator
        pipe = self.pipeline()
        handle = t.parts.handle
        model = t.model()
        was_training = model.training
        model.eval()
        previous_step = handle.state.step if handle is not None else None
        records = []
        try:
            for i, (embeds, image) in enumerate(zip(self.prompt_embeds(), self.first_frames(), strict=True)):
                for seed in self.settings.seeds:
                    clip = self._clip(seed)
                    clip.image = None if image is None else image[0]
                    with acc.autocast():
                        result = generate(pipe, clip, embeds=embeds, handles=handle, family=self.family)
                    sidecar = build_sidecar(result, pipeline="training transformer", step=step)
                    sidecar["image_source"] = None if image is None else image[1]
                    sidecar["radial"] = None if handle is None else asdict(handle.config)
                    name = f"sample_p{i}_s{seed}"
                    if acc.is_main_process:
                        sidecar["files"] = save_result(result, folder, name, sidecar)
                    sidecar["name"] = name
                    sidecar["_frames"] = result.frames
                    records.append(sidecar)
        finally:
            if handle is not None:
                handle.set_step(previous_step)
            model.train(was_training)
        return records

    def _log_media(self, records: list[dict], step: int) -> None:
        """Frame strips to TensorBoard, mp4 files to wandb (main process; failures are printed, not raised)."""
        from radial.generation import frame_strip

        acc = self.view.accelerator
        for tracker in getattr(acc, "trackers", []):
            for r in records:
                try:
                    if tracker.name == "tensorboard" and r.get("_frames") is not None:
                        strip = frame_strip(r["_frames"])
                        tracker.tracker.add_image(f"val/{r['name']}", strip, step, dataformats="HWC")
                    elif tracker.name == "wandb" and r.get("files", {}).get("video"):
                        import wandb

                        video = wandb.Video(r["files"]["video"], caption=r.get("prompt"), format="mp4")
                        tracker.tracker.log({f"val/{r['name']}": video}, step=step)
                except Exception as e:  # noqa: BLE001 - media logging must not stop training
                    acc.print(f"could not log {r['name']} to {tracker.name}: {type(e).__name__}: {e}")
        for r in records:
            r.pop("_frames", None)
