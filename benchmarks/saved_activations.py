"""What each transformer block saves for its backward, by dtype: a census of the tensors autograd keeps.

The step is train_step.py's (the trainer's `build_model`: radial attention, PEFT LoRA rank 128, bf16 frozen weights,
fp32 LoRA parameters, Accelerate bf16 autocast, `train.step.flow_matching_loss`) with no block checkpointed
(train.checkpoint_blocks=0), so every block keeps its activations. After warm-up steps (compilation), one forward
runs under `torch.autograd.graph.saved_tensors_hooks`: every saved tensor is recorded once per storage (a tensor saved
twice, or a view of a saved tensor, counts once), attributed to the block running; model parameters are counted
apart. Then backward runs, so the step is a real one. `--compile` runs the trainer's train.compile path (inductor on
CUDA): AOTAutograd's compiled functions save through ctx.save_for_backward, which the hooks see.

    python benchmarks/saved_activations.py --out $OUT --case wan4x --layers 2 [--compile]
    python benchmarks/saved_activations.py --out $OUT --smoke --device cpu --compile --compile-backend aot_eager

Sizes read in "hidden states": a block's hidden-state tensor [B, S, D] in bf16 (B*S*D*2 bytes).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.train_step import CASES, _build, _cuda, _reset_memory, _sync  # noqa: E402

OUTSIDE = "outside"
# Source frames worth naming for a saved tensor (the line of the model that saved it; eager mode).
SITE_HINTS = ("diffusers", "peft", "radial", "torch/nn/functional")


@dataclass
class Saved:
    """One distinct storage saved for backward: the first tensor saved on it, and the storage's bytes."""

    block: str
    dtype: str
    shape: list[int]
    numel: int
    bytes: int
    site: str = ""  # where in the model it was saved (large tensors only)


@dataclass
class BlockMemory:
    """What one block's forward did to the allocator (CUDA): allocated bytes after minus before, and its hidden size."""

    hidden_numel: int = 0
    allocated_delta: int = 0


def _key(t: torch.Tensor) -> tuple:
    try:
        storage = t.untyped_storage()
        return (str(t.device), storage.data_ptr(), storage.nbytes())
    except (RuntimeError, NotImplementedError):  # tensors without a storage (subclasses): one entry each
        return ("object", id(t), t.numel() * t.element_size())


def _site() -> str:
    """The innermost two model-code lines (of different files) on the stack: the op's line and its caller's."""
    found: list[str] = []
    files: set[str] = set()
    for frame in reversed(traceback.extract_stack()[:-3]):
        if any(h in frame.filename for h in SITE_HINTS) and frame.filename not in files:
            files.add(frame.filename)
            short = frame.filename.split("site-packages/")[-1].split("/radial/", 1)[-1]
            found.append(f"{short}:{frame.lineno} {frame.name}: {(frame.line or '').strip()[:90]}")
            if len(found) == 2:
                break
    return " <- ".join(found)


def _first_tensor(value) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        return next((t for t in value if isinstance(t, torch.Tensor)), None)
    return None


@dataclass
class SavedTensorCensus:
    """Saved-for-backward tensors of a forward, one record per storage, by block (`blocks[i]` -> "block i")."""

    blocks: Sequence[nn.Module]
    exclude: Sequence[torch.Tensor] = ()  # parameters and buffers: saved, but not activations
    records: dict[tuple, Saved] = field(default_factory=dict)
    saves: int = 0  # pack calls, duplicates included
    excluded_bytes: int = 0
    memory: dict[str, BlockMemory] = field(default_factory=dict)
    where: str = OUTSIDE
    _hidden: int = 0
    _excluded: set = field(default_factory=set)
    _param_ptrs: set = field(default_factory=set)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.saves += 1
        key = _key(t)
        if key in self._excluded:
            return t
        if key[:2] in self._param_ptrs:
            self._excluded.add(key)
            self.excluded_bytes += key[2]
            return t
        if key not in self.records:
            site = _site() if self._hidden and t.numel() >= self._hidden else ""
            self.records[key] = Saved(self.where, str(t.dtype).removeprefix("torch."), list(t.shape), t.numel(),
                                      key[2], site)  # fmt: skip
        return t

    @contextmanager
    def watching(self) -> Iterator[SavedTensorCensus]:
        """Track which block runs (forward hooks on each block) inside the context. Enter it before compiled blocks
        first run: dynamo guards on module hooks, and hooks added later would recompile the blocks."""
        handles = []
        for i, block in enumerate(self.blocks):
            handles.append(block.register_forward_pre_hook(self._enter(f"block {i}"), with_kwargs=True))
            handles.append(block.register_forward_hook(self._leave(f"block {i}")))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    @contextmanager
    def recording(self) -> Iterator[SavedTensorCensus]:
        """Record the saved tensors of the forward run inside (within `watching`, to attribute them to blocks)."""
        self._param_ptrs = {_key(p)[:2] for p in self.exclude}
        self.memory.clear()
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
            yield self

    def _enter(self, name: str):
        # Run eagerly under train.compile (a graph break at the block's edge): a traced hook's side effects would
        # be replayed after the graph, when its saved tensors are already packed.
        @torch.compiler.disable
        def hook(module, args, kwargs):
            self.where = name
            hidden = _first_tensor(kwargs.get("hidden_states"))
            hidden = _first_tensor(args) if hidden is None else hidden
            self._hidden = hidden.numel() if hidden is not None else 0
            mem = self.memory.setdefault(name, BlockMemory())
            mem.hidden_numel = self._hidden
            mem.allocated_delta = -torch.cuda.memory_allocated() if _cuda() else 0

        return hook

    def _leave(self, name: str):
        @torch.compiler.disable
        def hook(module, args, output):
            self.where, self._hidden = OUTSIDE, 0
            if _cuda():
                self.memory[name].allocated_delta += torch.cuda.memory_allocated()

        return hook

    def summary(self) -> dict[str, dict]:
        """Per block (and "outside", "total"): bytes by dtype, tensor count, and the large fp32 tensors (numel >= the
        block's hidden state), with sizes in bf16 hidden states where the block's hidden size is known."""
        names = [f"block {i}" for i in range(len(self.blocks))] + [OUTSIDE, "total"]
        out: dict[str, dict] = {}
        unit_numel = max((m.hidden_numel for m in self.memory.values()), default=0)
        for name in names:
            recs = [r for r in self.records.values() if name == "total" or r.block == name]
            hidden = self.memory[name].hidden_numel if name in self.memory else unit_numel
            by_dtype: dict[str, int] = {}
            for r in recs:
                by_dtype[r.dtype] = by_dtype.get(r.dtype, 0) + r.bytes
            unit = 2 * hidden
            large = [asdict(r) for r in recs if r.dtype == "float32" and hidden and r.numel >= hidden]
            sites: dict[str, int] = {}  # every tensor of hidden size or more (any dtype), by where it was saved
            for r in recs:
                if r.site:
                    sites[f"{r.dtype} {r.site}"] = sites.get(f"{r.dtype} {r.site}", 0) + r.bytes
            out[name] = {
                "tensors": len(recs),
                "bytes": sum(by_dtype.values()),
                "bytes_by_dtype": by_dtype,
                "hidden_numel": hidden,
                "hidden_states": sum(by_dtype.values()) / unit if unit else None,
                "hidden_states_by_dtype": {k: v / unit for k, v in by_dtype.items()} if unit else None,
                "large_fp32": large,
                "large_fp32_bytes": sum(r["bytes"] for r in large),
                "large_by_site": dict(sorted(sites.items(), key=lambda kv: -kv[1])),
                "allocated_delta": self.memory[name].allocated_delta if name in self.memory and _cuda() else None,
            }
        return out


def census_step(args, compile_: bool) -> dict:
    """Build the case's model (no checkpointing), warm up, then one recorded forward and a backward."""
    from accelerate import Accelerator

    from radial.compile import graph_count
    from train.flow import FlowMatching
    from train.step import flow_matching_loss

    _reset_memory()
    torch._dynamo.reset()
    step_args = argparse.Namespace(**{**vars(args), "compile": compile_})
    acc = Accelerator(mixed_precision="bf16")
    cfg, parts, latents, conds, _ = _build(
        args.case, args.backend, step_args, torch.device(args.device), torch.bfloat16
    )
    model = acc.prepare(parts.transformer)
    flow = FlowMatching(shift=cfg.model.flow_shift)
    model_dtype = next(p.dtype for p in model.parameters() if not p.requires_grad)
    blocks = parts.adapter.blocks(parts.transformer)

    def forward(seed: int) -> torch.Tensor:
        with acc.autocast():
            return flow_matching_loss(parts.adapter, model, flow, latents, conds, torch.Generator().manual_seed(seed),
                                      model_dtype)  # fmt: skip

    census = SavedTensorCensus(blocks, exclude=[*model.parameters(), *model.buffers()])
    with census.watching():
        for i in range(args.warmup):  # compilation and the first-step allocations, outside the census
            acc.backward(forward(i))
            model.zero_grad(set_to_none=True)
        _sync()
        _reset_memory()
        graphs = graph_count()
        before = torch.cuda.memory_allocated() if _cuda() else 0
        with census.recording():
            loss = forward(100)
        _sync()
        recompiled = graph_count() - graphs
    after_forward = torch.cuda.memory_allocated() if _cuda() else 0
    forward_peak = torch.cuda.max_memory_allocated() if _cuda() else 0
    acc.backward(loss)
    _sync()
    grads = sum(1 for p in model.parameters() if p.requires_grad and p.grad is not None)
    grid = parts.handle.last_grid
    result = {
        "case": args.case,
        "compile": cfg.train.compile,
        "compile_backend": cfg.train.compile_backend if compile_ else None,
        "graphs": graph_count() if compile_ else 0,
        "graphs_compiled_in_census": recompiled,  # 0: the census measured the warm-up's compiled graphs
        "attention_backend": parts.backend,
        "blocks": len(blocks),
        "checkpointed_blocks": parts.recompute.count if parts.recompute is not None else 0,
        "tokens": grid.video_tokens,
        "pack_calls": census.saves,
        "parameter_bytes_saved": census.excluded_bytes,
        "loss": float(loss.detach()),
        "lora_grads": grads,
        "memory": {
            "forward_allocated_delta": after_forward - before if _cuda() else None,
            "forward_peak_delta": forward_peak - before if _cuda() else None,
            "backward_peak": torch.cuda.max_memory_allocated() if _cuda() else None,
        },
        "census": census.summary(),
    }
    parts.handle.remove()
    acc.free_memory()
    _reset_memory()
    return result


def _gb(n: float | None) -> str:
    return "" if n is None else f"{n / 2**30:.3f}"


def table(rows: list[dict]) -> str:
    """Markdown: one line per mode and block, sizes in GB and in bf16 hidden states."""
    dtypes = sorted({d for r in rows for c in r["census"].values() for d in c["bytes_by_dtype"]})
    head = "| mode | where | tensors | GB | hidden states | " + " | ".join(f"{d} GB" for d in dtypes)
    head += " | large fp32 (GB, hidden states) | allocated delta GB |"
    lines = [head, "|" + "---|" * (7 + len(dtypes))]
    for r in rows:
        mode = f"compiled ({r['compile_backend']})" if r["compile"] else "eager"
        for where, c in r["census"].items():
            hs = c["hidden_states"]
            large_hs = c["large_fp32_bytes"] / (2 * c["hidden_numel"]) if c["hidden_numel"] else None
            cells = " | ".join(_gb(c["bytes_by_dtype"].get(d, 0)) for d in dtypes)
            large = f"{len(c['large_fp32'])}: {_gb(c['large_fp32_bytes'])}" + (
                f", {large_hs:.2f}" if large_hs is not None else ""
            )
            lines.append(
                f"| {mode} | {where} | {c['tensors']} | {_gb(c['bytes'])} | {'' if hs is None else f'{hs:.2f}'} "
                f"| {cells} | {large} | {_gb(c['allocated_delta'])} |"
            )
    return "\n".join(lines)


def large_list(rows: list[dict]) -> str:
    """The large fp32 tensors of each mode's blocks, with where they were saved."""
    lines = []
    for r in rows:
        mode = "compiled" if r["compile"] else "eager"
        for where, c in r["census"].items():
            if where == "total":
                continue
            for t in c["large_fp32"]:
                lines.append(f"- {mode}, {where}: {t['shape']} {_gb(t['bytes'])} GB {t['site']}")
    return "\n".join(lines)


def site_list(rows: list[dict]) -> str:
    """Per mode, the last block's hidden-size-or-larger saved tensors: bytes by dtype and the lines that saved them."""
    lines = []
    for r in rows:
        mode = "compiled" if r["compile"] else "eager"
        for where, c in r["census"].items():
            # The blocks share their code; the last stands for all but the first, whose input needs no gradient
            # (the frozen patch embedding makes it), so it keeps less (no norm1 input).
            if where == f"block {r['blocks'] - 1}":
                for site, n in c["large_by_site"].items():
                    hs = n / (2 * c["hidden_numel"])
                    lines.append(f"- {mode}, {where}: {_gb(n)} GB ({hs:.2f} hidden states) {site}")
    return "\n".join(lines)


def write_results(rows: list[dict], args) -> str:
    """saved_activations.json and .md under args.out; returns the table."""
    import diffusers
    import triton

    meta = {
        "card": torch.cuda.get_device_name() if _cuda() else "cpu (smoke)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "diffusers": diffusers.__version__,
        "date": str(datetime.datetime.now(datetime.timezone.utc)),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    (args.out / "saved_activations.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    text = table(rows)
    (args.out / "saved_activations.md").write_text(
        f"# Saved-for-backward tensors per block ({args.case}, no checkpointing)\n\n{meta['card']}, torch "
        f"{meta['torch']}, diffusers {meta['diffusers']}, {meta['date']}\n\n{text}\n\nLarge fp32 tensors:\n\n"
        f"{large_list(rows)}\n\nHidden-size-or-larger saved tensors of the last block by where they were saved:\n\n"
        f"{site_list(rows)}\n"
    )
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/saved"))
    p.add_argument("--case", default="wan4x", choices=sorted(CASES))
    p.add_argument("--layers", type=int, default=2, help="blocks of the full-size model (Wan, HunyuanVideo-1.5)")
    p.add_argument("--backend", default=None, help="attention.backend (default: triton on CUDA, reference on CPU)")
    p.add_argument("--dense-layers", type=int, default=0, help="attention.dense_layers (0: every block radial)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="also run the train.compile path (after eager)")
    p.add_argument("--compile-only", action="store_true", help="only the train.compile path")
    p.add_argument("--compile-backend", default="inductor", help="train.compile_backend (CPU: aot_eager)")
    p.add_argument("--save-attention", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--smoke", action="store_true", help="the tiny model and latents (a CPU check)")
    args = p.parse_args(argv)
    if args.layers < 1:
        p.error(f"--layers {args.layers}: expected at least 1 block")
    if args.device == "cuda" and not _cuda():
        p.error("--device cuda: no CUDA device here (use --device cpu --smoke)")
    args.backend = args.backend or ("triton" if args.device == "cuda" else "reference")
    # train_step's build settings: every block runs plainly (no recompute), its activations kept.
    args.checkpoint_blocks, args.fuse_qkv = 0, False
    args.wan_layers = args.hy15_layers = args.h3_layers = args.layers
    args.hun_double = args.hun_single = 1
    args.out.mkdir(parents=True, exist_ok=True)
    modes = [True] if args.compile_only else [False, True] if args.compile else [False]
    rows = []
    for compile_ in modes:
        rows.append(census_step(args, compile_))
        text = write_results(rows, args)
    print(text, flush=True)
    print(large_list(rows), flush=True)
    print(site_list(rows), flush=True)


if __name__ == "__main__":
    main()
