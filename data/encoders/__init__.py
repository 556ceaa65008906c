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
  h3            AutoencoderKLMiniMaxH3 + AutoencoderKLMiniMaxH3Audio + Qwen3VLForConditionalGeneration
                vae/ audio_vae/ text_encoder/ tokenizer/ processor/ (audio_latents of each clip's sound track)
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from data.encoders.base import PRETRAINED_KEY, FamilyEncoders, TextField
from radial.families import FAMILIES, family_spec

TINY_TEXT_DIM = family_spec("wan").tiny_text_dim  # the tiny text hidden size (FamilySpec.tiny_text_dim)
TINY_POOLED_DIM = family_spec("hunyuan").tiny_pooled_dim  # HunyuanVideo's tiny CLIP size (FamilySpec.tiny_pooled_dim)


def encoder_class(family: str) -> type[FamilyEncoders]:
    """The FamilyEncoders class of a family: FamilySpec.encoder_class in data/encoders/<FamilySpec.module>.py."""
    spec = family_spec(family)  # unknown names fail here with the list of known ones
    module = importlib.import_module(f"data.encoders.{spec.module}")
    return getattr(module, spec.encoder_class)


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
        if family_spec(family).tiny_pooled_dim is not None:  # a pooled-text encoder (HunyuanVideo's CLIP)
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


#: families whose image-to-video models prepare can condition (FamilySpec.i2v_latents set: Wan2.1 I2V with CLIP
#: states, Wan2.2 A14B I2V without; Wan2.2 TI2V-5B: a clean first latent frame; HunyuanVideo-1.5 I2V: SigLIP states)
IMAGE_FAMILIES = tuple(name for name, spec in FAMILIES.items() if spec.i2v_latents is not None)


def check_image_family(family: str, image: bool) -> None:
    if image and family not in IMAGE_FAMILIES:
        raise ValueError(
            f"image conditioning (--i2v) is supported for models {', '.join(IMAGE_FAMILIES)}, not {family!r}"
        )


def _tiny_image_encoder(family: str, seed: int):
    """The tiny image encoder and processor of a family's I2V model ((None, None) where it has none): the
    `tiny_image_encoder` of its encoder module."""
    spec = family_spec(family)
    if spec.image_encoder is None:
        return None, None
    return importlib.import_module(f"data.encoders.{spec.module}").tiny_image_encoder(seed)


def _pretrained_image_encoder(family: str, path, device):
    """The I2V folder's image encoder (fp32, as the pipelines' examples) and its processor; (None, None) for
    families whose I2V model has none."""
    import transformers

    image = family_spec(family).image_encoder
    if image is None:
        return None, None
    root = Path(path).expanduser()
    missing = [s for s in (image.encoder_dir, image.processor_dir) if not (root / s).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{PRETRAINED_KEY}={path}: missing {', '.join(m + '/' for m in missing)}; image conditioning of model "
            f"{family} needs {image.layout}"
        )
    encoder = getattr(transformers, image.encoder_class).from_pretrained(
        root, subfolder=image.encoder_dir, dtype=torch.float32
    )
    processor = getattr(transformers, image.processor_class).from_pretrained(root, subfolder=image.processor_dir)
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
