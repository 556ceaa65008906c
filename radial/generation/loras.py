"""LoRA files for generation: checked before anything loads (readable, of this family and base variant, the rank
their header claims), then loaded into a pipeline's transformer with their scales.

    loras = load_loras(pipe, [LoraSpec("outputs/run/lora", 1.0), LoraSpec("style.safetensors", 0.6)])
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from radial.attention_settings import recorded_settings
from radial.errors import LoraFileError
from radial.families import family_spec
from radial.generation.pipeline import pipeline_family
from radial.generation.settings import LoraSpec, RadialSettings

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def _lora_file(spec: LoraSpec) -> Path:
    p = Path(spec.path).expanduser()
    if p.is_dir():
        f = p / LORA_WEIGHT_NAME
        if not f.is_file():
            found = sorted(x.name for x in p.glob("*.safetensors"))
            raise FileNotFoundError(
                f"--lora {spec.path}: no {LORA_WEIGHT_NAME} in this folder"
                + (f" (it has {found}; name the file)" if found else "")
            )
        return f
    if not p.is_file():
        raise FileNotFoundError(f"--lora {spec.path}: no such file or folder")
    return p


def _same_family(a: str, b: str) -> bool:
    """Whether a LoRA of family `a` fits family `b`: the same family, or families of one adapter file (the Wan ones)."""
    if a == b:
        return True
    try:
        return family_spec(a).module == family_spec(b).module
    except ValueError:  # a family this version does not know
        return False


def check_lora_file(file: Path, option: str, family: str | None = None) -> dict:
    """Read a LoRA file's header before anything is loaded: a readable safetensors file, trained for `family` (our
    header), with the rank its header claims; returns our metadata ({} for other LoRAs)."""
    from safetensors import safe_open

    if file.suffix != ".safetensors":
        return {}
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
    except PermissionError as e:
        raise LoraFileError(f"{option}: {file}: permission denied ({e})") from None
    except Exception as e:  # safetensors raises its own error type for every malformed file
        raise LoraFileError(
            f"{option}: {file} is not a readable safetensors file, corrupt or truncated ({' '.join(str(e).split())})"
        ) from None
    try:
        info = json.loads(meta["radial_lora"]) if "radial_lora" in meta else {}
    except ValueError:
        info = {}
    base = (info.get("base_model") or {}).get("family")
    if family is not None and base is not None and not _same_family(base, family):
        raise LoraFileError(f"{option}: {file} was trained for family {base!r}, the pipeline is {family!r}")
    rank = info.get("rank")
    if rank is not None:
        down = {k: v[0] for k, v in shapes.items() if k.endswith(("lora_A.weight", "lora_down.weight")) and v}
        wrong = {k: r for k, r in down.items() if r != rank}
        if wrong:
            key, got = next(iter(wrong.items()))
            raise LoraFileError(
                f"{option}: {file}: its header says rank {rank}, but {len(wrong)} of {len(down)} down-projections "
                f"have another (e.g. {key}: rank {got}); the file was altered after export"
            )
    return info


def check_lora_base(info: dict, transformer, option: str, family: str) -> None:
    """The base a LoRA's header records against the transformer it goes into: another task variant (T2V / I2V /
    TI2V) is a LoraFileError; another config or other weights a one-line warning on stderr."""
    from radial.base_id import base_differences, base_identity, task_variant
    from radial.models import get_adapter

    recorded = info.get("base_model") or {}
    if not recorded:
        return
    adapter = get_adapter(family)
    config = transformer if isinstance(transformer, dict) else transformer.config
    check_lora_variant(recorded, task_variant(adapter, config), option)
    if isinstance(transformer, dict):
        return
    differs = base_differences(recorded, base_identity(adapter, transformer))
    if differs:
        source = recorded.get("path") or f"a {recorded.get('source', '?')} {recorded.get('family', '?')} model"
        print(
            f"warning: {option}: this base's {differs[0]} differs from the one the LoRA was trained on ({source}); "
            "give the transformer it was trained with (--transformer, e.g. OUTPUT_DIR/base_transformer)",
            file=sys.stderr,
        )


def check_lora_variant(recorded: dict, actual: str, option: str) -> None:
    """A LoRA trained for another task variant than the base's (e.g. an I2V LoRA onto a T2V model) is refused."""
    variant = recorded.get("variant")
    if variant and variant != actual:
        kinds = {"T2V": "text-to-video", "I2V": "image-to-video", "TI2V": "Wan2.2 TI2V-5B"}
        raise LoraFileError(
            f"{option}: trained on a {variant} base ({recorded.get('family', '?')}), but this transformer is {actual}; "
            f"give a {kinds.get(variant, variant)} model" + (" and --image FILE" if variant == "I2V" else "")
        )


def lora_metadata(path: Path) -> dict:
    """Our training metadata from a LoRA header ({} for other LoRAs); read without importing train/."""
    return check_lora_file(Path(path), "--lora")


def check_lora_specs(
    specs: Sequence[LoraSpec], family: str | None = None, transformer_config: dict | None = None
) -> None:
    """Every LoRA file exists and reads back (and fits `family` and the task variant of `transformer_config` when
    known), before any model is loaded."""
    for spec in specs:
        info = check_lora_file(_lora_file(spec), f"--lora {spec.path}", family)
        if family is not None and transformer_config is not None:
            check_lora_base(info, transformer_config, f"--lora {spec.path}", family)


def load_loras(pipe, specs: Sequence[LoraSpec], *, family: str | None = None, radial: RadialSettings | None = None):
    """Load each LoRA as a named adapter and activate them all with their scales; returns sidecar records.

    Diffusers converts known non-diffusers layouts itself (e.g. ComfyUI / original Wan keys). A LoRA trained with
    other radial settings (our metadata) gives a warning, not an error: inference settings may differ on purpose.
    A Wan2.2 A14B expert's LoRA (header `base_model.expert`) is loaded into that expert (transformer_2: the low-noise
    one); a LoRA without the header goes into `transformer`, as diffusers does.
    """
    if not specs:
        return []
    family = family or pipeline_family(pipe)
    names, scales, records = [], [], []
    for i, spec in enumerate(specs):
        file = _lora_file(spec)
        name = spec.adapter_name(i)
        if name in names:
            raise ValueError(f"two LoRAs are named {name!r}; give distinct names (PATH:SCALE:NAME)")
        info = check_lora_file(file, f"--lora {spec.path}", family)
        expert = (info.get("base_model") or {}).get("expert") or "transformer"
        if getattr(pipe, expert, None) is not None:
            check_lora_base(info, getattr(pipe, expert), f"--lora {spec.path}", family)
        trained = recorded_settings(info)
        if radial is not None and trained:
            if not radial.enabled:
                warnings.warn(
                    f"LoRA {name} was trained with radial attention; generating with dense attention", stacklevel=2
                )
            elif trained.get("decay_factor") not in (None, radial.decay_factor):
                warnings.warn(
                    f"LoRA {name} was trained with decay_factor={trained['decay_factor']}, generating with "
                    f"{radial.decay_factor}",
                    stacklevel=2,
                )
        # A Wan2.2 A14B expert's LoRA (our header names the expert) goes into that expert.
        expert = (info.get("base_model") or {}).get("expert") or "transformer"
        target = getattr(pipe, expert, None)
        if target is None:
            raise ValueError(
                f"--lora {spec.path}: trained for the expert {expert!r}, which this {type(pipe).__name__} does not have"
            )
        loaded = getattr(target, "peft_config", None) or {}
        if name not in loaded:  # a second run on the same pipeline (e.g. --compare-dense) only sets the scales
            into_second = {"load_into_transformer_2": True} if expert == "transformer_2" else {}
            try:
                if hasattr(pipe, "load_lora_weights"):
                    pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=name, **into_second)
                else:  # no LoRA mixin on the pipeline (HunyuanVideo-1.5): the transformer's own PEFT loader
                    target.load_lora_adapter(
                        str(file.parent), weight_name=file.name, adapter_name=name, prefix="transformer"
                    )
            except ValueError as e:  # PEFT / diffusers: no layer of the file matches the transformer
                if "not found" not in str(e) and "target modules" not in str(e).lower():
                    raise
                raise LoraFileError(
                    f"--lora {spec.path}: {file} does not fit the {family} transformer ({type(target).__name__}): "
                    f"a LoRA for another model family? ({' '.join(str(e).split())[:300]})"
                ) from None
        names.append(name)
        scales.append(float(spec.scale))
        records.append(
            {
                "name": name,
                "path": str(file),
                "scale": float(spec.scale),
                "radial_lora": {k: info[k] for k in ("base_model", "rank", "alpha", "radial", "training") if k in info},
            }
        )
    if hasattr(pipe, "set_adapters"):
        pipe.set_adapters(names, adapter_weights=scales)
    else:
        pipe.transformer.set_adapters(names, weights=scales)
    return records
