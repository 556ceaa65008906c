"""Regional compilation: `torch.compile` on each transformer block, radial attention left outside the graphs.

As diffusers' `compile_repeated_blocks` does, every block is compiled in place (`nn.Module.compile`); the blocks share
their code, so one compiled graph serves all of them, and compiling takes seconds instead of the whole model's
minutes. The radial attention call (`RadialProcessor.attend`: the layout, the plan, the custom kernels
radial::sparse_attn_fwd / radial::fa4_attn_fwd) is excluded with `torch.compiler.disable`, so each block is two or
three graphs around an eager attention call: the compiler fuses the norms, modulation, RoPE, LoRA and MLP
elementwise work, and never guards on the per-forward layout. Gradient checkpointing (ours and diffusers') wraps
the compiled blocks from outside and keeps working, selective attention saving included.

Under DDP, dynamo's DDP optimizer (made for a whole-model graph: it splits the graph at gradient-bucket boundaries
so that all-reduce overlaps the backward) is turned off: each block's backward is already its own graph, and the
split loses the checkpoint tags of the graphs traced under gradient checkpointing (aot_autograd then fails in
`cleanup_recompute_tags`).

Under DeepSpeed ZeRO-3 the blocks compile and train correctly (tests/test_compile_parallel.py), but ZeRO-3's
parameter-gathering hooks on every module inside a block break its graph into per-module pieces, so little is fused.
(Making the blocks ZeRO-3 leaf modules, gathered at once, would keep the graphs whole; with gradient checkpointing
its backward met a released, empty parameter on the CPU, so it is not done.)

Layout changes (another bucket): the first one recompiles the graphs with dynamic shapes (dynamo's automatic
dynamic shapes), later ones reuse them; `CompileWatch` counts graphs so that every recompile is logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

BACKENDS = ("inductor", "aot_eager", "eager")


def compile_blocks(blocks: Sequence[nn.Module], *, backend: str = "inductor", mode: str | None = None) -> int:
    """Compile each block in place (`torch.compile` with `backend`, `mode`); returns how many were compiled."""
    if backend not in BACKENDS:
        raise ValueError(f"compile backend must be one of {list(BACKENDS)}, got {backend!r}")
    if not blocks:
        raise ValueError("no transformer blocks to compile")
    for block in blocks:
        block.compile(backend=backend, mode=mode)
    return len(blocks)


def without_ddp_optimizer() -> str | None:
    """Turn off dynamo's DDP optimizer (call when compiled blocks run inside DDP); a log line if it was on."""
    if not torch._dynamo.config.optimize_ddp:
        return None
    torch._dynamo.config.optimize_ddp = False
    return (
        "compile: dynamo's DDP optimizer off (torch._dynamo.config.optimize_ddp=False): the compiled blocks are "
        "separate graphs already, and its graph split breaks under gradient checkpointing"
    )


def graph_count() -> int:
    """Graphs dynamo has compiled in this process so far (every compiled region, every recompile)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@dataclass
class CompileWatch:
    """Counts the graphs compiled between calls of `check`; each new batch of graphs is one line for the log."""

    seen: int = field(default_factory=lambda: graph_count())
    checks: int = 0

    def check(self, layout: str) -> str | None:
        """A log line when graphs were compiled since the last call (the first time: the initial compilation)."""
        count, self.checks = graph_count(), self.checks + 1
        new, self.seen = count - self.seen, count
        if new <= 0:
            return None
        limit = torch._dynamo.config.recompile_limit
        what = "compiled" if self.checks == 1 else "recompiled (a new layout; the next ones reuse dynamic shapes)"
        return (
            f"compile: {new} graphs {what} for layout {layout}, {count} in all; a block past "
            f"{limit} recompiles (torch._dynamo.config.recompile_limit) runs eagerly"
        )
