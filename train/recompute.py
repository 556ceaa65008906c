"""The recompute budget, train.checkpoint_blocks: how many transformer blocks run under gradient checkpointing.

`all` checkpoints every block (least memory), `N` the last N (the others keep their activations and skip the
recomputed forward), `auto` measures on CUDA and checkpoints only as many as memory requires:
  step 1: every block checkpointed (compilation, optimizer state allocated);
  step 2: every block checkpointed, its peak measured;
  step 3: one block fewer, its peak measured: the difference is one block's activations;
  from step 4 on: as few blocks as fit in (1 - MARGIN) of the memory this process can use, agreed by every rank
  (the most checkpointed wins: ranks of a sequence-parallel group must recompute the same collectives).
The choice is logged once. On a CPU `auto` is `all` (nothing to measure), also logged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from radial.checkpointing import set_checkpointed_blocks
from train.memory_cap import memory_limit_bytes

#: share of the usable device memory left free by `auto` (layouts of other buckets, fragmentation, the allocator)
MARGIN = 0.15


def parse_checkpoint_blocks(value: str | int, num_blocks: int) -> int | str:
    """train.checkpoint_blocks as "auto", "all" or a count in [0, num_blocks]; ValueError naming the key."""
    text = str(value).strip().lower()
    if text in ("auto", "all"):
        return text
    try:
        count = int(text)
    except ValueError:
        count = -1
    if not 0 <= count <= num_blocks:
        raise ValueError(
            f"train.checkpoint_blocks={value!r}: expected auto, all or a number of blocks in [0, {num_blocks}]"
        )
    return count


def blocks_to_checkpoint(num_blocks: int, capacity: float, peak_all: float, per_block: float) -> int:
    """How many blocks must stay checkpointed for the step to peak under (1 - MARGIN) * capacity, given the peak
    with every block checkpointed and the extra peak of each block that keeps its activations (bytes)."""
    room = capacity * (1 - MARGIN) - peak_all
    if room <= 0:
        return num_blocks
    kept = num_blocks if per_block <= 0 else min(num_blocks, int(room // per_block))
    return num_blocks - kept


class RecomputeBudget:
    """Applies train.checkpoint_blocks to `blocks`; for `auto`, call `after_step()` after each training step."""

    def __init__(self, blocks: Sequence[nn.Module], setting: int | str, device: torch.device):
        self.blocks = list(blocks)
        self.device = device
        n = len(self.blocks)
        self.auto = setting == "auto" and device.type == "cuda"
        self.count = n if setting in ("auto", "all") else int(setting)
        set_checkpointed_blocks(self.blocks, self.count)
        self._steps = 0
        self._peak_all = 0.0
        self.decided: str | None = None
        if setting == "auto" and not self.auto:
            self.decided = f"train.checkpoint_blocks=auto: all {n} blocks checkpointed (no CUDA memory to measure)"

    def after_step(self) -> str | None:
        """Measure and, at the third step of `auto`, decide; returns the line to log once, when decided."""
        if not self.auto or self._steps >= 3:
            return None
        self._steps += 1
        peak = float(torch.cuda.max_memory_allocated(self.device))
        n = len(self.blocks)
        if self._steps == 2:
            self._peak_all = peak
            set_checkpointed_blocks(self.blocks, n - 1)
        elif self._steps == 3:
            per_block = peak - self._peak_all
            free, _ = torch.cuda.mem_get_info(self.device)
            capacity = min(free + torch.cuda.memory_reserved(self.device), memory_limit_bytes(self.device))
            self.count = _agreed_max(blocks_to_checkpoint(n, capacity, self._peak_all, per_block), self.device)
            set_checkpointed_blocks(self.blocks, self.count)
            gb = 2**30
            self.decided = (
                f"train.checkpoint_blocks=auto: {self.count} of {n} blocks checkpointed (step peak "
                f"{self._peak_all / gb:.1f} GB with all, +{per_block / gb:.2f} GB per block that keeps its "
                f"activations, {capacity / gb:.1f} GB usable, {MARGIN:.0%} kept free)"
            )
            torch.cuda.reset_peak_memory_stats(self.device)
            return self.decided
        torch.cuda.reset_peak_memory_stats(self.device)
        return None


def _agreed_max(count: int, device: torch.device) -> int:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return count
    value = torch.tensor([count], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())
