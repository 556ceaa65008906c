"""`radial.inject`: radial attention into a diffusers video transformer, undone by `handle.remove()`.

    handle = radial.inject(pipe.transformer, backend="auto", dense_layers=2)
    ...                               # any resolution or frame count, one plan per layout (cached)
    handle.remove()                   # stock processors back

What changes: the processors of the attention layers the family's adapter names (Wan `attn1`, HunyuanVideo's
double/single-stream joint attention, Mochi's joint attention) become radial processors that reuse every stock
step (projections, norms, rotary embeddings, output projections, so PEFT LoRA layers keep working) and replace
only the attention call. A forward pre-hook reads the latent grid of each call (see `radial.models.context`).

Dense sampling steps (`dense_timesteps`, inference): the handle must be told the step. Either call
`handle.set_step(i)` before denoising step i, or call `handle.set_step(0)` once and pass
`callback_on_step_end=handle.step_callback` to a diffusers pipeline. With `dense_timesteps > 0` a forward without a
known step raises instead of guessing.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import replace

from torch import nn

from radial.attention_settings import AttentionSettings
from radial.errors import ConfigError
from radial.models.context import InjectionState, LatentGrid, RadialProcessor
from radial.plan import RadialPlan
from radial.rope_extension import RiflexHook


class RadialHandle:
    """An injection into one transformer: its options, the last layout and plan, the step, and `remove()`."""

    def __init__(
        self,
        transformer: nn.Module,
        adapter,
        state: InjectionState,
        layers: list[nn.Module],
        stocks: list,
        extras: list | None = None,
    ):
        self.transformer = transformer
        self.adapter = adapter
        self.state = state
        self._layers = layers
        self._stocks = stocks
        self._extras = extras or []  # other hooks of the injection (RIFLEx on the rotary module): .remove()
        self._frames: list[tuple | None] = []
        self._signature = inspect.signature(transformer.forward)
        self._hooks = [
            transformer.register_forward_pre_hook(self._before_forward, with_kwargs=True),
            transformer.register_forward_hook(self._after_forward, with_kwargs=True, always_call=True),
        ]
        self.active = True

    # -- options and introspection ------------------------------------------------------------------------------
    @property
    def config(self) -> AttentionSettings:
        """The attention settings of this injection (what the LoRA header records)."""
        return self.state.config

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def num_layers(self) -> int:
        return len(self._layers)

    @property
    def last_grid(self) -> LatentGrid | None:
        """The latent token grid of the last forward call."""
        record = self.state.last_record
        return None if record is None else record.grid

    @property
    def last_plan(self) -> RadialPlan | None:
        """The plan of the last radial (not dense) attention call: density, layout, block size."""
        return self.state.last_plan

    def set_step(self, step: int | None) -> None:
        """The sampling step index of the next forward calls (None: unknown); steps < dense_timesteps run dense."""
        if step is not None and (not isinstance(step, int) or isinstance(step, bool) or step < 0):
            raise ValueError(f"step must be an integer >= 0 or None, got {step!r}")
        self.state.step = step

    def step_callback(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        """For a diffusers pipeline's `callback_on_step_end`: the next call is step `step + 1`."""
        self.set_step(step + 1)
        return callback_kwargs

    # -- removal ------------------------------------------------------------------------------------------------
    def remove(self) -> None:
        """Restore the stock processors and drop the hooks (idempotent). A processor replaced since is kept."""
        if not self.active:
            return
        for attn, stock in zip(self._layers, self._stocks, strict=True):
            if _get_processor(attn) is not None and isinstance(_get_processor(attn), RadialProcessor):
                _set_processor(attn, stock)
        for hook in [*self._hooks, *self._extras]:
            hook.remove()
        self.active = False

    def __enter__(self) -> RadialHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        c = self.config
        return (
            f"RadialHandle(family={self.family!r}, layers={self.num_layers}, backend={c.backend!r}, "
            f"block_size={c.block_size}, decay_factor={c.decay_factor}, dense_layers={c.dense_layers}, "
            f"dense_timesteps={c.dense_timesteps}, active={self.active})"
        )

    # -- hooks --------------------------------------------------------------------------------------------------
    def _before_forward(self, module, args, kwargs):
        self._frames.append(None)  # popped by _after_forward, which runs even when this hook raises
        try:
            arguments = self._signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            return None  # the forward itself will report the bad call
        grid = self.adapter.forward_grid(module, arguments)
        record = self.state.begin(grid)
        saved = None
        checkpoint_fn = getattr(module, "_gradient_checkpointing_func", None)
        if getattr(module, "gradient_checkpointing", False) and checkpoint_fn is not None:
            saved = checkpoint_fn
            module._gradient_checkpointing_func = self.state.bind_checkpoint_function(checkpoint_fn, record)
        self._frames[-1] = (record, saved)
        return None

    def _after_forward(self, module, args, kwargs, output):
        frame = self._frames.pop() if self._frames else None
        if frame is not None:
            record, saved = frame
            if saved is not None:
                module._gradient_checkpointing_func = saved
            self.state.end(record)
        return None


class RadialHandles:
    """Handles of several transformers of one pipeline (Wan2.2 A14B's two experts), driven together."""

    def __init__(self, handles: dict[str, RadialHandle]):
        self.handles = handles

    def __getitem__(self, name: str) -> RadialHandle:
        return self.handles[name]

    def __iter__(self) -> Iterator[RadialHandle]:
        return iter(self.handles.values())

    def set_step(self, step: int | None) -> None:
        for h in self:
            h.set_step(step)

    def step_callback(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        self.set_step(step + 1)
        return callback_kwargs

    def remove(self) -> None:
        for h in self:
            h.remove()

    def __enter__(self) -> RadialHandles:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def inject(
    transformer: nn.Module,
    settings: AttentionSettings | None = None,
    *,
    family: str | None = None,
    fuse_qkv: bool = False,
    **options,
) -> RadialHandle:
    """Put radial attention into `transformer` (family detected from its class unless named) and return the handle.

    `settings` (radial.AttentionSettings, default: its defaults) with `options` (any of its fields, by name) on top:
    backend: "auto" (fa4 on Hopper with flash-attn-4 installed, else triton on CUDA, reference elsewhere), or one of
        radial.kernels.registry.backend_names().
    dense_layers: the first k attention layers run dense (the paper trained with 2).
    dense_timesteps: the first t sampling steps run dense (inference; tell the handle the step, see module doc).
    block_size, decay_factor, sink, decay_adjacent: the radial mask options (`radial.mask.MaskOptions`).
    window_frames > 0: a temporal sliding-window mask of that many frames each side instead (a sparse baseline).
    Training-free length extension, for forwards longer than `train_frames` latent frames (the base model's):
    rope_extension="riflex" lowers the intrinsic temporal RoPE frequency (`radial.rope_extension`; Wan and
    HunyuanVideo), extrapolation_decay=lambda < 1 multiplies the weights of keys >= train_frames frames away by
    lambda (`radial.frame_decay`; runs on the reference or flex backend). backend="dense" with either is a dense
    model with the extension only.
    fuse_qkv: the q, k, v projections (and their LoRA) of the radial layers as one matmul each (`radial.fused`).
    Dense layers and steps use the "dense" backend (flash-attn-4 dense or SDPA) with the same key padding.
    """
    from radial.models import detect_adapter, get_adapter

    if not isinstance(transformer, nn.Module):
        raise ValueError(f"transformer must be a diffusers transformer module, got {type(transformer).__name__}")
    settings = replace(settings or AttentionSettings(), **options)
    adapter = get_adapter(family) if family is not None else detect_adapter(transformer)
    adapter.check_transformer(transformer)
    layers = adapter.attention_layers(transformer)
    if any(isinstance(_get_processor(attn), RadialProcessor) for attn in layers):
        raise ValueError("this transformer already has radial attention; call handle.remove() before injecting again")
    if settings.dense_layers > len(layers):
        raise ValueError(f"dense_layers={settings.dense_layers} exceeds the model's {len(layers)} attention layers")
    if not isinstance(fuse_qkv, bool):
        raise ValueError(f"fuse_qkv must be true or false, got {fuse_qkv!r}")
    extras = []
    if settings.rope_extension == "riflex":
        spec = adapter.rotary_spec(transformer)
        if spec is None:
            raise ConfigError(
                f"attention.rope_extension=riflex is not supported for family {adapter.family!r} (supported: the Wan "
                "families and hunyuan)"
            )
        extras.append(RiflexHook(spec, settings.train_frames))
    state = InjectionState(settings, adapter.mask_model, fuse_qkv)
    stocks = [_get_processor(attn) for attn in layers]
    for index, (attn, stock) in enumerate(zip(layers, stocks, strict=True)):
        _set_processor(attn, adapter.make_processor(state, index, stock))
    return RadialHandle(transformer, adapter, state, layers, stocks, extras)


def inject_pipeline(pipe, settings: AttentionSettings | None = None, **kwargs) -> RadialHandles:
    """`inject` every transformer of a diffusers pipeline (`transformer`, and Wan2.2's `transformer_2`)."""
    handles = {}
    for name in ("transformer", "transformer_2"):
        module = getattr(pipe, name, None)
        if module is not None:
            handles[name] = inject(module, settings, **kwargs)
    if not handles:
        raise ValueError(f"{type(pipe).__name__} has no transformer to inject")
    return RadialHandles(handles)


def _get_processor(attn: nn.Module):
    return attn.get_processor() if hasattr(attn, "get_processor") else getattr(attn, "processor", None)


def _set_processor(attn: nn.Module, processor) -> None:
    if hasattr(attn, "set_processor"):
        attn.set_processor(processor)
    else:
        attn.processor = processor
