"""Density and the attention FLOP reduction a block mask promises, counted over real (unpadded) tokens."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class MaskStats:
    """Block density, token-level density over the real sequence, and the ideal attention speed-up."""

    num_blocks: int
    kept_blocks: int
    block_density: float
    token_density: float

    @property
    def ideal_speedup(self) -> float:
        """Dense attention FLOPs over the FLOPs of the kept blocks (both forward and backward scale alike)."""
        return 1.0 / self.token_density if self.token_density > 0 else float("inf")


def mask_stats(mask: torch.Tensor | np.ndarray, seq_len: int, block_size: int) -> MaskStats:
    """Statistics of an [nb, nb] block mask for a sequence of `seq_len` tokens (the last block may be partial)."""
    m = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    nb = m.shape[0]
    if m.shape != (nb, nb) or nb != -(-seq_len // block_size):
        raise ValueError(f"mask of shape {tuple(m.shape)} does not fit seq_len={seq_len}, block_size={block_size}")
    sizes = np.full(nb, block_size, dtype=np.int64)
    sizes[-1] = seq_len - (nb - 1) * block_size
    # Only the last block is partial, so the kept token pairs need just row sums and the last column.
    per_row = m.sum(axis=1, dtype=np.int64) * block_size - m[:, -1] * (block_size - sizes[-1])
    kept_tokens = float(per_row @ sizes)
    return MaskStats(nb * nb, int(m.sum()), float(m.mean()), kept_tokens / float(seq_len) ** 2)


def model_density(sparse_density: float, layers: int, dense_layers: int, steps: int = 1, dense_steps: int = 0) -> float:
    """The whole model's attention density: the sparse layers' density, dense layers and dense steps counted as 1."""
    sparse_layers = max(0, layers - dense_layers) / layers if layers else 0.0
    sparse_steps = max(0, steps - dense_steps) / steps if steps else 0.0
    return 1.0 - (1.0 - sparse_density) * sparse_layers * sparse_steps


def density_text(block_density: float, whole: float | None = None, counted: str = "dense layers") -> str:
    """The densities as every printout and picture names them: the sparse layers' block density, and the whole
    model's with `counted` (dense layers, steps) at density 1."""
    text = f"block density {block_density:.3f} (sparse layers)"
    return text if whole is None else f"{text}, {whole:.3f} whole model ({counted} counted)"
