"""Validated options of the radial mask: block size, decay, attention sink and the model family's defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass

from radial.families import FAMILIES

#: each family's default attention sink (FamilySpec.sink), kept for the users of `radial.mask.MODEL_SINK`
MODEL_SINK = {name: spec.sink for name, spec in FAMILIES.items()}


@dataclass(frozen=True)
class MaskOptions:
    """Everything besides the layout that decides a radial mask; hashable, so it keys plan caches."""

    block_size: int = 128
    decay_factor: float = 1.0
    sink: bool = True
    decay_adjacent: bool = False
    # > 0: not radial but the temporal-window baseline (key frames within this distance, plus the sink frame)
    window_frames: int = 0

    @classmethod
    def create(
        cls,
        *,
        block_size: int = 128,
        decay_factor: float = 1.0,
        model: str = "wan",
        sink: bool | None = None,
        decay_adjacent: bool = False,
        window_frames: int = 0,
    ) -> MaskOptions:
        """Validate user values (errors name the argument) and resolve the model's default sink."""
        if model not in FAMILIES:
            raise ValueError(f"model must be one of {sorted(FAMILIES)}, got {model!r}")
        if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 16 or block_size % 16:
            raise ValueError(
                f"block_size must be a positive multiple of 16 (64 or 128 for the kernels), got {block_size!r}"
            )
        if isinstance(decay_factor, bool) or not isinstance(decay_factor, (int, float)):
            raise ValueError(f"decay_factor must be a positive number, got {decay_factor!r}")
        if not math.isfinite(decay_factor) or decay_factor <= 0:
            raise ValueError(f"decay_factor must be a positive number, got {decay_factor!r}")
        if sink is not None and not isinstance(sink, bool):
            raise ValueError(f"sink must be true, false or unset (model default), got {sink!r}")
        if not isinstance(decay_adjacent, bool):
            raise ValueError(f"decay_adjacent must be true or false, got {decay_adjacent!r}")
        if not isinstance(window_frames, int) or isinstance(window_frames, bool) or window_frames < 0:
            raise ValueError(f"window_frames must be an integer >= 0 (0 = radial), got {window_frames!r}")
        resolved = FAMILIES[model].sink if sink is None else sink
        return cls(block_size, float(decay_factor), resolved, decay_adjacent, window_frames)
