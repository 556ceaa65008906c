"""The trainer's config schema: typed sections merged over the Hydra composition, then range checks.

OmegaConf rejects unknown keys and wrong types with the full key in the message; `validate` adds the checks
that types cannot express (ranges, choices, paths) and names the key in every error, before anything heavy runs.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import math
import typing
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from radial.attention_settings import AttentionSettings
from radial.errors import ConfigError, MissingPathError
from radial.kernels import registry

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
SOURCES = ("tiny", "full", "pretrained")
DTYPES = ("float32", "bfloat16", "float16")
STORAGE_DTYPES = ("float8_e4m3fn", "float8_e5m2")
PRECISIONS = ("no", "fp16", "bf16")
TRACKERS = ("tensorboard", "wandb")
MODES = ("lora", "full")
MEMORY_MODES = ("auto", "off")
# torch.compile modes that leave the eager attention calls between graphs alone (no CUDA graphs)
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")


@dataclass
class ModelConfig:
    family: str = "wan"
    source: str = "tiny"
    variant: str | None = None
    path: str | None = None
    dtype: str = "float32"
    flow_shift: float = 1.0
    expert: str | None = None
    # Memory saver: keep frozen base weights in fp8 and upcast per layer for compute (diffusers layerwise casting).
    storage_dtype: str | None = None


def _mutable_section(frozen: type, name: str, **defaults) -> type:
    """A mutable dataclass with the fields of the frozen dataclass `frozen` (OmegaConf merges into its instances),
    `defaults` replacing some of its defaults, and `settings()`: the `frozen` object of its values."""
    hints = typing.get_type_hints(frozen)
    specs = [(f.name, hints[f.name], field(default=defaults.get(f.name, f.default))) for f in fields(frozen)]

    def settings(self):
        return frozen(**{f.name: getattr(self, f.name) for f in fields(frozen)})

    settings.__doc__ = f"The section as a {frozen.__name__} (validated: errors name the key)."
    return make_dataclass(name, specs, namespace={"settings": settings, "__module__": __name__})


#: attention.*: radial.AttentionSettings, field for field (a new option there is a key here); the trainer runs with
#: `cfg.attention.settings()`. Training default: 2 dense layers, as the paper trained.
AttentionConfig = _mutable_section(AttentionSettings, "AttentionConfig", dense_layers=2)


@dataclass
class DatasetEntry:
    """One prepared dataset of a mixture (data.datasets): its folder and how often its items are drawn per epoch."""

    root: str = ""
    repeats: int = 1


@dataclass
class DataConfig:
    kind: str = "synthetic"
    root: str = "${output_dir}/data"
    # several prepared datasets instead of data.root (data=latents): [{root: ..., repeats: k}, ...]
    datasets: list[DatasetEntry] = field(default_factory=list)
    # probability of training a draw on the empty prompt's text states (classifier-free guidance), seeded per draw
    caption_dropout: float = 0.0
    batch_size: int = 1
    num_workers: int = 0
    shuffle: bool = True
    # a bucket's incomplete last batch: dropped (True), or filled up with items of the bucket repeated (False)
    drop_last: bool = True
    # synthetic only: videos generated, then prepared with the tiny encoders of the model family
    num_videos: int = 8
    frames: int = 33
    height: int = 64
    width: int = 64
    fps: int = 8


@dataclass
class LoraSection:
    rank: int = 128
    alpha: float = 128.0
    dropout: float = 0.0
    projections: list[str] = field(default_factory=lambda: ["q", "k", "v", "o"])
    text: bool = False
    target_modules: Any = None


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-4
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    scheduler: str = "constant_with_warmup"
    warmup_steps: int = 0
    # the schedule's length in steps (null = train.max_steps): a run planned for N steps and trained in stages
    # (train.max_steps raised at each resume) keeps one decay
    schedule_steps: int | None = None


@dataclass
class TrainSection:
    mode: str = "lora"  # lora | full (every transformer parameter trained, exported with save_pretrained)
    max_steps: int = 1000
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "bf16"
    gradient_checkpointing: bool = True
    save_attention: bool = True
    checkpoint_blocks: str = "all"  # auto | all | N: blocks under checkpointing (train/recompute.py)
    memory: str = "auto"  # auto (CUDA: train/memory_plan.py picks the savers below) | off
    offload_activations: bool = False  # saved activations to pinned host memory (train/offload.py)
    offload_blocks: bool = False  # frozen block weights streamed from host memory (train/weight_stream.py)
    memory_cap_gb: float = 0.0  # > 0: use at most this much of the card (emulates a smaller one); 0 = all of it
    compile: bool = False  # regional torch.compile of the transformer blocks (radial/compile.py)
    compile_backend: str = "inductor"
    compile_mode: str | None = None
    fuse_qkv: bool = False  # q, k, v projections with their LoRA as one matmul each (radial/fused.py)
    checkpoint_every: int = 250
    keep_last: int = 3
    resume: str | None = None
    overwrite: bool = False  # replace a previous run in output_dir (otherwise refused unless resuming)
    on_nan: str = "skip"
    max_nan_skips: int = 20
    log_every: int = 1
    timestep_sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    loss_weighting: str = "none"
    timestep_range: list[float] | None = None
    distill_guidance: float = 1.0
    export_comfy: bool = True
    # Early end (checkpoint and export as at max_steps): after this many validations without the held-out loss
    # improving by early_stop_min_delta (relative) over its best (0 = off; needs eval.validation_every) ...
    early_stop_patience: int = 0
    early_stop_min_delta: float = 0.01
    # ... or once this many seconds of training have passed (0 = no limit).
    time_limit_s: float = 0.0
    # > 0: an exponential moving average of the trained weights with this decay (e.g. 0.999) is what validation
    # samples, checkpoints' lora/ and the final export hold; the raw weights keep training and resume
    ema_decay: float = 0.0


@dataclass
class EvalConfig:
    """Validation during training and end-of-training hooks (train/eval/validation.py documents each key)."""

    validation_every: int = 0
    hooks: list[str] = field(default_factory=list)
    heldout_root: str | None = None
    num_heldout: int = 4
    timesteps: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
    num_samples: int = 1
    prompts: list[str] = field(default_factory=list)
    prompt_embeds: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    negative_prompt: str = ""
    seeds: list[int] = field(default_factory=lambda: [0])
    num_inference_steps: int = 20
    guidance_scale: float = 1.0
    sample_frames: int | None = None
    sample_height: int | None = None
    sample_width: int | None = None
    sample_shift: float | None = None
    fps: int | None = None
    vae_path: str | None = None
    hook_settings: dict[str, dict] = field(default_factory=dict)
    hooks_videos: str | None = None


@dataclass
class LoggingConfig:
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    project: str = "radial-lora"
    run_name: str | None = None
    wandb_mode: str = "offline"
    loss_curve: bool = True


@dataclass
class ParallelConfig:
    sp_degree: int = 1


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSection = field(default_factory=LoraSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    output_dir: str = "outputs/run"
    seed: int = 0


def schema_keys(schema: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key of the config schema (sections included)."""
    keys = []
    for f in fields(schema):
        key = prefix + f.name
        keys.append(key)
        default = f.default_factory() if callable(f.default_factory) else f.default
        if is_dataclass(default):
            keys += schema_keys(type(default), key + ".")
    return keys


def unknown_key_error(key: str, value: str = "...") -> ConfigError:
    """The error for a key the config does not have: the closest valid key, else the keys of its section."""
    known = schema_keys()
    if key in known:  # in the schema, but no config file of this composition sets it
        return ConfigError(f"{key}: this configuration does not set it; add it with +{key}={value}")
    section, _, leaf = key.rpartition(".")
    siblings = [k for k in known if k.rpartition(".")[0] == section]
    if section in known or not section:  # a typo in the last part: the closest key of that section
        names = {k.rpartition(".")[2]: k for k in siblings}
        close = [names[n] for n in difflib.get_close_matches(leaf, list(names), n=1, cutoff=0.6)]
    else:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return ConfigError(f"{key}: no such config key; did you mean {close[0]}={value}?")
    siblings = siblings if section in known or not section else []
    owner = f"the keys of {section}" if section else "the top-level keys"
    where = f"; {owner}: {', '.join(k.rpartition('.')[2] for k in siblings)}" if siblings else ""
    return ConfigError(f"{key}: no such config key{where} (`python train/lora.py --help` lists them)")


def compose(overrides: list[str] | None = None) -> DictConfig:
    """The Hydra composition of configs/ with command-line style overrides, outside a Hydra app (tests, benchmarks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return hydra_compose(config_name="config", overrides=list(overrides or []))


class MissingValue(ConfigError, MissingMandatoryValue):
    """Required config values left at `???` (also an OmegaConf MissingMandatoryValue, as callers caught before)."""


def _check_finite(section, prefix: str = "") -> None:
    """No NaN or inf anywhere in the config (a comparison with NaN is always False, so range checks miss it)."""
    items = (
        section.items() if isinstance(section, dict) else ((f.name, getattr(section, f.name)) for f in fields(section))
    )
    for name, value in items:
        key = f"{prefix}{name}"
        if is_dataclass(value) or isinstance(value, dict):
            _check_finite(value, key + ".")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                if isinstance(v, float) and not math.isfinite(v):
                    raise ConfigError(f"{key}[{i}]={v}: expected a finite number")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value}: expected a finite number")


def meta_transformer(m: ModelConfig):
    """The configured transformer's structure on the meta device (no weights read or allocated), from its config
    alone; None when model.path has no readable transformer config (the loader's check names what is missing)."""
    from radial.models import get_adapter

    adapter = get_adapter(m.family)
    if m.source == "tiny":
        if m.variant is not None:
            _choice("model.variant", m.variant, sorted({*adapter.tiny_variants, *adapter.variants}))
        config = adapter.tiny_config_of(m.variant)
    elif m.source == "full":
        variant = m.variant or adapter.default_variant
        _choice("model.variant", variant, sorted(adapter.variants))
        config = dict(adapter.variants[variant])
    else:
        root = Path(m.path).expanduser()
        candidates = [root / m.expert] if m.expert else [root, root / "transformer"]
        folder = next((f for f in candidates if (f / "config.json").is_file()), None)
        try:
            config = adapter.transformer_class.load_config(str(folder)) if folder is not None else None
        except (OSError, ValueError):
            config = None
        if config is None:
            return None
    return empty_transformer(adapter, config, loaded=m.source == "pretrained")


def empty_transformer(adapter, config: dict, *, loaded: bool = True):
    """The adapter's transformer class built from `config` on the meta device (`loaded`: a config.json as read from
    disk, through from_config; else the constructor's keyword arguments)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=True):
        return adapter.transformer_class.from_config(config) if loaded else adapter.transformer_class(**config)


def _attention_layer_count(c: Config, model) -> int | None:
    """How many attention layers the configured transformer `model` has (None: its config is not readable here)."""
    from radial.models import get_adapter

    return None if model is None else len(get_adapter(c.model.family).attention_layers(model))


def _choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r}: expected one of {list(choices)}")


def _at_least(key: str, value, least) -> None:
    if value < least:
        raise ConfigError(f"{key}={value!r}: expected >= {least}")


def check_eval(ev: EvalConfig) -> None:
    """Values and paths of the eval section (also checked when a Validator is built from code)."""
    _at_least("eval.validation_every", ev.validation_every, 0)
    _at_least("eval.num_heldout", ev.num_heldout, 0)
    _at_least("eval.num_samples", ev.num_samples, 0)
    _at_least("eval.num_inference_steps", ev.num_inference_steps, 1)
    if not all(0 < float(x) < 1 for x in ev.timesteps):
        raise ConfigError(f"eval.timesteps={ev.timesteps}: expected noise levels in (0, 1)")
    from train.eval.hooks import available_hooks

    for hook in ev.hooks:
        if ":" not in hook and hook not in available_hooks():
            raise ConfigError(f"eval.hooks: unknown hook {hook!r}; known: {available_hooks()} (or 'module:Class')")
    if ev.heldout_root and not Path(ev.heldout_root).expanduser().is_dir():
        raise MissingPathError(f"eval.heldout_root={ev.heldout_root}: no such folder (prepared latents)")
    for path in ev.prompt_embeds:
        if not Path(path).expanduser().is_file():
            raise MissingPathError(f"eval.prompt_embeds: {path} does not exist")
    if ev.images:
        _check_eval_image_files(ev)


def _check_eval_image_files(ev: EvalConfig) -> None:
    """eval.images: readable images, one per validation prompt (those of eval.prompt_embeds, else eval.prompts)."""
    from radial.generation.embeds import load_prompt_embeds
    from radial.generation.run import load_image

    for i, path in enumerate(ev.images):
        load_image(path, f"eval.images[{i}]")
    if ev.prompt_embeds:
        key, count = "eval.prompt_embeds", sum(len(load_prompt_embeds(Path(p).expanduser())) for p in ev.prompt_embeds)
    else:
        key, count = "eval.prompts", len(ev.prompts)
    if not count:
        raise ConfigError(
            f"eval.images={list(ev.images)}: first frames of eval.prompts (or eval.prompt_embeds), one per prompt, "
            "but no prompts are given (samples of held-out items take their own first frames: leave eval.images empty)"
        )
    if len(ev.images) != count:
        raise ConfigError(
            f"eval.images has {len(ev.images)} image(s) for the {count} prompt(s) of {key}: expected one per prompt, "
            "in the same order"
        )


def check_eval_images(ev: EvalConfig, family: str, transformer_config) -> None:
    """eval.images against the transformer: first frames for image-to-video models only; an image-to-video model
    samples eval.prompts / eval.prompt_embeds only with a first frame each."""
    from radial.models import get_adapter

    takes = get_adapter(family).image_input(transformer_config)
    if ev.images and takes == "none":
        raise ConfigError(
            f"eval.images={list(ev.images)}: the {family} transformer is text-to-video (it takes no first frame); "
            "leave eval.images empty or train an image-to-video model"
        )
    if takes == "required" and not ev.images and (ev.prompts or ev.prompt_embeds):
        key = "eval.prompt_embeds" if ev.prompt_embeds else "eval.prompts"
        raise ConfigError(
            f"{key} is set but eval.images is empty: the {family} transformer is image-to-video; give eval.images, "
            f"one first frame per prompt, or leave {key} empty to sample held-out items from their own first frames"
        )


def planned_lora_names(c: Config, model) -> list[str]:
    """The modules a LoRA of this config adapts on `model` (the configured transformer, meta device will do)."""
    from radial.lora import lora_target_names
    from radial.models import get_adapter

    adapter = get_adapter(c.model.family)
    targets = c.lora.target_modules or adapter.lora_target_modules(c.lora.projections, text=c.lora.text)
    return lora_target_names(model, targets, adapter.lora_unused_modules(model))


def _check_lora_targets(c: Config, model) -> None:
    """Explicit lora.target_modules must select at least one linear layer of the transformer."""
    if planned_lora_names(c, model):
        return
    from radial.models import get_adapter

    usual = get_adapter(c.model.family).lora_target_names(model, c.lora.projections, text=c.lora.text)
    raise ConfigError(
        f"lora.target_modules={c.lora.target_modules!r} matches no linear layer of the {c.model.family} transformer "
        f"(PEFT matches full names or dot-separated suffixes, or a regex on the full name; its attention "
        f"projections are named like {', '.join(usual[:2])}); leave it null to use lora.projections"
    )


def _check_expert(c: Config) -> None:
    """model.expert names one expert of a mixture-of-experts family (Wan2.2 A14B); without train.timestep_range its
    share of the noise schedule is filled in from the pipeline's `boundary_ratio` (the first expert takes the noise
    levels at and above it, the second those below), read from model.path's model_index.json."""
    from radial.models import available_adapters, get_adapter

    m = c.model
    adapter = get_adapter(m.family)
    experts = tuple(getattr(adapter, "experts", ()))
    if m.expert is None:
        root = Path(m.path).expanduser() if m.source == "pretrained" and m.path else None
        if experts and root is not None and all((root / e).is_dir() for e in experts):
            raise ConfigError(
                f"model.expert is not set, but model.path={m.path!r} holds the experts {list(experts)}: name the one "
                f"to train, e.g. model.expert={experts[0]} (each expert gets its own LoRA)"
            )
        return
    if not experts:
        with_experts = [f for f in available_adapters() if getattr(get_adapter(f), "experts", ())]
        raise ConfigError(
            f"model.expert={m.expert!r}: family {m.family!r} has no experts (families with experts: {with_experts}); "
            "leave model.expert null"
        )
    _choice("model.expert", m.expert, experts)
    if c.train.timestep_range is not None:
        return
    if m.source == "pretrained":
        index = Path(m.path).expanduser() / "model_index.json"
        try:
            boundary = json.loads(index.read_text()).get("boundary_ratio")
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"model.expert={m.expert!r}: cannot read the pipeline's boundary_ratio from {index} ({e}); set "
                "train.timestep_range=[lo,hi] for this expert"
            ) from None
        if boundary is None:
            raise ConfigError(
                f"model.expert={m.expert!r}: {index} has no boundary_ratio (not a two-expert pipeline?); set "
                "train.timestep_range=[lo,hi] for this expert"
            )
    else:
        variant = m.variant or adapter.default_variant
        boundary = adapter.boundary_ratios.get(variant)
        if boundary is None:
            raise ConfigError(
                f"model.variant={variant!r}: no expert boundary known for it (known: {sorted(adapter.boundary_ratios)}); "
                "set train.timestep_range=[lo,hi]"
            )
    c.train.timestep_range = [float(boundary), 1.0] if m.expert == experts[0] else [0.0, float(boundary)]


def validate(cfg: DictConfig | dict) -> Config:
    """Merge the composed config over the schema (unknown keys and wrong types fail, naming the key) and check
    values; returns a typed, resolved `Config`."""
    raw = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    raw = OmegaConf.masked_copy(raw, [k for k in raw if k != "hydra"]) if "hydra" in raw else raw
    # Before the merge: merging "???" over a schema default keeps the default.
    missing = sorted(OmegaConf.missing_keys(raw))
    if "data.root" in missing and OmegaConf.select(raw, "data.datasets", default=None):
        missing.remove("data.root")  # data.datasets names the roots
        raw = copy.deepcopy(raw)
        OmegaConf.update(raw, "data.root", "")
    if "model.path" in missing:
        from radial.hub import download_hint

        family = OmegaConf.select(raw, "model.family", default=None)
        raise MissingValue(
            f"model.path is not set: model family {family!r} loads pretrained weights from a local diffusers folder "
            f"or a Hub id in the Hugging Face cache; {download_hint(family)}"
        )
    if missing:
        hint = " ".join(f"{k}=..." for k in missing)
        raise MissingValue(f"missing required config value(s): {', '.join(missing)}; set them, e.g. {hint}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), raw)
        OmegaConf.resolve(merged)
        c: Config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:  # unknown key, wrong type, bad interpolation: one line naming the key
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        key = getattr(e, "full_key", None)
        if isinstance(e, ConfigKeyError) and key and key not in schema_keys():  # e.g. +train.max_stepz=3
            raise unknown_key_error(key) from None
        raise ConfigError(f"{key}: {first}" if key and key not in first else first) from None
    _check_finite(c)

    from radial.models import available_adapters

    _choice("model.family", c.model.family, available_adapters())
    _choice("model.source", c.model.source, SOURCES)
    _choice("model.dtype", c.model.dtype, DTYPES)
    if c.model.storage_dtype is not None:
        _choice("model.storage_dtype", c.model.storage_dtype, STORAGE_DTYPES)
    if c.model.source == "pretrained":
        from radial.hub import download_hint, resolve_model_path

        if not c.model.path:
            raise ConfigError(f"model.path is required with model.source=pretrained; {download_hint(c.model.family)}")
        # A Hub id becomes its cached snapshot folder here, so everything downstream reads a local folder.
        c.model.path = str(resolve_model_path(c.model.path, key="model.path", family=c.model.family))
    if c.model.flow_shift <= 0:
        raise ConfigError(f"model.flow_shift={c.model.flow_shift}: expected > 0")

    a = c.attention
    # The meta build behind the layer count takes seconds for full-size models: at most once per validation.
    meta = functools.cache(lambda: meta_transformer(c.model))
    layer_count = functools.cache(lambda: _attention_layer_count(c, meta()))
    a.settings()  # every attention.* key in range (radial.AttentionSettings), errors naming the key
    if a.deterministic and a.backend != "auto" and not registry.get(a.backend).deterministic:
        deterministic = [b for b in registry.backend_names() if registry.get(b).deterministic]
        raise ConfigError(
            f"attention.deterministic=true with attention.backend={a.backend}: expected auto or a deterministic "
            f"backend ({', '.join(deterministic)})"
        )
    if a.block_size not in (16, 32, 64, 128):
        raise ConfigError(f"attention.block_size={a.block_size}: expected 16, 32, 64 or 128 (128 on GPU)")

    _choice("data.kind", c.data.kind, ("synthetic", "latents"))
    _at_least("data.batch_size", c.data.batch_size, 1)
    _at_least("data.num_workers", c.data.num_workers, 0)
    _at_least("data.num_videos", c.data.num_videos, 1)
    if not c.train.distill_guidance >= 1.0:
        raise ConfigError(f"train.distill_guidance={c.train.distill_guidance}: expected >= 1 (1 = off)")
    if c.train.distill_guidance != 1.0 and c.train.mode != "lora":
        raise ConfigError(
            "train.distill_guidance needs train.mode=lora: its unconditional prediction is the base's (LoRA off)"
        )
    if not 0.0 <= c.data.caption_dropout < 1.0:
        raise ConfigError(f"data.caption_dropout={c.data.caption_dropout}: expected a probability in [0, 1)")
    for i, entry in enumerate(c.data.datasets):
        if c.data.kind != "latents":
            raise ConfigError(f"data.datasets needs data=latents (data.kind={c.data.kind!r})")
        if not str(entry.root).strip():
            raise ConfigError(f"data.datasets[{i}].root is not set: a folder prepared by python -m data.prepare")
        _at_least(f"data.datasets[{i}].repeats", entry.repeats, 1)

    _at_least("lora.rank", c.lora.rank, 1)
    if c.lora.alpha <= 0:
        raise ConfigError(f"lora.alpha={c.lora.alpha}: expected > 0")
    if not 0 <= c.lora.dropout < 1:
        raise ConfigError(f"lora.dropout={c.lora.dropout}: expected in [0, 1)")
    bad = sorted(set(c.lora.projections) - set("qkvo"))
    if bad or not c.lora.projections:
        raise ConfigError(f"lora.projections={c.lora.projections}: expected a non-empty subset of [q, k, v, o]")

    _choice("optim.name", c.optim.name, ("adamw",))
    if not c.optim.lr > 0:
        raise ConfigError(f"optim.lr={c.optim.lr}: expected > 0")
    if len(c.optim.betas) != 2 or not all(0 <= b < 1 for b in c.optim.betas):
        raise ConfigError(f"optim.betas={c.optim.betas}: expected two numbers in [0, 1)")
    _at_least("optim.warmup_steps", c.optim.warmup_steps, 0)
    from diffusers.optimization import SchedulerType

    _choice("optim.scheduler", c.optim.scheduler, [t.value for t in SchedulerType])
    if c.optim.max_grad_norm < 0:
        raise ConfigError(f"optim.max_grad_norm={c.optim.max_grad_norm}: expected >= 0 (0 = no clipping)")

    t = c.train
    _choice("train.mode", t.mode, MODES)
    _at_least("train.max_steps", t.max_steps, 1)
    _at_least("train.gradient_accumulation_steps", t.gradient_accumulation_steps, 1)
    _choice("train.mixed_precision", t.mixed_precision, PRECISIONS)
    _at_least("train.checkpoint_every", t.checkpoint_every, 0)
    _at_least("train.keep_last", t.keep_last, 1)
    _choice("train.on_nan", t.on_nan, ("skip", "stop"))
    _at_least("train.max_nan_skips", t.max_nan_skips, 1)
    _at_least("train.log_every", t.log_every, 1)
    _at_least("train.early_stop_patience", t.early_stop_patience, 0)
    _at_least("train.early_stop_min_delta", t.early_stop_min_delta, 0.0)
    _at_least("train.time_limit_s", t.time_limit_s, 0.0)
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay={t.ema_decay}: expected in [0, 1) (0 = no average; e.g. 0.999)")
    if c.optim.schedule_steps is not None and c.optim.schedule_steps < t.max_steps:
        raise ConfigError(
            f"optim.schedule_steps={c.optim.schedule_steps}: expected >= train.max_steps={t.max_steps} "
            "(past its end a schedule restarts), or null for train.max_steps"
        )
    if t.early_stop_patience and not c.eval.validation_every:
        raise ConfigError(
            f"train.early_stop_patience={t.early_stop_patience} needs validations: set eval.validation_every > 0"
        )
    from radial.compile import BACKENDS as COMPILE_BACKENDS

    _choice("train.compile_backend", t.compile_backend, COMPILE_BACKENDS)
    if t.compile_mode is not None:
        _choice("train.compile_mode", t.compile_mode, COMPILE_MODES)
    if str(t.checkpoint_blocks) != "all":
        if not t.gradient_checkpointing:
            raise ConfigError(
                f"train.checkpoint_blocks={t.checkpoint_blocks!r} needs train.gradient_checkpointing=true (leave it all)"
            )
        from train.recompute import parse_checkpoint_blocks

        blocks = layer_count() if str(t.checkpoint_blocks) != "auto" else None
        try:
            parse_checkpoint_blocks(t.checkpoint_blocks, blocks if blocks is not None else 1 << 30)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    _choice("train.memory", t.memory, MEMORY_MODES)
    _at_least("train.memory_cap_gb", t.memory_cap_gb, 0.0)
    if t.offload_blocks and (t.mode == "full" or not t.gradient_checkpointing):
        raise ConfigError(
            "train.offload_blocks=true streams the frozen weights of checkpointed blocks: it needs train.mode=lora "
            "and train.gradient_checkpointing=true"
        )
    if t.mode == "full" and c.model.storage_dtype is not None:
        raise ConfigError("model.storage_dtype stores frozen weights; train.mode=full has none: leave it null")
    from train.flow import SAMPLINGS, WEIGHTINGS, FlowMatching

    _choice("train.timestep_sampling", t.timestep_sampling, SAMPLINGS)
    _choice("train.loss_weighting", t.loss_weighting, WEIGHTINGS)
    if t.logit_std <= 0:
        raise ConfigError(f"train.logit_std={t.logit_std}: expected > 0")
    if t.timestep_range is not None:
        FlowMatching(sigma_range=tuple(t.timestep_range))  # its check, naming train.timestep_range
    _check_expert(c)
    layers = layer_count() if a.dense_layers > 0 else None
    if layers is not None and a.dense_layers > layers:
        raise ConfigError(
            f"attention.dense_layers={a.dense_layers}: the {c.model.family} transformer "
            f"({c.model.source}{'' if c.model.variant is None else ' ' + c.model.variant}) has {layers} attention "
            f"layers; expected at most {layers}"
        )

    if t.mode == "lora" and c.lora.target_modules and meta() is not None:
        _check_lora_targets(c, meta())

    check_eval(c.eval)
    ev = c.eval
    if (ev.images or ev.prompts or ev.prompt_embeds) and meta() is not None:
        check_eval_images(ev, c.model.family, meta().config)
    for tracker in c.logging.trackers:
        _choice("logging.trackers", tracker, TRACKERS)
    _choice("logging.wandb_mode", c.logging.wandb_mode, ("offline", "online", "disabled"))
    _at_least("parallel.sp_degree", c.parallel.sp_degree, 1)
    if c.parallel.sp_degree > 1 and a.rope_extension != "none":
        # Each rank sees its slice of the rotary tables, without the global token offset RIFLEx needs.
        raise ConfigError(
            f"attention.rope_extension={a.rope_extension} with parallel.sp_degree={c.parallel.sp_degree}: not "
            "supported under sequence parallelism; expected parallel.sp_degree=1"
        )
    return c
