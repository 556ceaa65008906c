"""What every family's encoders share: the VAE call, latent normalisation, text fields, identity, save/load."""

from __future__ import annotations

import hashlib
import html
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from data.latents import normalize_latents
from radial.families import FAMILIES, LatentGeometry, family_spec, geometry

PRETRAINED_KEY = "pretrained_path"  # the config key / CLI argument (--pretrained) that names a local diffusers folder
SETTINGS_FILE = "radial_text_settings.json"  # written by save_pretrained: text lengths / template of tiny encoders


@dataclass(frozen=True)
class TextField:
    """One text condition as the batch carries it.

    A sequence field (`max_len` set) is an embedding [L, dim] stored trimmed to its valid tokens and padded back to
    `max_len` with zeros by the dataset, which also builds its boolean mask under the batch key `mask`.
    A pooled field (`max_len` None) is a vector [dim].
    """

    name: str
    dim: int
    max_len: int | None = None
    mask: str | None = None

    @property
    def pooled(self) -> bool:
        return self.max_len is None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> TextField:
        return cls(name=str(data["name"]), dim=int(data["dim"]), max_len=data.get("max_len"), mask=data.get("mask"))


def prompt_clean(text: str) -> str:
    """Wan's caption cleaning (diffusers `prompt_clean`): ftfy when installed, html unescape, whitespace."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def config_digest(config) -> str:
    """A short stable digest of a diffusers / transformers config, ignoring bookkeeping keys."""
    data = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    skip = {"transformers_version", "torch_dtype", "dtype", "architectures", "name_or_path"}
    data = {k: v for k, v in data.items() if not k.startswith("_") and k not in skip}
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def weights_digest(module: torch.nn.Module) -> str:
    """Digest of all parameter values (used for tiny random-init models: resume must see the very same weights)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def tokenizer_digest(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        data = json.loads(backend.to_str())
        data.pop("truncation", None)  # call-time state, set by each tokenizer call
        data.pop("padding", None)
        blob = json.dumps(data, sort_keys=True)
    else:
        blob = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def require_folder(path: str | Path | None, family: str, subfolders: list[str]) -> Path:
    """Check a local diffusers folder before any heavy loading; errors name the config key and what is missing."""
    if path is None or str(path) == "":
        raise ValueError(
            f"{PRETRAINED_KEY} is not set: model {family} needs a local diffusers folder with "
            f"{', '.join(s + '/' for s in subfolders)} (or use the tiny random-init encoders for tests and the demo)"
        )
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{PRETRAINED_KEY}={path}: no such folder (model {family} needs a diffusers folder)")
    missing = [s for s in subfolders if not (root / s).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{PRETRAINED_KEY}={path}: missing subfolder(s) {', '.join(m + '/' for m in missing)}; a diffusers "
            f"{family} folder has {', '.join(s + '/' for s in subfolders)}"
        )
    return root


def tiny_vision_model(config_class, model_class, seed: int, dim: int, size: int, layers: int, **extra):
    """A tiny random-init vision tower (CLIP, SigLIP) of `layers` layers of 2 heads over 8-pixel patches of a `size`
    image, drawn from seed + 1 (the same in every process); `extra` goes to the config."""
    config = config_class(
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=2,
        image_size=size,
        patch_size=8,
        **extra,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        return model_class(config)


def default_text_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_components(
    root: Path, classes: dict[str, str], device: torch.device, vae_dtype: torch.dtype, text_dtype: torch.dtype | None
) -> list:
    """Each component (subfolder -> class name) of a diffusers folder, in that order: the VAEs from diffusers in
    `vae_dtype`, the others from transformers (models in `text_dtype`, default bf16 on CUDA, else fp32). The class
    the folder's model_index.json names wins over the given one (as DiffusionPipeline.from_pretrained loads it)."""
    import diffusers
    import transformers

    text_dtype = text_dtype or default_text_dtype(device)
    index_file = Path(root) / "model_index.json"
    index = json.loads(index_file.read_text()) if index_file.is_file() else {}
    out = []
    for sub, default in classes.items():
        named = index.get(sub)
        name = named[1] if isinstance(named, list) and len(named) == 2 and named[1] else default
        library = diffusers if sub.endswith("vae") else transformers  # vae/, audio_vae/ (MiniMax-H3)
        name = name if hasattr(library, name) else default
        if sub.endswith("vae"):
            out.append(getattr(library, name).from_pretrained(root, subfolder=sub, torch_dtype=vae_dtype))
        elif sub.startswith("tokenizer"):
            out.append(getattr(library, name).from_pretrained(root, subfolder=sub))
        else:
            out.append(getattr(library, name).from_pretrained(root, subfolder=sub, dtype=text_dtype))
    return out


def _vae_of(g: LatentGeometry) -> tuple[int, int, int]:
    """(latent channels, temporal, spatial compression): what a family's VAE must have."""
    return g.latent_channels, g.temporal_factor, g.spatial_factor


class FamilyEncoders:
    """The VAE and text encoder(s) of one family. Subclasses set `components`, `text_fields`, `latent_norm`."""

    #: subfolder name -> attribute name, in a diffusers folder (e.g. {"vae": "vae", "text_encoder": ...})
    components: tuple[str, ...] = ()
    #: the diffusers VAE class of the family (looked up in diffusers when a model is built)
    vae_class: str = ""

    def __init__(self, family: str, source: str, device: torch.device | str = "cpu"):
        self.family = family
        self.geometry = geometry(family)
        self.source = source
        self.device = torch.device(device)
        self.vae_tiling = False

    # ----- to be provided by each family -----
    vae: torch.nn.Module

    @property
    def text_fields(self) -> dict[str, TextField]:
        raise NotImplementedError

    @property
    def latent_norm(self) -> dict:
        raise NotImplementedError

    @property
    def image_fields(self) -> dict[str, list[int]]:
        """The image-to-video conditioning these encoders write (see WanEncoders); {} for text-to-video."""
        return {}

    @property
    def joint_fields(self) -> dict[str, list[int]]:
        """Latent streams denoised with the video that these encoders write per clip, name -> leading dims
        (FamilySpec.joint_latents; MiniMax-H3's audio_latents [2, C]); {} for none."""
        return {}

    def encode_joint(self, path: str | Path, start: float, frames: int, fps: float) -> tuple[dict, dict]:
        """The `joint_fields` tensors of the clip of `frames` at `fps` from `start` s of the file `path`, and notes
        for its record; families without joint streams have none to encode."""
        raise NotImplementedError(f"model {self.family} has no latent streams beside the video")

    def _encode_text(self, captions: list[str]) -> list[dict[str, torch.Tensor]]:
        raise NotImplementedError

    def _check_vae(self) -> None:
        raise NotImplementedError

    # ----- shared -----
    def _hold_image_encoder(self, image_encoder, processor, processor_name: str) -> None:
        """Keep an I2V pipeline's vision encoder (frozen, on this device) and its image processor as `processor_name`;
        both join the saved components."""
        self.image_encoder = image_encoder.eval().requires_grad_(False).to(self.device)
        setattr(self, processor_name, processor)
        self.components = (*type(self).components, "image_encoder", processor_name)

    def _check_channels(self, channels: int, temporal: int, spatial: int) -> None:
        g = self.geometry
        got, want = (channels, temporal, spatial), _vae_of(g)
        if got != want:
            # the families of the same encoder file that this VAE fits (Wan2.2 TI2V's 48-channel VAE: wan22_ti2v)
            module = family_spec(self.family).module
            fits = [n for n, s in FAMILIES.items() if s.module == module and _vae_of(s.geometry) == got]
            hint = f" (this VAE is model {' / '.join(fits)}'s)" if fits else ""
            raise ValueError(
                f"{PRETRAINED_KEY}={self.source}: vae/ has {channels} latent channels, {temporal}x temporal and "
                f"{spatial}x spatial compression; model {self.family} expects {want[0]} channels, {want[1]}x and "
                f"{want[2]}x{hint}"
            )

    def modules(self) -> dict[str, torch.nn.Module]:
        return {
            name: getattr(self, name) for name in self.components if isinstance(getattr(self, name), torch.nn.Module)
        }

    def to(self, device: torch.device | str) -> FamilyEncoders:
        self.device = torch.device(device)
        for module in self.modules().values():
            module.to(self.device)
        return self

    def enable_vae_tiling(self) -> None:
        """Spatial tiling for large resolutions (diffusers `enable_tiling`): less memory, same latent shape."""
        self.vae.enable_tiling()
        self.vae_tiling = True

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """[C, F, H, W] of the latents of a clip (pixel frames, height, width)."""
        g = self.geometry
        return (g.latent_channels, g.latent_frames(frames), height // g.spatial_factor, width // g.spatial_factor)

    @torch.no_grad()
    def encode_video(
        self, video: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Pixels [B, 3, F, H, W] in [-1, 1] -> normalized latents [B, C, f, h, w] (float32, on CPU).

        `sample` draws from the VAE posterior (with `generator`); the default takes its mode (the mean), as the
        diffusers video-to-video pipelines do.
        """
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"encode_video: expected pixels [B, 3, F, H, W], got {tuple(video.shape)}")
        b, _, f, h, w = video.shape
        step = self.geometry.spatial_factor
        if h % step or w % step:
            raise ValueError(f"encode_video: {self.family} needs height and width multiples of {step}, got {h}x{w}")
        expected = (b, *self.latent_shape(f, h, w))
        vae_dtype = next(self.vae.parameters()).dtype
        dist = self.vae.encode(video.to(self.device, vae_dtype)).latent_dist
        raw = dist.sample(generator) if sample else dist.mode()
        if tuple(raw.shape) != expected:
            raise RuntimeError(
                f"{self.family} VAE returned latents {tuple(raw.shape)} for pixels {tuple(video.shape)}; "
                f"expected {expected} from radial.families"
            )
        return normalize_latents(raw.float(), self.latent_norm, channel_dim=1).cpu()

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> list[dict[str, torch.Tensor]]:
        """Captions -> one dict per caption: sequence fields trimmed to their valid tokens [l, D], pooled [D].

        Tensors are float32 on CPU. The padding length and the mask are rebuilt by the dataset (`TextField`).
        """
        out = self._encode_text(list(captions))
        for item in out:
            for name, field in self.text_fields.items():
                t = item[name]
                want_ndim = 1 if field.pooled else 2
                if t.ndim != want_ndim or t.shape[-1] != field.dim or (not field.pooled and t.shape[0] > field.max_len):
                    raise RuntimeError(f"{self.family} text encoder gave {name} {tuple(t.shape)}; expected {field}")
                item[name] = t.float().cpu().contiguous()
        return out

    @staticmethod
    def _trim(embeds: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """Per row, the embeddings of the valid tokens; tokenizers pad on the right, so the mask is a prefix."""
        out = []
        for e, m in zip(embeds, mask.bool(), strict=True):
            n = int(m.sum())
            if not bool(m[:n].all()):
                raise RuntimeError("text attention mask is not a prefix: the tokenizer must pad on the right")
            out.append(e[:n])
        return out

    def identity(self) -> dict:
        """What produced the latents and embeddings: compared on resume and recorded in every shard."""
        ident = {"family": self.family, "source": self.source}
        for name in self.components:
            obj = getattr(self, name)
            if isinstance(obj, torch.nn.Module):
                entry = {"class": type(obj).__name__, "config": config_digest(obj.config)}
                if self.source.startswith("tiny"):
                    entry["weights"] = weights_digest(obj)
            elif hasattr(obj, "get_vocab"):
                entry = {"class": type(obj).__name__, "vocab": len(obj), "digest": tokenizer_digest(obj)}
            else:  # an image processor: its settings
                entry = {"class": type(obj).__name__, "config": config_digest(obj.to_dict())}
            ident[name] = entry
        return ident

    def text_settings(self) -> dict:
        """Text settings that differ from the diffusers pipeline defaults (saved beside the components)."""
        return {}

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the components in a diffusers folder layout (vae/, text_encoder/, tokenizer/, ...).

        Non-default text settings (the tiny encoders' shorter lengths and template) go to SETTINGS_FILE, which
        `from_pretrained` reads back when present; real diffusers folders don't have it and get the defaults.
        """
        root = Path(path)
        for name in self.components:
            getattr(self, name).save_pretrained(root / name)
        settings = self.text_settings()
        if settings:
            (root / SETTINGS_FILE).write_text(json.dumps(settings, indent=1))
        return root


def read_text_settings(root: Path) -> dict:
    path = Path(root) / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


class DualTextEncoders(FamilyEncoders):
    """A VAE and two text encoders with their tokenizers (HunyuanVideo, HunyuanVideo-1.5): held frozen in eval
    mode, the tokenizers padding on the right (so a text mask is a prefix, see `_trim`)."""

    components = ("vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")

    def __init__(self, family, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, source, device="cpu"):
        super().__init__(family, source, device)
        self.vae = vae.eval().requires_grad_(False)
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.text_encoder_2 = text_encoder_2.eval().requires_grad_(False)
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2
        self.tokenizer.padding_side = "right"
        self.tokenizer_2.padding_side = "right"
