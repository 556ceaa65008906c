"""The model-adapter protocol and its registry: all the trainer and the generator know about a model family.

An adapter is a stateless object, one per family (registered by name), that knows one diffusers transformer class:

- building it:          `build_tiny()` (CPU tests, demo), `build_full(variant)` (full-size architecture, random
                        weights, for GPU benchmarks), `from_pretrained(path)` (real weights from a local folder);
- describing it:        `geometry` (VAE factors, patch sizes, the k*t+1 frame rule), `lora_target_modules()`,
                        `latent_shape()`;
- running it:           `predict(transformer, latents, timestep, conditions)` in one convention for every family,
                        `make_dummy_conditions()` / `make_dummy_latents()` for tiny and benchmark runs;
- injecting radial attention (used by `radial.inject`): `attention_layers()`, `latent_grid()`,
                        `make_processor()`.

Conventions of `predict`: `timestep` [B] (or a number) is the flow-matching noise level times 1000 (1000 = pure
noise), as diffusers' FlowMatch schedulers give it for Wan and HunyuanVideo; the result is the velocity
`noise - x0` in the latents' layout [B, C, F, H, W]. Families whose model uses another convention (Mochi) convert.

Condition keys (a family ignores those it has no use for):
    prompt_embeds          [B, L, text_dim]  text encoder states (required)
    prompt_attention_mask  [B, L] bool/int   1 = real token (HunyuanVideo, Mochi; default all ones)
    prompt_embeds_2        [B, L2, d2]       HunyuanVideo-1.5's ByT5 glyph-text states
    prompt_attention_mask_2 [B, L2]          their mask
    pooled_prompt_embeds   [B, P]            HunyuanVideo's pooled CLIP embedding
    guidance               number or [B]     HunyuanVideo's distilled guidance scale (times 1000 inside; default 1)
    image_embeds           [B, N, image_dim] Wan2.1 I2V CLIP / HunyuanVideo-1.5 SigLIP image states (zeros: T2V)
    image_latents          [B, C', F, H, W]  channel-concatenated conditioning (Wan I2V: 4 mask + 16 latent;
                                             HunyuanVideo-1.5: 32 latent + 1 mask)
    first_frame_mask       [B, 1, F, H, W]   Wan2.2 TI2V: 0 where a latent is clean conditioning, 1 where noised
    attention_kwargs       dict              passed to the transformer (e.g. {"scale": lora_scale})
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from radial.comfy import ComfyRule, to_comfy
from radial.errors import ConfigError
from radial.families import FAMILIES, FamilySpec, LatentGeometry, family_spec
from radial.models.context import InjectionState, LatentGrid, RadialProcessor
from radial.rope_extension import RotarySpec

PATH_KEY = "model.path"
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


class ModelPathError(ConfigError):
    """A bad `model.path`: missing, not a diffusers folder, the wrong class, or without weights."""


@dataclass
class PipelineRun:
    """What one pipeline call gave (`ModelAdapter.run_pipeline`): the video, decoded or as latents, and what a family
    adds to it."""

    video: Any  # frames (np [B, F, H, W, 3] or a list) when decoding, else the final latents [B, C, F, H, W]
    latents: torch.Tensor | None = None  # the final latents where the step callback does not see them in that layout
    audio: Any = None  # float32 np [channels, samples]: the sound track of a joint audio-video model (MiniMax-H3)
    audio_rate: int | None = None  # its sample rate


class ModelAdapter:
    """Base of every family adapter; subclasses fill the class attributes and the family-specific methods."""

    family: ClassVar[str]  # registry name, also the geometry family
    class_name: ClassVar[str]  # diffusers transformer class
    mask_model: ClassVar[str]  # radial mask model (attention-sink default)
    variants: ClassVar[Mapping[str, Mapping[str, Any]]]  # full-size configs by variant name
    default_variant: ClassVar[str]
    tiny_config: ClassVar[Mapping[str, Any]]
    tiny_variants: ClassVar[Mapping[str, Mapping[str, Any]]] = {}  # other tiny configs by name (e.g. Wan "i2v")
    text_len: ClassVar[int]  # text tokens of the real pipeline (the padded length)
    # projection letter -> module suffix, for the video (self/joint) attention and for the text-reading projections
    _lora_video: ClassVar[Mapping[str, str]] = {"q": "to_q", "k": "to_k", "v": "to_v", "o": r"to_out\.0"}
    _lora_text: ClassVar[Mapping[str, str]] = {
        "q": "add_q_proj",
        "k": "add_k_proj",
        "v": "add_v_proj",
        "o": "to_add_out",
    }

    # -- identity -----------------------------------------------------------------------------------------------
    @property
    def spec(self) -> FamilySpec:
        """The family's data (radial.families): geometry, sink, Hub id, pipelines, text fields, tiny sizes."""
        return family_spec(self.family)

    @property
    def geometry(self) -> LatentGeometry:
        return self.spec.geometry

    @property
    def transformer_class(self) -> type[nn.Module]:
        """diffusers' transformer class of this family; ConfigError when the installed diffusers predates it."""
        import diffusers

        cls = self._class_or_none()
        if cls is None:
            raise ConfigError(
                f"family={self.family!r} needs diffusers' {self.class_name}, which diffusers {diffusers.__version__} "
                "does not have: upgrade diffusers (pip install -U diffusers)"
            )
        return cls

    def _class_or_none(self) -> type[nn.Module] | None:
        import diffusers

        return getattr(diffusers, self.class_name, None)

    def matches(self, transformer: nn.Module) -> bool:
        """Whether detection should pick this adapter for `transformer` (subclasses refine by config); False where the
        installed diffusers lacks the class (nothing can be an instance of it)."""
        cls = self._class_or_none()
        return type(transformer).__name__ == self.class_name or (cls is not None and isinstance(transformer, cls))

    def check_transformer(self, transformer: nn.Module) -> None:
        if not isinstance(transformer, self.transformer_class):
            raise ValueError(
                f"family={self.family!r} adapts diffusers' {self.class_name}, got {type(transformer).__name__}"
            )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} family={self.family!r} class={self.class_name}>"

    # -- structure (used by radial.inject) -----------------------------------------------------------------------
    processor_class: ClassVar[type[RadialProcessor]]  # the family's processor, in place of the stock one
    attention_blocks: ClassVar[tuple[str, ...]] = ("transformer_blocks",)  # the block lists, in execution order
    attention_name: ClassVar[str] = "attn"  # each block's attention module that gets radial attention

    def attention_layers(self, transformer: nn.Module) -> list[nn.Module]:
        """The attention modules that get radial attention, in execution order (list index = layer index)."""
        blocks = [block for name in self.attention_blocks for block in getattr(transformer, name)]
        return [getattr(block, self.attention_name) for block in blocks]

    def make_processor(self, state: InjectionState, layer_index: int, stock) -> RadialProcessor:
        """The family's radial processor for one attention layer; `stock` serves what it does not handle."""
        return self.processor_class(state, layer_index, stock)

    def blocks(self, transformer: nn.Module) -> list[nn.Module]:
        """The transformer blocks in execution order, one per attention layer (the module holding it): what
        diffusers checkpoints one by one and what regional compilation compiles."""
        names = {id(m): n for n, m in transformer.named_modules()}
        modules = dict(transformer.named_modules())
        return [modules[names[id(attn)].rpartition(".")[0]] for attn in self.attention_layers(transformer)]

    def sequence_rows(self, latent_frames: int, video_tokens: int) -> int:
        """The rows of the sequence every transformer block carries for a clip of `latent_frames` frames and
        `video_tokens` video tokens (what activation memory scales with): by default the video tokens alone."""
        return video_tokens

    def patch_size(self, transformer: nn.Module) -> tuple[int, int, int]:
        """(temporal, height, width) patch of the transformer's patch embedding; by default the config's
        `patch_size_t` and a square `patch_size` (HunyuanVideo, HunyuanVideo-1.5)."""
        cfg = transformer.config
        return (cfg.patch_size_t, cfg.patch_size, cfg.patch_size)

    def rotary_spec(self, transformer: nn.Module) -> RotarySpec | None:
        """The temporal rotary embedding that `rope_extension` rewrites (radial.rope_extension); None: the family
        has none that it supports."""
        return None

    # -- sequence parallelism (used by radial.parallel) ------------------------------------------------------------
    # How the ranks of a group hold the text tokens of joint attention: "split" (each rank its share, like the
    # video tokens) or "replicated" (every rank the whole text stream; only the video tokens are split).
    sp_text: ClassVar[str] = "split"

    def context_parallel_plan(self, transformer: nn.Module) -> dict | None:
        """The diffusers context-parallel plan (`_cp_plan` format) that splits and gathers the sequence; None when
        the family has none (sequence parallelism is then refused). Default: the class's own `_cp_plan`."""
        return getattr(type(transformer), "_cp_plan", None) or None

    def latent_grid(self, transformer: nn.Module, hidden_states: torch.Tensor) -> LatentGrid:
        """The token grid of latents [B, C, F, H, W]; ValueError naming `hidden_states` when the patch does not fit."""
        if not isinstance(hidden_states, torch.Tensor) or hidden_states.dim() != 5:
            shape = tuple(hidden_states.shape) if isinstance(hidden_states, torch.Tensor) else type(hidden_states)
            raise ValueError(f"hidden_states (the latents) must be [B, C, F, H, W], got {shape}")
        pt, ph, pw = self.patch_size(transformer)
        f, h, w = hidden_states.shape[2:]
        if f % pt or h % ph or w % pw or min(f, h, w) == 0:
            raise ValueError(
                f"hidden_states (the latents) has frames x height x width {f}x{h}x{w}, which the {self.family} "
                f"patch size {pt}x{ph}x{pw} does not divide"
            )
        return LatentGrid(f // pt, h // ph, w // pw)

    def forward_grid(self, transformer: nn.Module, arguments: Mapping[str, Any]) -> LatentGrid:
        """The token grid of one forward call from its bound arguments (what radial.inject's pre-hook reads);
        default: from the latents `hidden_states`."""
        return self.latent_grid(transformer, arguments.get("hidden_states"))

    def lora_target_modules(self, projections: Sequence[str] = ("q", "k", "v", "o"), *, text: bool = False) -> str:
        """PEFT `target_modules` (a regex, full match): the q/k/v/o projections of the attention that goes radial.

        `projections` picks among q, k, v, o (the paper tunes all four); `text=True` also adapts the projections
        that read text (Wan's cross-attention, the text stream of HunyuanVideo's and Mochi's joint attention).
        """
        unknown = sorted(set(projections) - set("qkvo"))
        if unknown or not projections:
            raise ValueError(f"projections must be a non-empty subset of q, k, v, o, got {list(projections)!r}")
        alternatives = self._lora_alternatives(list(dict.fromkeys(projections)), text)
        return r"(?:.*\.)?(?:" + "|".join(alternatives) + ")"

    def _lora_alternatives(self, projections: list[str], text: bool) -> list[str]:
        raise NotImplementedError

    def lora_target_names(self, transformer: nn.Module, *args, **kwargs) -> list[str]:
        """Names of the modules of `transformer` that `lora_target_modules(*args, **kwargs)` selects (less
        `lora_unused_modules`, which get no adapter)."""
        pattern = re.compile(self.lora_target_modules(*args, **kwargs))
        unused = set(self.lora_unused_modules(transformer))
        return [name for name, _ in transformer.named_modules() if pattern.fullmatch(name) and name not in unused]

    def lora_unused_modules(self, transformer: nn.Module) -> list[str]:
        """Projections the target patterns select whose output the forward discards: a LoRA there never gets a
        gradient (DDP, which multi-process training uses, refuses such parameters), so none is attached."""
        return []

    # -- export -------------------------------------------------------------------------------------------------
    @property
    def pipeline_class_name(self) -> str:
        """The diffusers pipeline whose `save_lora_weights` / `load_lora_weights` fit (FamilySpec.pipeline_class)."""
        return self.spec.pipeline_class

    def comfy_rules(self) -> list[ComfyRule]:
        """Diffusers module -> original-checkpoint module names (ComfyUI keys); empty if the family has none."""
        return []

    def comfy_lora_state_dict(
        self, lora_sd: Mapping[str, torch.Tensor], transformer: nn.Module, scale: float
    ) -> dict[str, torch.Tensor]:
        """The adapter's LoRA (PEFT keys) in ComfyUI / original keys, with `scale` (alpha / rank) folded in."""
        rules = self.comfy_rules()
        if not rules:
            raise ValueError(f"no ComfyUI / original key mapping is known for family {self.family!r}")
        return to_comfy(lora_sd, rules, transformer, scale)

    # -- sampling -----------------------------------------------------------------------------------------------
    @property
    def image_pipeline_class_name(self) -> str | None:
        """The diffusers pipeline that generates from a first frame (FamilySpec.image_pipeline_class)."""
        return self.spec.image_pipeline_class

    pipeline_config: ClassVar[Mapping[str, Any]] = {}  # the family pipelines' config beyond their components

    def build_pipeline(self, name: str, transformer: nn.Module, scheduler, components: Mapping[str, Any]):
        """The diffusers pipeline `name` of this family from its parts (train.tiny_pipeline's tiny pipelines, the
        validator's): the class called with them."""
        import diffusers

        return getattr(diffusers, name)(transformer=transformer, scheduler=scheduler, **components)

    def image_input(self, config: Mapping[str, Any]) -> str:
        """Whether a transformer of this `config` generates from a first frame: "required" (image-to-video),
        "optional" (text- or image-to-video, Wan2.2 TI2V-5B) or "none" (text-to-video)."""
        return "none"

    def first_frame_latent(self, item: Mapping[str, Any]) -> torch.Tensor | None:
        """The normalized VAE latent [C, 1, h, w] of the first frame in a prepared item's image conditioning (decoded
        for validation samples); None when the item has none or the family does not say where it is."""
        return None

    # The family's pipelines, where they differ from the diffusers call every other family takes.
    experts: ClassVar[tuple[str, ...]] = ()  # pipeline components holding its experts (Wan2.2 A14B), else none

    def pipeline_components(self, guidance_scale: float) -> dict[str, Any]:
        """Components its pipelines take besides transformer, VAE, scheduler and encoders (built for tiny ones)."""
        return {}

    def apply_text_settings(self, pipe, settings: Mapping[str, Any]) -> None:
        """Non-default text settings of tiny / custom encoders onto a pipeline that reads them from attributes (the
        others take them as call arguments: nothing to do)."""

    def pipeline_call_kwargs(self, pipe, clip, embeds, image: dict[str, Any]) -> dict[str, Any] | None:
        """The pipeline call for a clip (radial.generation.settings.ClipSpec) from a prompt or stored embeddings
        (radial.generation.embeds.PromptEmbeds) and `image` ({"image": first frame} or {}); None: the call of
        radial.generation.run.call_kwargs, which the families with diffusers' common arguments take."""
        return None

    def run_pipeline(self, pipe, kwargs: dict[str, Any], *, generator: torch.Generator, decode: bool) -> PipelineRun:
        """One call of `pipe` with `kwargs` (those of `pipeline_call_kwargs` / radial.generation.run.call_kwargs):
        decoded frames (`decode`) or the final latents."""
        out = pipe(**kwargs, generator=generator, output_type="np" if decode else "latent")
        return PipelineRun(out.frames if hasattr(out, "frames") else out[0])

    def fixed_text_len(self, config: Mapping[str, Any]) -> int | None:
        """The text length a transformer of this config requires of its prompt states (None: any)."""
        return None

    def dataset_expectations(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """What a dataset must hold for a transformer of this config besides latents and text states
        (data.dataset.Expect fields: image_channels, image_dim, text_dim_2, audio_channels); {}: nothing more to
        check."""
        return {}

    # -- building -----------------------------------------------------------------------------------------------
    def tiny_config_of(self, variant: str | None = None) -> dict[str, Any]:
        """The tiny config, or that of the tiny variant `variant`; a full-size variant's name keeps the tiny default
        (it still selects e.g. the Wan2.2 expert boundary); anything else is a ValueError naming the known ones."""
        if variant in self.tiny_variants:
            return dict(self.tiny_variants[variant])
        if variant is None or variant in self.variants:
            return dict(self.tiny_config)
        known = sorted({*self.tiny_variants, *self.variants})
        raise ValueError(f"variant must be one of {known} for a tiny {self.family} model, got {variant!r}")

    def build_tiny(
        self, *, seed: int = 0, dtype=torch.float32, device="cpu", variant: str | None = None, **overrides
    ) -> nn.Module:
        """A tiny random-init model of the real class (a few layers, heads and channels) for tests and the demo.

        Parameters the class initialises to zero get small random values, so every path carries signal.
        """
        config = {**self.tiny_config_of(variant), **overrides}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self.transformer_class(**config)
            with torch.no_grad():
                for p in model.parameters():
                    if not p.any():
                        p.normal_(0.0, 0.1)
        cast_parameters(model, dtype)
        return model.to(device).eval()

    def build_full(
        self,
        variant: str | None = None,
        *,
        dtype=torch.bfloat16,
        device="cpu",
        init: str = "normal",
        seed: int = 0,
        **overrides,
    ) -> nn.Module:
        """The full-size architecture with random weights, built without the class's slow initialisation.

        Parameters are created on the meta device and materialised once on `device` (buffers are computed for
        real); `init="normal"` draws N(0, 1/fan_in) matrices, unit norm weights and zero biases (finite activations
        for benchmarks), `init="empty"` leaves memory uninitialised. `device="meta"` only builds the structure.
        Modules the class keeps in fp32 (`_keep_in_fp32_modules`) stay fp32, as when loading real weights.
        """
        variant = variant or self.default_variant
        if variant not in self.variants:
            raise ValueError(f"variant must be one of {sorted(self.variants)} for {self.family}, got {variant!r}")
        if init not in ("normal", "empty"):
            raise ValueError(f"init must be 'normal' or 'empty', got {init!r}")
        from accelerate import init_empty_weights

        with init_empty_weights(include_buffers=False):
            model = self.transformer_class(**{**self.variants[variant], **overrides})
        _materialise(model, torch.device(device), dtype, init, seed)
        return model.eval()

    def resolve_pretrained(self, path: str | Path | None, subfolder: str | None = None) -> Path:
        """The transformer folder under `path` (a pipeline root or the transformer folder), checked before loading."""
        expected = (
            f"a local diffusers folder with the {self.class_name} weights: the pipeline root (with "
            f"{subfolder or 'transformer'}/) or that subfolder itself (config.json + *.safetensors)"
        )
        if path is None or str(path).strip() == "":
            raise ModelPathError(f"{PATH_KEY} is not set; expected {expected}")
        root = Path(path).expanduser()
        if not root.exists():
            raise ModelPathError(f"{PATH_KEY}={str(path)!r} does not exist; expected {expected}")
        if not root.is_dir():
            raise ModelPathError(f"{PATH_KEY}={str(path)!r} is a file; expected {expected}")
        if subfolder is not None:
            folder = root / subfolder
        elif (root / "config.json").is_file():
            folder = root
        else:
            folder = root / "transformer"
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise ModelPathError(f"{PATH_KEY}={str(path)!r}: no {config_file.relative_to(root)}; expected {expected}")
        try:
            class_name = json.loads(config_file.read_text()).get("_class_name")
        except (OSError, ValueError) as e:
            raise ModelPathError(f"{PATH_KEY}={str(path)!r}: {config_file} is not valid JSON ({e})") from e
        if class_name != self.class_name:
            raise ModelPathError(
                f"{PATH_KEY}={str(path)!r}: {config_file} describes {class_name!r}, but the {self.family!r} adapter "
                f"loads {self.class_name}"
            )
        if not any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS):
            raise ModelPathError(f"{PATH_KEY}={str(path)!r}: {folder} has a config.json but no weight files")
        return folder

    def from_pretrained(
        self, path: str | Path | None, *, dtype=torch.bfloat16, subfolder: str | None = None, device=None
    ) -> nn.Module:
        """Real weights from a local diffusers folder (the config key `model.path`); checked before anything heavy."""
        folder = self.resolve_pretrained(path, subfolder)
        model = self.transformer_class.from_pretrained(str(folder), torch_dtype=dtype)
        if device is not None:
            model = model.to(device)
        return model

    # -- running ------------------------------------------------------------------------------------------------
    def latent_channels(self, transformer: nn.Module) -> int:
        """Channels of the noised latents (the model's output channels; conditioning channels come extra)."""
        cfg = transformer.config
        return cfg.out_channels or cfg.in_channels

    def latent_shape(self, frames: int, height: int, width: int, *, batch: int = 1, channels: int | None = None):
        """Latent shape [B, C, F, H, W] of a clip of `frames` pixel frames at height x width (checks the VAE rules)."""
        g = self.geometry
        g.tokens_per_frame(height, width)  # validates the spatial size
        step = g.spatial_factor
        return (batch, channels or g.latent_channels, g.latent_frames(frames), height // step, width // step)

    def make_dummy_latents(
        self, transformer: nn.Module, batch: int, frames: int, height: int, width: int, *, seed: int = 0
    ) -> torch.Tensor:
        """Random latents [B, C, frames, height, width] (latent sizes) on the transformer's device and dtype."""
        gen = torch.Generator().manual_seed(seed)
        shape = (batch, self.latent_channels(transformer), frames, height, width)
        return torch.randn(shape, generator=gen).to(transformer.device, transformer.dtype)

    def make_dummy_conditions(
        self,
        transformer: nn.Module,
        batch: int,
        text_len: int | None = None,
        *,
        latent_shape: Sequence[int] | None = None,
        seed: int = 0,
        valid_text: int | Sequence[int] | None = None,
    ) -> dict[str, Any]:
        """Random conditions for `predict` (shapes of the real encoders; `valid_text` real tokens, rest padding)."""
        raise NotImplementedError

    def predict(
        self,
        transformer: nn.Module,
        latents: torch.Tensor,
        timestep: torch.Tensor | float,
        conditions: Mapping[str, Any],
    ) -> torch.Tensor:
        """The velocity `noise - x0` [B, C, F, H, W] of noised `latents` at noise level `timestep` (x1000)."""
        raise NotImplementedError

    def predict_joint(
        self, transformer: nn.Module, latents: torch.Tensor, timestep: torch.Tensor | float, conditions
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`predict`, and the velocities of the streams denoised with the video (FamilySpec.joint_latents, noised by
        the caller in `conditions`) by name; {} for a family without such streams."""
        return self.predict(transformer, latents, timestep, conditions), {}

    # -- helpers for subclasses ---------------------------------------------------------------------------------
    def _dummy_start(self, transformer: nn.Module, text_len: int | None, seed: int):
        """What `make_dummy_conditions` starts from: the config, a generator seeded with `seed` and the text length
        (the family's padded length where None)."""
        return transformer.config, torch.Generator().manual_seed(seed), self.text_len if text_len is None else text_len

    def _dummy_image_latents(
        self, transformer: nn.Module, latent_shape: Sequence[int] | None, gen: torch.Generator
    ) -> torch.Tensor | None:
        """Random latents for the input channels beyond the video latents' (image conditioning), None if none."""
        extra = transformer.config.in_channels - self.latent_channels(transformer)
        if not extra:
            return None
        if latent_shape is None:
            raise ValueError(f"latent_shape is needed for the {extra} image-conditioning channels of this model")
        b, _, f, h, w = latent_shape
        return self._randn((b, extra, f, h, w), gen, transformer)

    @staticmethod
    def _text_and_mask(conditions: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt states and their attention mask (all tokens real where the conditions give none)."""
        embeds = conditions["prompt_embeds"]
        mask = conditions.get("prompt_attention_mask")
        if mask is None:
            mask = torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
        return embeds, mask

    @staticmethod
    def _timesteps(timestep, latents: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=latents.device)
        if t.dim() == 0:
            t = t.expand(latents.shape[0])
        if t.dim() != 1 or t.shape[0] != latents.shape[0]:
            raise ValueError(f"timestep must be a number or [B={latents.shape[0]}], got shape {tuple(t.shape)}")
        return t.to(latents.dtype) if t.is_floating_point() else t.float().to(latents.dtype)

    @staticmethod
    def _text_mask(batch: int, text_len: int, valid_text, device) -> torch.Tensor:
        valid = [text_len] * batch if valid_text is None else valid_text
        valid = [valid] * batch if isinstance(valid, int) else list(valid)
        if len(valid) != batch or any(not 0 < v <= text_len for v in valid):
            raise ValueError(f"valid_text must give 1..{text_len} real tokens for each of {batch} samples: {valid}")
        return torch.arange(text_len, device=device)[None, :] < torch.tensor(valid, device=device)[:, None]

    @staticmethod
    def _randn(shape, gen: torch.Generator, transformer: nn.Module) -> torch.Tensor:
        return torch.randn(shape, generator=gen).to(transformer.device, transformer.dtype)


def _keeps_fp32(model: nn.Module, name: str) -> bool:
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    return any(k in name.split(".") for k in keep)


def cast_parameters(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Floating parameters to `dtype`, except the class's keep-in-fp32 modules (as diffusers' loading does)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.is_floating_point() and p.dtype != dtype and not _keeps_fp32(model, name):
                p.data = p.data.to(dtype)
    return model


def _materialise(model: nn.Module, device: torch.device, dtype: torch.dtype, init: str, seed: int) -> None:
    """Replace meta parameters by real ones on `device` (fp32 for the class's keep-in-fp32 modules)."""
    gen = None
    if init == "normal" and device.type != "meta":
        gen = torch.Generator(device=device).manual_seed(seed)
    for module_name, module in model.named_modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            full = f"{module_name}.{name}" if module_name else name
            dt = torch.float32 if _keeps_fp32(model, full) else dtype
            data = torch.empty(param.shape, dtype=dt, device=device)
            if gen is not None:
                _init_(data, name, gen)
            module._parameters[name] = nn.Parameter(data, requires_grad=param.requires_grad)
        for name, buf in list(module._buffers.items()):
            if buf is not None:
                module._buffers[name] = (
                    torch.empty_like(buf, device="meta") if device.type == "meta" else buf.to(device)
                )


@torch.no_grad()
def _init_(data: torch.Tensor, name: str, gen: torch.Generator) -> None:
    if data.dim() >= 2:
        fan_in = data[0].numel()
        data.normal_(0.0, fan_in**-0.5, generator=gen)
    elif name == "weight":
        data.fill_(1.0)
    else:
        data.zero_()


# -- registry ---------------------------------------------------------------------------------------------------
_REGISTRY: dict[str, ModelAdapter] = {}


def register(adapter: ModelAdapter) -> ModelAdapter:
    """Add an adapter instance under its family name (one file per family calls this at import)."""
    _REGISTRY[adapter.family] = adapter
    return adapter


def available_adapters() -> list[str]:
    _load_families()
    return sorted(_REGISTRY)


def get_adapter(name: str) -> ModelAdapter:
    """The adapter of a family by name ("wan", "wan22", "wan22_ti2v", "hunyuan", "hunyuan15", "mochi", "h3")."""
    _load_families()
    if name not in _REGISTRY:
        raise ValueError(f"family must be one of {sorted(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name]


def detect_adapter(transformer: nn.Module) -> ModelAdapter:
    """The adapter for a transformer instance, from its class (and config where a class serves several families).

    WanTransformer3DModel is "wan22_ti2v" when its latents have 48 channels, else "wan": Wan2.2 A14B experts share
    Wan2.1-14B's architecture and mask options, so name family="wan22" to tag them.
    """
    _load_families()
    for adapter in _REGISTRY.values():
        if adapter.matches(transformer):
            return adapter
    raise ValueError(
        f"no adapter for {type(transformer).__name__}; known families: {sorted(_REGISTRY)} "
        f"(pass family=... for a subclass of a supported class)"
    )


#: the adapter modules, radial/models/<FamilySpec.module>.py (one may register several families)
FAMILY_MODULES = tuple(dict.fromkeys(f"radial.models.{spec.module}" for spec in FAMILIES.values()))


def _load_families() -> None:
    """Import the family modules (each registers its adapters); a no-op after the first call."""
    import importlib

    for module in FAMILY_MODULES:
        importlib.import_module(module)
