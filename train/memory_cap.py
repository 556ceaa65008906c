"""train.memory_cap_gb / benchmarks' --memory-cap-gb: use at most N GB of the card, emulating a smaller one (24 or
48 GB measured on the lent 80 and 139 GB cards) through `torch.cuda.set_per_process_memory_fraction`: the caching
allocator then refuses allocations past the cap with the out-of-memory error a smaller card would give. The cap
counts as the card's memory for the planner (train/memory_plan.py) and for checkpoint_blocks=auto."""

from __future__ import annotations

import torch

from radial.errors import ConfigError

GIB = 2**30
_caps: dict[int, float] = {}  # device index -> cap in bytes


def apply_memory_cap(cap_gb: float, device: torch.device, key: str = "train.memory_cap_gb") -> float:
    """Cap this process's use of the CUDA `device` at cap_gb (0: no cap); returns the memory the run may use, GiB."""
    device = torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    if cap_gb <= 0:
        return total / GIB
    if cap_gb * GIB > total:
        raise ConfigError(f"{key}={cap_gb}: the card has only {total / GIB:.1f} GB; expected a cap at most that")
    torch.cuda.set_per_process_memory_fraction(cap_gb * GIB / total, index)
    _caps[index] = cap_gb * GIB
    return cap_gb


def memory_limit_bytes(device: torch.device) -> float:
    """The cap set on `device` by apply_memory_cap, in bytes (inf: none)."""
    if not _caps:
        return float("inf")
    device = torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _caps.get(index, float("inf"))
