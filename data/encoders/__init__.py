"""VAE and text encoder(s) of each model family, tiny random-init or from a local diffusers folder.

    enc = load_encoders("wan", tiny=True)                       # tests, CPU demo: real classes, tiny configs
    enc = load_encoders("hunyuan", pretrained_path="/models/HunyuanVideo", device="cuda")
    latents = enc.encode_video(pixels)      # [B, 3, F, H, W] in [-1, 1] -> normalized [B, C, f, h, w]
    texts = enc.encode_text(["a red ball"])  # [{"prompt_embeds": [l, D], ...}]  (trimmed to valid tokens)

Family -> classes (diffusers folder subfolders):
  wan, wan22    AutoencoderKLWan (16 ch) + UMT5EncoderModel             vae/ text_encoder/ tokenizer/
  wan22_ti2v    AutoencoderKLWan (48 ch, 16x spatial) + UMT5EncoderModel  vae/ text_encoder/ tokenizer/
  hunyuan       AutoencoderKLHunyuanVideo + LlamaModel + CLIPTextModel   + text_encoder_2/ tokenizer_2/
  mochi         AutoencoderKLMochi + T5EncoderModel                      vae/ text_encoder/ tokenizer/
  hunyuan15     AutoencoderKLHunyuanVideo15 + Qwen2_5_VLTextModel + T5EncoderModel (ByT5)  + text_encoder_2/ tokenizer_2/
                (image-to-video: + SiglipVisionModel image_encoder/ feature_extractor/)
"""

from __future__ import annotations

from pathlib import Path

import torch

from data.encoders.base import PRETRAINED_KEY, FamilyEncoders, TextField
from radial.geometry import geometry

TINY_TEXT_DIM = 32  # text hidden size of every tiny text encoder (= text_dim of radial.models' tiny transformers)
TINY_POOLED_DIM = 16  # hidden size of HunyuanVideo's tiny CLIP (= pooled_projection_dim of radial.models' tiny one)


def encoder_class(family: str) -> type[FamilyEncoders]:
    geometry(family)  # unknown names fail here with the list of known ones
    if family.startswith("wan"):
        from data.encoders.wan import WanEncoders

        return WanEncoders
    if family == "hunyuan":
        from data.encoders.hunyuan import HunyuanEncoders

        return HunyuanEncoders
    if family == "mochi":
        from data.encoders.mochi import MochiEncoders

        return MochiEncoders
    if family == "hunyuan15":
        from data.encoders.hunyuan15 import Hunyuan15Encoders

        return Hunyuan15Encoders
    raise ValueError(f"model family {family!r} has a geometry but no encoders in data/encoders")


def check_pretrained(family: str, pretrained_path: str | Path | None) -> Path:
    """Validate a local diffusers folder for `family` without loading anything (fails fast, before heavy work)."""
    from data.encoders.base import require_folder

    return require_folder(pretrained_path, family, list(encoder_class(family).components))


def load_encoders(
    family: str,
    pretrained_path: str | Path | None = None,
    *,
    tiny: bool = False,
    device: str | torch.device = "cpu",
    vae_dtype: torch.dtype = torch.float32,
    text_dtype: torch.dtype | None = None,
    seed: int = 0,
    tiny_text_dim: int = TINY_TEXT_DIM,
    tiny_pooled_dim: int = TINY_POOLED_DIM,
    image: bool = False,
) -> FamilyEncoders:
    """The family's encoders: tiny random-init (seeded, identical in every process) or from `pretrained_path`.

    `image`: also the image conditioning of the family's image-to-video models (Wan2.1 I2V: a CLIP vision encoder;
    HunyuanVideo-1.5 I2V: a SigLIP one).
    """
    cls = encoder_class(family)
    check_image_family(family, image)
    if tiny:
        if pretrained_path:
            raise ValueError(f"give either tiny=True or {PRETRAINED_KEY}, not both")
        kwargs = {"text_dim": tiny_text_dim}
        if family == "hunyuan":
            kwargs["pooled_dim"] = tiny_pooled_dim
        enc = cls.tiny(family, seed=seed, device=device, **kwargs)
    else:
        enc = cls.from_pretrained(family, pretrained_path, device=device, vae_dtype=vae_dtype, text_dtype=text_dtype)
    if image:
        enc.with_image_encoder(*load_image_encoder(family, pretrained_path, tiny=tiny, seed=seed, device=enc.device))
    return enc


def load_image_encoder(
    family: str, pretrained_path: str | Path | None = None, *, tiny: bool = False, seed: int = 0, device="cpu"
) -> tuple:
    """The image encoder and processor of the family's image-to-video pipeline, tiny (seeded as load_encoders) or
    from `pretrained_path`: Wan2.1 I2V's CLIP vision model, HunyuanVideo-1.5 I2V's SigLIP one; (None, None) where
    the latents alone condition."""
    check_image_family(family, True)
    if tiny:
        return _tiny_image_encoder(family, seed)
    return _pretrained_image_encoder(family, pretrained_path, device)


#: families whose image-to-video models prepare can condition (Wan2.1 I2V with CLIP states, Wan2.2 A14B I2V without;
#: Wan2.2 TI2V-5B: a clean first latent frame; HunyuanVideo-1.5 I2V: SigLIP states and the first frame's latent)
IMAGE_FAMILIES = ("wan", "wan22", "wan22_ti2v", "hunyuan15")


def check_image_family(family: str, image: bool) -> None:
    if image and family not in IMAGE_FAMILIES:
        raise ValueError(
            f"image conditioning (--i2v) is supported for models {', '.join(IMAGE_FAMILIES)}, not {family!r}"
        )


def _tiny_image_encoder(family: str, seed: int):
    """The tiny image encoder and processor of a family's I2V model ((None, None) where it has none)."""
    if family == "hunyuan15":
        from data.encoders.hunyuan15 import tiny_image_encoder

        return tiny_image_encoder(seed)
    if family == "wan":
        from data.encoders.wan import tiny_image_encoder

        return tiny_image_encoder(seed)
    return None, None


#: family -> the I2V folder's (encoder class, its subfolder, processor class, its subfolder, the layout to name);
#: Wan2.2 A14B I2V and TI2V have no image encoder
PRETRAINED_IMAGE_ENCODERS = {
    "wan": (
        "CLIPVisionModel", "image_encoder", "CLIPImageProcessor", "image_processor",
        "a Wan2.1 I2V diffusers folder (Wan-AI/Wan2.1-I2V-14B-480P-Diffusers layout)",
    ),
    "hunyuan15": (
        "SiglipVisionModel", "image_encoder", "SiglipImageProcessor", "feature_extractor",
        "a HunyuanVideo-1.5 I2V diffusers folder (HunyuanVideo15ImageToVideoPipeline layout)",
    ),
}  # fmt: skip


def _pretrained_image_encoder(family: str, path, device):
    """The I2V folder's image encoder (fp32, as the pipelines' examples) and its processor; (None, None) for
    families whose I2V model has none."""
    import transformers

    if family not in PRETRAINED_IMAGE_ENCODERS:
        return None, None
    encoder_cls, encoder_dir, processor_cls, processor_dir, layout = PRETRAINED_IMAGE_ENCODERS[family]
    root = Path(path).expanduser()
    missing = [s for s in (encoder_dir, processor_dir) if not (root / s).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{PRETRAINED_KEY}={path}: missing {', '.join(m + '/' for m in missing)}; image conditioning of model "
            f"{family} needs {layout}"
        )
    encoder = getattr(transformers, encoder_cls).from_pretrained(root, subfolder=encoder_dir, dtype=torch.float32)
    processor = getattr(transformers, processor_cls).from_pretrained(root, subfolder=processor_dir)
    return encoder.to(device), processor


__all__ = [
    "PRETRAINED_KEY",
    "TINY_POOLED_DIM",
    "TINY_TEXT_DIM",
    "FamilyEncoders",
    "TextField",
    "check_image_family",
    "check_pretrained",
    "encoder_class",
    "load_encoders",
    "load_image_encoder",
]
