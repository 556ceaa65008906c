"""The sample videos of validation: prompts (stored embeddings, encoded prompts or held-out captions), first frames
for image-to-video models, and one video per prompt and seed through the family pipeline."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

#: the text states of an item that a sample is generated from (those its family has)
TEXT_KEYS = (
    "prompt_embeds",
    "prompt_attention_mask",
    "pooled_prompt_embeds",
    "prompt_embeds_2",
    "prompt_attention_mask_2",
)


class SampleVideos:
    """The Validator's samples (a mixin: it reads `view`, `settings`, `family`, `heldout_*` and `pipeline()`)."""

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
