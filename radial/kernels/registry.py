"""The attention backends as data: each kernel module (radial/kernels/<name>.py) registers one `Backend` here (its
name, attention function, determinism, limits and fallback), and everything that names or picks a backend reads this
registry: `radial_attention`'s dispatch, `auto`, the extrapolation-decay fallback, the config's and the CLIs' choices,
the run summary. Adding a backend: a kernel file that calls `register`, imported by radial/kernels/__init__.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from radial.kernels.call import AttentionCall

log = logging.getLogger("radial.kernels")
_logged: set[str] = set()

#: (device, block_size, deterministic) -> None when the backend can run there, else why not (a short sentence)
Reason = Callable[[torch.device, int, bool], "str | None"]


def runs_anywhere(device: torch.device, block_size: int, deterministic: bool) -> str | None:
    """The limits of a backend without any: it runs on every device, block size and run."""
    return None


def needs_cuda(device: torch.device, block_size: int, deterministic: bool) -> str | None:
    """The limit of a CUDA-only backend."""
    return None if device.type == "cuda" else f"device {device} is not CUDA"


@dataclass(frozen=True)
class Backend:
    """One attention backend: what it is and where it runs."""

    name: str
    function: Callable[[AttentionCall], torch.Tensor]  # the call (radial.kernels.call) -> out [B, S, H, D]
    deterministic: bool  # the same bits every run: allowed with attention.deterministic=true
    description: str
    # Why an explicit request cannot run (then `fallback` runs, logged); None where it can.
    unsupported_reason: Reason = runs_anywhere
    fallback: str | None = None
    # `auto` picks the first registered backend with auto=True whose auto_reason is None.
    auto: bool = False
    auto_reason: Reason | None = None  # None: unsupported_reason
    score_bias: bool = False  # takes an extrapolation decay (radial.frame_decay) as a score bias

    def why_not_auto(self, device: torch.device, block_size: int, deterministic: bool) -> str | None:
        """Why `auto` passes this backend over (None: it picks it)."""
        return (self.auto_reason or self.unsupported_reason)(device, block_size, deterministic)


_REGISTRY: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Add a backend under its name (each kernel module calls this once, at import)."""
    _REGISTRY[backend.name] = backend
    return backend


def backend_names() -> tuple[str, ...]:
    """Every registered backend's name, in registration order."""
    return tuple(_REGISTRY)


def backend_choices() -> tuple[str, ...]:
    """What a user may ask for: `auto` and every backend (the config's and the CLIs' choices)."""
    return ("auto", *_REGISTRY)


def get(name: str) -> Backend:
    """The backend registered as `name`; a ValueError listing the choices for any other."""
    if name not in _REGISTRY:
        raise ValueError(f"backend must be one of {list(backend_choices())}, got {name!r}")
    return _REGISTRY[name]


def log_once(message: str, level: int = logging.WARNING) -> None:
    """Log a fallback (a warning) or a choice (info) once per process (each attention call would repeat it)."""
    if not torch.compiler.is_compiling() and message not in _logged:
        _logged.add(message)
        log.log(level, message)


def resolve(requested: str, device: torch.device, block_size: int = 128, deterministic: bool | None = None) -> str:
    """The backend that runs a request on `device` with `block_size` (`deterministic`: the run's setting; None reads
    torch's flag): `auto` is the first auto backend that can run there; an explicit backend that cannot runs its
    fallback. Choices and fallbacks on CUDA are logged once."""
    device = torch.device(device)
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    if requested == "auto":
        skipped = None
        for b in _REGISTRY.values():
            if not b.auto:
                continue
            why = b.why_not_auto(device, block_size, deterministic)
            if why is None:
                if device.type == "cuda":
                    if skipped is None:
                        log_once(f"attention backend auto -> {b.name} ({b.description})", logging.INFO)
                    else:
                        log_once(f"attention backend auto -> {b.name}: {skipped}")
                return b.name
            skipped = skipped or why
        raise RuntimeError(f"no attention backend can run on {device} (registered: {list(_REGISTRY)})")
    name = requested
    seen = set()
    while name not in seen:
        seen.add(name)
        b = get(name)
        why = b.unsupported_reason(device, block_size, deterministic)
        if why is None or b.fallback is None:
            return name
        log_once(f"attention backend {name} -> {b.fallback}: {why}")
        name = b.fallback
    return name


def with_score_bias(name: str, device: torch.device) -> str:
    """The backend that runs attention with an extrapolation decay: `name` where it takes a score bias, else the
    first score-bias backend that runs on `device` (logged once)."""
    if get(name).score_bias:
        return name
    device = torch.device(device)
    for b in _REGISTRY.values():
        if b.score_bias and b.why_not_auto(device, 128, False) is None:
            log_once(f"attention backend {name} -> {b.name}: attention.extrapolation_decay needs a score bias")
            return b.name
    raise RuntimeError(f"no registered backend takes a score bias on {device}")
