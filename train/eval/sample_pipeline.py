"""The family pipeline that validation samples through: the training transformer with the VAEs of the data (tiny
seeded ones for tiny data), the scheduler and guider of `model.path` where it has them, no text encoders; assembled
by radial.generation.assemble."""

from __future__ import annotations

import json
from pathlib import Path


class SamplePipeline:
    """The Validator's pipeline (a mixin: it reads `view`, `settings`, `family` and the samples' encoders)."""

    def pipeline(self):
        """The family pipeline around the training transformer (no text encoders), built once: its image-to-video
        pipeline (with the image encoder it needs) when the samples take first frames."""
        if self._pipe is not None:
            return self._pipe
        import diffusers

        from data.encoders import encoder_class, load_image_encoder
        from radial.generation.assemble import assemble_pipeline, pipeline_name, pipeline_parameters
        from radial.models import get_adapter

        cfg, s = self.view.cfg, self.settings
        adapter = get_adapter(self.family)
        image = self.uses_images()
        name = pipeline_name(adapter, image)
        takes = pipeline_parameters(name)
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
            kind = json.loads((sched_root / "scheduler_config.json").read_text())["_class_name"]
            scheduler = getattr(diffusers, kind).from_pretrained(str(sched_root.parent), subfolder="scheduler")
        else:
            scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=s.sample_shift or cfg.model.flow_shift)
        guider = None  # HunyuanVideo-1.5: the guider of model.path where it has one
        guider_root = sched_root.parent / "guider" if sched_root is not None else None
        if "guider" in takes and guider_root is not None and guider_root.is_dir():
            guider = diffusers.ClassifierFreeGuidance.from_pretrained(str(guider_root.parent), subfolder="guider")
        parts = {"vae": vae, **self._other_vaes(source, device)}  # every VAE it decodes with (H3's audio_vae)
        if image and "image_encoder" in takes:
            seed = self._tiny_seed()
            encoder, processor = load_image_encoder(
                self.family, source, tiny=seed is not None, seed=seed or 0, device=device
            )
            parts["image_encoder"] = None if encoder is None else encoder.to(device).eval()
            parts.update({k: processor for k in ("image_processor", "feature_extractor") if k in takes})
        pipe = assemble_pipeline(
            adapter,
            name,
            self._transformer(),
            scheduler,
            parts,
            guidance_scale=s.guidance_scale,
            text_encoders=False,
            guider=guider,
        )
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
