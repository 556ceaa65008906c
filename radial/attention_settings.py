"""The attention settings: one frozen object from the config to the kernel and into a LoRA's header, whole.

    settings = AttentionSettings(backend="auto", dense_layers=2, window_frames=3)
    radial.inject(transformer, settings)                       # the injector, its plans and its kernel calls
    header = settings.recorded("triton")                       # what a LoRA's header stores (`attention`)
    AttentionSettings.restore(header, dense_layers=1)          # what train.generate samples with (CLI on top)

The trainer's `attention.*` section converts to it in one place (train.config.AttentionConfig.settings), the
generator's RadialSettings is one (plus `enabled`), the injector holds one, and the plans take its mask options.
A new option is one field here: the config key, the header and the restore follow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar

from radial.errors import ConfigError
from radial.frame_decay import FrameDecay
from radial.kernels import registry
from radial.mask import MaskOptions
from radial.rope_extension import ROPE_EXTENSIONS

#: the LoRA header's field holding the whole object, and the per-key field of LoRAs written before it
HEADER_KEY = "attention"
LEGACY_HEADER_KEY = "radial"


@dataclass(frozen=True)
class AttentionSettings:
    """Radial attention options; errors name the config key `attention.<field>`."""

    backend: str = "auto"  # a registered backend or auto (radial/kernels/registry.py)
    decay_factor: float = 1.0  # < 1 narrows the bands (sparser)
    dense_layers: int = 0  # the first k attention layers run dense (the paper trained with 2)
    dense_timesteps: int = 0  # the first t sampling steps run dense (inference)
    block_size: int = 128
    sink: bool | None = None  # key frame 0 dense; None: the family's default (FamilySpec.sink)
    decay_adjacent: bool = False  # a band already at frame distance 1 (higher sparsity)
    window_frames: int = 0  # > 0: the temporal-window mask of that many frames each side instead of radial
    # Training-free length extension (both need train_frames > 0): radial.rope_extension, radial.frame_decay.
    train_frames: int = 0  # latent frames the base model was trained on (0 = unknown)
    rope_extension: str = "none"  # "riflex": lower the intrinsic temporal RoPE frequency past train_frames
    extrapolation_decay: float = 1.0  # lambda < 1: weights of keys >= train_frames frames away times lambda
    deterministic: bool = (
        False  # torch's deterministic algorithms for the run (`auto` then picks a deterministic kernel)
    )

    #: what the machine that runs decides: recorded in a LoRA's header, never restored from it
    RUN_LOCAL: ClassVar[tuple[str, ...]] = ("backend", "deterministic")

    def __post_init__(self) -> None:
        _choice("backend", self.backend, registry.backend_choices())
        if isinstance(self.decay_factor, bool) or not isinstance(self.decay_factor, int | float):
            raise ConfigError(f"attention.decay_factor={self.decay_factor!r}: expected a number > 0")
        if not (math.isfinite(self.decay_factor) and self.decay_factor > 0):
            raise ConfigError(f"attention.decay_factor={self.decay_factor!r}: expected > 0")
        for name in ("dense_layers", "dense_timesteps", "window_frames"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"attention.{name}={value!r}: expected an integer >= 0")
        for name in ("decay_adjacent", "deterministic"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"attention.{name}={getattr(self, name)!r}: expected true or false")
        check_length_extension(self.train_frames, self.rope_extension, self.extrapolation_decay)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names (= the config keys under `attention.`, the CLI's options, the header's keys)."""
        return tuple(f.name for f in fields(cls))

    @property
    def extends_length(self) -> bool:
        """Whether a training-free length extension is on (it needs the injection even with dense attention)."""
        return self.rope_extension != "none" or self.extrapolation_decay != 1.0

    @property
    def frame_decay(self) -> FrameDecay | None:
        """The extrapolation decay of the attention calls (None when extrapolation_decay is 1)."""
        if self.extrapolation_decay == 1.0:
            return None
        return FrameDecay(float(self.extrapolation_decay), self.train_frames)

    def mask_options(self, mask_model: str) -> MaskOptions:
        """The options of the mask, with `mask_model`'s default sink (what keys the plans)."""
        return MaskOptions.create(
            block_size=self.block_size,
            decay_factor=self.decay_factor,
            model=mask_model,
            sink=self.sink,
            decay_adjacent=self.decay_adjacent,
            window_frames=self.window_frames,
        )

    def attention(self) -> AttentionSettings:
        """These settings as a plain AttentionSettings (a subclass's own fields dropped)."""
        return AttentionSettings(**{name: getattr(self, name) for name in AttentionSettings.names()})

    def recorded(self, backend_ran: str) -> dict[str, Any]:
        """What a LoRA's header stores under `attention`: every option, `auto` resolved to the backend that ran."""
        return asdict(replace(self.attention(), backend=backend_ran))

    @classmethod
    def restore(cls, recorded: Mapping[str, Any], **overrides):
        """Settings as a LoRA header recorded them (`recorded_settings`), but for the machine's own (RUN_LOCAL) and
        keys this version does not know, with `overrides` that are not None on top (the CLI's options)."""
        known = set(cls.names())
        values = {k: v for k, v in recorded.items() if k in known and k not in cls.RUN_LOCAL}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def recorded_settings(info: Mapping[str, Any]) -> dict[str, Any]:
    """The attention settings a LoRA header (radial.lora metadata) records, {} for none: the whole object, or the
    per-key fields (`radial`) of LoRAs written before it."""
    return dict(info.get(HEADER_KEY) or info.get(LEGACY_HEADER_KEY) or {})


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"attention.{name}={value!r}: expected one of {list(choices)}")


def check_length_extension(train_frames: int, rope_extension: str, extrapolation_decay: float) -> None:
    """The length-extension options (`attention.train_frames`, `.rope_extension`, `.extrapolation_decay`) in range
    and consistent; a ConfigError naming the key otherwise."""
    if not isinstance(train_frames, int) or isinstance(train_frames, bool) or train_frames < 0:
        raise ConfigError(f"attention.train_frames={train_frames!r}: expected an integer >= 0 (0 = unknown)")
    if rope_extension not in ROPE_EXTENSIONS:
        raise ConfigError(f"attention.rope_extension={rope_extension!r}: expected one of {list(ROPE_EXTENSIONS)}")
    if isinstance(extrapolation_decay, bool) or not isinstance(extrapolation_decay, int | float):
        raise ConfigError(f"attention.extrapolation_decay={extrapolation_decay!r}: expected a number in (0, 1]")
    if not 0.0 < extrapolation_decay <= 1.0:
        raise ConfigError(
            f"attention.extrapolation_decay={extrapolation_decay!r}: expected 0 < lambda <= 1 (1 = no decay)"
        )
    for key, on in (("rope_extension", rope_extension != "none"), ("extrapolation_decay", extrapolation_decay < 1)):
        if on and train_frames == 0:
            raise ConfigError(
                f"attention.{key} needs attention.train_frames: set it to the latent frames the base model was "
                "trained on (> 0)"
            )
