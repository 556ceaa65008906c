"""Pipelines for generation: load a local diffusers folder, tell its family, put radial attention in (LoRAs:
radial.generation.loras).

    pipe = load_pipeline("/models/Wan2.1-T2V-1.3B-Diffusers", text_encoder=False, dtype=torch.bfloat16)
    handles = apply_radial(pipe, RadialSettings(backend="triton", dense_layers=1, dense_timesteps=12))
    loras = load_loras(pipe, [LoraSpec("outputs/run/lora", 1.0), LoraSpec("style.safetensors", 0.6)])

Nothing here needs this repository's data/ or train/ packages (radial stays importable alone); tiny pipelines for
tests and the demo are built by `train.tiny_pipeline` (behind `python -m train.generate --tiny`).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from radial.errors import ConfigError, MissingPathError
from radial.families import pipeline_families
from radial.generation.settings import RadialSettings

#: diffusers pipeline class -> model family (Wan2.2 A14B: a WanPipeline with transformer_2; TI2V: 48 channels).
PIPELINE_FAMILIES = pipeline_families()
TEXT_COMPONENTS = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
#: written beside tiny / custom encoders by data.encoders (FamilyEncoders.save_pretrained): text length, template
TEXT_SETTINGS_FILE = "radial_text_settings.json"


def family_of_parts(pipeline_class: str, *, second_expert: bool, channels: int | None) -> str:
    """The family of a pipeline from its class, whether it holds a second expert transformer and its transformer's
    latent channels: among the families whose pipelines these are (radial.families), the one with experts where there
    are two, else one whose VAE has exactly these channels (Wan2.2 TI2V-5B's 48), else the family the class names."""
    from radial.models import available_adapters, get_adapter

    named = PIPELINE_FAMILIES[pipeline_class]
    kin = [
        a
        for a in map(get_adapter, available_adapters())
        if pipeline_class in (a.spec.pipeline_class, a.spec.image_pipeline_class) and bool(a.experts) == second_expert
    ]
    exact = [a.family for a in kin if a.geometry.latent_channels == channels]
    names = [a.family for a in kin]
    for candidates in (exact, names):
        if named in candidates:
            return named
        if candidates:
            return candidates[0]
    return named


def pipeline_family(pipe) -> str:
    """The model family of a pipeline instance (for the mask options and the sidecar)."""
    name = type(pipe).__name__
    if name not in PIPELINE_FAMILIES:
        raise ValueError(f"unsupported pipeline {name}; supported: {sorted(PIPELINE_FAMILIES)}")
    transformer = getattr(pipe, "transformer", None)
    config = {} if transformer is None else transformer.config
    return family_of_parts(
        name,
        second_expert=getattr(pipe, "transformer_2", None) is not None,
        channels=config.get("out_channels") or config.get("in_channels"),
    )


def image_pipeline_names() -> set[str]:
    """The pipeline classes that generate from a first frame (`image=`, the generator's --image): each family
    adapter's `image_pipeline_class_name`."""
    from radial.models import available_adapters, get_adapter

    return {get_adapter(f).image_pipeline_class_name for f in available_adapters()} - {None}


def apply_text_settings(pipe, settings: dict) -> None:
    """Non-default text settings of tiny / custom encoders onto a pipeline that reads them from attributes
    (HunyuanVideo-1.5's; the family adapter's `apply_text_settings`); other pipelines take them as call arguments."""
    from radial.models import get_adapter

    get_adapter(pipeline_family(pipe)).apply_text_settings(pipe, settings)


def read_text_settings(root: str | Path | None) -> dict:
    """Non-default text settings saved beside a pipeline's encoders ({} when the folder has none)."""
    if root is None:
        return {}
    path = Path(root) / TEXT_SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def resolve_prompt_template(pipe, template: dict | None) -> dict | None:
    """A HunyuanVideo prompt template with a concrete `crop_start` (the template tokens before the caption).

    diffusers derives a missing crop_start from the template padded to the tokenizer's max length, which crops
    every caption token with tokenizers that pad (tiny / custom ones). The common prefix of two fillings is what
    data.encoders uses when it writes the embeddings, so prompts and stored embeddings agree.
    """
    if template is None or template.get("crop_start") is not None:
        return template
    tokenizer = getattr(pipe, "tokenizer", None)
    if tokenizer is None:
        return template
    a = tokenizer(template["template"].format("a")).input_ids
    b = tokenizer(template["template"].format("b")).input_ids
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return {**template, "crop_start": n}


def check_pipeline_folder(path: str | Path) -> Path:
    """A local diffusers pipeline folder (model_index.json); errors say what is wrong before anything loads."""
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"--model {path}: no such folder (a local diffusers pipeline folder)")
    if not (root / "model_index.json").is_file():
        raise ValueError(
            f"--model {path}: no model_index.json; expected a diffusers pipeline folder (e.g. "
            "Wan2.1-T2V-1.3B-Diffusers) with transformer/, vae/, scheduler/ ..."
        )
    class_name = json.loads((root / "model_index.json").read_text()).get("_class_name")
    if class_name not in PIPELINE_FAMILIES:
        raise ValueError(f"--model {path}: {class_name} is not supported; supported: {sorted(PIPELINE_FAMILIES)}")
    return root


def load_pipeline(
    path: str | Path,
    *,
    text_encoder: bool = True,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device | None = None,
    transformer_path: str | Path | None = None,
    vae_dtype: torch.dtype | None = torch.float32,
    image: bool = False,
):
    """A diffusers pipeline from a local folder, without its text encoders when `text_encoder=False`.

    `transformer_path` swaps in another transformer folder (a fine-tuned or saved base transformer). The VAE stays
    in `vae_dtype` (fp32 by default, as the Wan and HunyuanVideo pipelines recommend). `image`: a WanPipeline folder
    (Wan2.2 TI2V-5B, A14B) loads as WanImageToVideoPipeline (TI2V's 48-channel model with expand_timesteps).
    """
    import diffusers

    root = check_pipeline_folder(path)
    index = json.loads((root / "model_index.json").read_text())
    overrides: dict[str, Any] = {}
    if not text_encoder:
        overrides.update({k: None for k in TEXT_COMPONENTS if k in index})
    if transformer_path is not None:
        check_local_folder(transformer_path, "--transformer", "a local diffusers transformer folder (config.json)")
        cls_name = index["transformer"][1]
        overrides["transformer"] = getattr(diffusers, cls_name).from_pretrained(
            str(transformer_path), torch_dtype=dtype
        )
    cls = diffusers.DiffusionPipeline
    if image and index.get("_class_name") == "WanPipeline":
        cls = diffusers.WanImageToVideoPipeline
        config = root / "transformer" / "config.json"
        if config.is_file() and json.loads(config.read_text()).get("in_channels") == 48:
            overrides["expand_timesteps"] = True
    with warnings.catch_warnings():  # diffusers >= 0.36 prefers dtype=; torch_dtype works on every supported version
        warnings.simplefilter("ignore", FutureWarning)
        pipe = cls.from_pretrained(str(root), torch_dtype=dtype, **overrides)
    if vae_dtype is not None and getattr(pipe, "vae", None) is not None:
        pipe.vae.to(vae_dtype)
    if device is not None:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    pipe._radial_source = str(root.resolve())  # for the sidecar
    return pipe


def apply_radial(pipe, settings: RadialSettings, family: str | None = None):
    """`radial.inject_pipeline` with `settings` (None when settings.enabled is False: stock attention; with a
    length extension on, dense attention through the injector, backend `dense`, so that the extension applies)."""
    if not settings.enabled and not settings.extends_length:
        return None
    import radial

    family = family or pipeline_family(pipe)
    attention = settings.attention()
    if not settings.enabled:
        attention = replace(attention, backend="dense", dense_layers=0, dense_timesteps=0)
    return radial.inject_pipeline(pipe, attention, family=family)


def looks_like_path(text: str | Path) -> bool:
    """Whether an option value is meant as a local path (absolute, ./, ../, ~, or existing), not a Hub repo id."""
    text = str(text)
    return Path(text).is_absolute() or text.startswith(("./", "../", "~", ".\\", "..\\")) or Path(text).exists()


def check_local_folder(path: str | Path, option: str, what: str) -> Path:
    """A local folder given by `option` (generation loads local folders only: no Hub lookup, no network)."""
    folder = Path(path).expanduser()
    if not folder.exists():
        kind = "no such folder" if looks_like_path(path) else "no such local folder (Hub repo ids are not looked up)"
        raise MissingPathError(f"{option} {path}: {kind}; expected {what}")
    if not folder.is_dir():
        raise ConfigError(f"{option} {path}: is a file; expected {what}")
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{option} {path}: no config.json; expected {what}")
    return folder


def check_first_frame(family: str | None, transformer_folder: str | Path | None, option: str) -> None:
    """Generation without --image: a transformer that takes a first frame (its config.json says) is a one-line
    ConfigError naming `option` (the folder it came from), before anything is loaded."""
    from radial.models import available_adapters, get_adapter

    if family not in available_adapters() or transformer_folder is None:
        return
    try:
        config = json.loads((Path(transformer_folder).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return  # the loader names what is missing
    if get_adapter(family).image_input(config) == "required":
        raise ConfigError(
            f"{option} {transformer_folder}: an image-to-video {family} transformer (in_channels "
            f"{config.get('in_channels')}); it generates from a first frame: give one with --image FILE"
        )


def family_of_folder(path: str | Path) -> str | None:
    """The model family of a local pipeline folder from its model_index.json (None when it cannot be told)."""
    try:
        index = json.loads((Path(path).expanduser() / "model_index.json").read_text())
    except (OSError, ValueError):
        return None
    if index.get("_class_name") not in PIPELINE_FAMILIES:
        return None
    config = transformer_config_of(path) or {}
    return family_of_parts(
        index["_class_name"],
        second_expert=(index.get("transformer_2") or [None])[0] is not None,
        channels=config.get("out_channels") or config.get("in_channels"),
    )


def transformer_config_of(model: str | Path, transformer: str | Path | None = None) -> dict | None:
    """The config.json of a pipeline folder's transformer (or of the `transformer` folder given instead); None when
    it cannot be read (the loader reports that)."""
    path = Path(transformer or Path(model) / "transformer").expanduser() / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def set_scheduler_shift(pipe, shift: float | None) -> None:
    """Override the flow shift of the pipeline's scheduler (FlowMatchEuler `shift`, UniPC `flow_shift`)."""
    if shift is None:
        return
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    sched = pipe.scheduler
    keys = [k for k in ("shift", "flow_shift") if k in sched.config]
    if not keys:
        raise ValueError(f"{type(sched).__name__} has no flow shift setting")
    pipe.scheduler = type(sched).from_config(sched.config, **{k: float(shift) for k in keys})
