"""Per-block times of a generation, and the whole model's denoising step fitted from them.

HunyuanVideo 13B at 720p 4x: a subset of its 60 blocks is timed in seconds per step, the whole model's dense step
takes minutes. Each transformer block (the module holding an attention layer, in the adapter's layer order) is timed
between its forward pre- and post-hook (CUDA events; on the CPU the clock); the rest of a step (embeddings, text
refiner, final layer, scheduler) is its overhead. A step of the whole model in which the first `dense` layers run
dense attention and the others sparse is then fitted as

    overhead + sum over the whole model's blocks of the mean measured time of a block of that class and kind

from the steady steps (all but the first, which compiles kernels, when there are several).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import torch


def block_key(cls: str, dense: bool) -> str:
    """The name of a block class run with dense or sparse attention ("HunyuanVideoTransformerBlock dense")."""
    return f"{cls} {'dense' if dense else 'sparse'}"


def blocks_of(transformer: torch.nn.Module, layers: list[torch.nn.Module]) -> list[torch.nn.Module]:
    """The blocks that hold the attention layers `layers` (their parent modules), in layer order."""
    parent = {id(child): module for module in transformer.modules() for child in module.children()}
    return [parent[id(layer)] for layer in layers]


class BlockTimer:
    """Forward hooks timing each block; `step_end()` (from the pipeline's step callback) closes a step."""

    def __init__(self, blocks: list[torch.nn.Module], cuda: bool):
        self.cuda = cuda
        self.classes = [type(b).__name__ for b in blocks]
        self.steps: list[list[float]] = []  # per step: seconds per block (its calls in that step summed)
        self._open: list[tuple[int, object, object]] = []
        self._start: dict[int, object] = {}
        self._hooks = []
        for i, block in enumerate(blocks):
            self._hooks.append(block.register_forward_pre_hook(self._pre(i)))
            self._hooks.append(block.register_forward_hook(self._post(i)))

    def _now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _pre(self, i: int):
        def hook(module, args):
            self._start[i] = self._now()

        return hook

    def _post(self, i: int):
        def hook(module, args, output):
            self._open.append((i, self._start.pop(i), self._now()))

        return hook

    def step_end(self) -> None:
        """Resolve the timings of the step that just ended."""
        if self.cuda:
            torch.cuda.synchronize()
        times = [0.0] * len(self.classes)
        for i, start, end in self._open:
            times[i] += start.elapsed_time(end) / 1e3 if self.cuda else end - start
        self.steps.append(times)
        self._open = []

    def callback(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        """A `callback_on_step_end` for radial.generation.generate's `callback`."""
        self.step_end()
        return callback_kwargs

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


def steady(n: int) -> range:
    """The steps that are timed as steady: all but the first (kernel compilation) when there are several."""
    return range(1, n) if n > 1 else range(n)


def block_means(
    step_blocks: list[list[float]], step_s: list[float], classes: list[str], dense: Callable[[int, int], bool]
) -> tuple[dict[str, float], float]:
    """Mean seconds per `block_key` over the steady steps (`dense(step, layer)`: whether that block ran dense) and
    the mean overhead (step time minus its blocks)."""
    samples: dict[str, list[float]] = defaultdict(list)
    overheads = []
    for s in steady(len(step_blocks)):
        for i, t in enumerate(step_blocks[s]):
            samples[block_key(classes[i], dense(s, i))].append(t)
        overheads.append(step_s[s] - sum(step_blocks[s]))
    means = {k: sum(v) / len(v) for k, v in samples.items()}
    return means, (sum(overheads) / len(overheads) if overheads else 0.0)


def fitted_step(means: dict[str, float], overhead: float, classes: list[str], dense_layers: int) -> float | None:
    """A step of the model whose blocks are `classes` (layer order), its first `dense_layers` dense, from the block
    means; None when a block class and kind it needs was not measured."""
    total = overhead
    for i, cls in enumerate(classes):
        key = block_key(cls, i < dense_layers)
        if key not in means:
            return None
        total += means[key]
    return total


def describe(classes: list[str]) -> str:
    """'20 HunyuanVideoTransformerBlock + 40 HunyuanVideoSingleTransformerBlock' (first-seen order)."""
    counts: dict[str, int] = {}
    for c in classes:
        counts[c] = counts.get(c, 0) + 1
    return " + ".join(f"{n} {c}" for c, n in counts.items())


def _mode(row: dict) -> str:
    return row["mode"].split()[0]  # "radial fa4" -> "radial"


def whole_model(rows: list[dict], built: list[str], whole: list[str], steps: int, dense_modes: tuple[str, ...]) -> dict:
    """The whole model's denoising of `steps` steps per row of benchmarks/generate.py (rows with `step_blocks_s`):
    its dense step (every layer dense) and radial step (the row's dense layers dense, the rest sparse), measured
    where `built` is the whole model and the steady steps hold that kind, else fitted from the block means; a row
    whose blocks never ran sparse (radial-dense on fewer blocks than its dense layers) takes the sparse block means of
    the radial row with its backend. Speed-ups over the dense row and the fastest dense mode; also set on the rows."""
    measured = built == whole
    fits: dict[str, dict] = {}
    for row in (r for r in rows if "step_blocks_s" in r):
        dense_mode = _mode(row) in dense_modes
        k, t = (len(built), len(row["step_s"])) if dense_mode else (row["dense_layers"], row["dense_timesteps"])
        means, overhead = block_means(row["step_blocks_s"], row["step_s"], built, lambda s, i, k=k, t=t: i < k or s < t)
        fits[row["mode"]] = {"row": row, "means": means, "overhead": overhead, "dense": dense_mode, "t": t}
    sparse = {
        f["row"]["backend"]: {key: v for key, v in f["means"].items() if key.endswith(" sparse")}
        for f in fits.values()
        if _mode(f["row"]) == "radial"
    }
    out_rows = {}
    for label, f in fits.items():
        row, means = f["row"], f["means"]
        borrowed = {key: v for key, v in sparse.get(row["backend"], {}).items() if key not in means}
        means = {**means, **borrowed}
        dense_steps = steps if f["dense"] else min(f["t"], steps)
        # (kind, dense layers of a step of that kind, whether a step s is of that kind): the kinds the schedule has
        kinds = [("dense", len(whole), lambda s, f=f: f["dense"] or s < f["t"])] if dense_steps else []
        if steps > dense_steps:
            kinds.append(("radial", row["dense_layers"], lambda s, f=f: s >= f["t"]))
        entry: dict = {"block_s": means, "overhead_s": f["overhead"], "borrowed": sorted(borrowed)}
        sources = set()
        for kind, dense_layers, is_kind in kinds:
            timed = [row["step_s"][s] for s in steady(len(row["step_s"])) if is_kind(s)]
            if measured and timed:
                entry[f"{kind}_step_s"], source = sum(timed) / len(timed), "measured"
            else:
                entry[f"{kind}_step_s"], source = fitted_step(means, f["overhead"], whole, dense_layers), "fitted"
            entry[f"{kind}_step_source"] = source
            sources.add(source)
        entry["dense_steps"] = dense_steps
        parts = [(dense_steps, entry.get("dense_step_s")), (steps - dense_steps, entry.get("radial_step_s"))]
        needed = [(n, v) for n, v in parts if n]
        entry["denoise_s"] = None if any(v is None for _, v in needed) else sum(n * v for n, v in needed)
        entry["source"] = " + ".join(sorted(sources))
        out_rows[label] = entry
    _speedups(out_rows, fits)
    for label, entry in out_rows.items():
        fits[label]["row"]["whole_model"] = entry
    return {
        "blocks": describe(whole),
        "built": describe(built),
        "source": "measured" if measured else "fitted",
        "steps": steps,
        "rows": out_rows,
    }


def _speedups(entries: dict[str, dict], fits: dict[str, dict]) -> None:
    dense = {label: e for label, e in entries.items() if fits[label]["dense"] and e["denoise_s"]}
    fastest = min(dense, key=lambda label: dense[label]["denoise_s"]) if dense else None
    for label, e in entries.items():
        if not e["denoise_s"]:
            continue
        if "dense" in dense and label != "dense":
            e["speedup"] = dense["dense"]["denoise_s"] / e["denoise_s"]
        if fastest is not None and label != fastest:
            e["speedup_vs_fastest_dense"] = dense[fastest]["denoise_s"] / e["denoise_s"]
            e["fastest_dense"] = fastest
