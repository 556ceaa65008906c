"""What holds the memory at a training step's peak, on the CPU: every live tensor counted, by where it was made.

The trainer's step (train_step.py's `_build`: radial attention, PEFT LoRA, bf16 frozen weights, Accelerate bf16
autocast, gradient checkpointing as configured) on a full-size architecture scaled down in width by `--divisor`
(every width divided alike, head dim kept, so each activation is the full model's divided by the divisor) and cut to
`--layers` blocks. A TorchDispatchMode counts the storage of every op's output until its last reference dies;
the peak's live set is reported by phase (forward / backward), the block that made it (or "outside"), and the op,
in bf16 hidden states of the packed sequence ("u" = rows x hidden x 2 bytes): the unit the memory planner
(train/memory_plan.py) counts in, so the numbers carry over to the full width. CPU kernels (SDPA's flash_attention_
for_cpu, composite norms) are not CUDA's: working-set details differ, what is kept between blocks does not.

    python benchmarks/live_memory.py --family h3 --divisor 14 --layers 4 --frames 4 --out /tmp/live_h3
"""

from __future__ import annotations

import argparse
import json
import sys
import weakref
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

# family -> (width keys divided exactly by --divisor, widths of the conditioning inputs divided roughly, the hidden
# width key (None: heads x head dim), latent grid of one frame [C, H, W])
SCALED = {
    "h3": (("num_attention_heads", "hidden_size", "ffn_dim", "time_embed_hidden_dim", "time_embed_dim"),
           ("text_dim",), "hidden_size", (24, 48, 84)),
    "wan": (("num_attention_heads", "ffn_dim"), ("text_dim",), None, (16, 60, 104)),
}  # fmt: skip


class LiveTensors(TorchDispatchMode):
    """Live bytes of the tensors ops make inside the mode (one count per storage), their peak and the live set there."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[int, str, str, tuple]] = {}
        self.now = self.peak = 0
        self.at_peak: list[tuple[int, str, str, tuple]] = []
        self.where = "outside"
        self.phase = "forward"

    def track(self, t: torch.Tensor, label: str | None = None) -> None:
        """Count `t`'s storage from now until it is freed (tensors made before the mode: weights, optimizer)."""
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self.live or t.is_meta:
            return
        self.live[key] = (storage.nbytes(), label or f"{self.phase} {self.where}", str(t.dtype), tuple(t.shape))
        self.now += storage.nbytes()
        weakref.finalize(storage, self._free, key)
        if self.now > self.peak:
            self.peak, self.at_peak = self.now, list(self.live.values())

    def _free(self, key: int) -> None:
        entry = self.live.pop(key, None)
        if entry is not None:
            self.now -= entry[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.track(t, f"{self.phase} {self.where} {func.__name__}")
        return out

    def by_label(self, words: int = 2) -> dict[str, int]:
        """Bytes live at the peak by the first `words` words of their label (phase, where[, op])."""
        totals: Counter = Counter()
        for nbytes, label, _, _ in self.at_peak:
            totals[" ".join(label.split()[:words])] += nbytes
        return dict(totals.most_common())


def _watch_blocks(mode: LiveTensors, blocks) -> None:
    """Attribute what is made inside block i, in its forward and in its (recomputed) backward, to "block i"."""

    def enter(name):
        return lambda *_: setattr(mode, "where", name)

    def leave(*_):
        mode.where = "outside"

    for i, block in enumerate(blocks):
        block.register_forward_pre_hook(enter(f"block{i}"))
        block.register_forward_hook(leave)


def scaled_overrides(family: str, divisor: int, layers: int) -> dict:
    """build_full's overrides: the default variant's widths divided by `divisor`, `layers` blocks."""
    from radial.models import get_adapter

    adapter = get_adapter(family)
    config = adapter.variants[adapter.default_variant]
    exact, rough = SCALED[family][:2]
    if any(config[k] % divisor for k in exact):
        raise SystemExit(f"error: --divisor {divisor} does not divide every width of {family}: {exact}")
    return {**{k: config[k] // divisor for k in (*exact, *rough)}, "num_layers": layers}


def measure(family: str, divisor: int, layers: int, frames: int, backend: str, save_attention: bool) -> dict:
    """One warm-up step, then one counted step; the peak's live set in u (module docstring)."""
    from accelerate import Accelerator

    from benchmarks.train_step import _config
    from radial.models import get_adapter
    from train.components import build_model
    from train.flow import FlowMatching
    from train.step import flow_matching_loss

    adapter = get_adapter(family)
    overrides = scaled_overrides(family, divisor, layers)
    transformer = adapter.build_full(None, dtype=torch.bfloat16, device="cpu", **overrides)
    cfg = _config(family, backend, 0, save_attention, ("train.checkpoint_blocks=all", "logging.trackers=[]"))
    acc = Accelerator(mixed_precision="bf16", cpu=True)
    model = build_model(cfg, torch.device("cpu"), transformer=transformer).transformer  # injected and with LoRA
    channels, height, width = SCALED[family][3]
    latents = torch.randn(1, channels, frames, height, width, generator=torch.Generator().manual_seed(0))
    conds = adapter.make_dummy_conditions(model, 1, latent_shape=latents.shape)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    mode = LiveTensors()
    _watch_blocks(mode, adapter.blocks(model))
    flow = FlowMatching(shift=cfg.model.flow_shift)

    def step(seed: int) -> None:
        # (a recomputation stops early, without the block's forward hook: the last one's name would stay)
        mode.phase, mode.where = "forward", "outside"
        with acc.autocast():
            loss = flow_matching_loss(adapter, model, flow, latents, conds,
                                      torch.Generator().manual_seed(seed), torch.bfloat16)  # fmt: skip
        mode.phase, mode.where = "backward", "outside"
        mode.forward_end = mode.now
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(0)  # optimizer state allocated
    for t in (*model.parameters(), *model.buffers()):
        mode.track(t, "weights")
    for state in opt.state.values():
        for t in state.values():
            mode.track(t, "optimizer")
    before = mode.now
    with mode:
        step(1)
    key, c = SCALED[family][2], model.config
    hidden = c[key] if key else c.num_attention_heads * c.attention_head_dim
    tokens_per_frame = height * width // 4
    rows = adapter.sequence_rows(frames, frames * tokens_per_frame)
    u = 2 * rows * hidden
    top = sorted(mode.at_peak, key=lambda e: -e[0])[:20]
    return {
        "family": family, "divisor": divisor, "layers": layers, "frames": frames, "rows": rows, "hidden": hidden,
        "u_bytes": u, "weights_and_optimizer_bytes": before,
        "forward_end_u": (mode.forward_end - before) / u, "peak_u": (mode.peak - before) / u,
        "at_peak_u": {k: v / u for k, v in mode.by_label().items() if k not in ("weights", "optimizer")},
        "largest_at_peak": [{"u": n / u, "made": label, "dtype": dt, "shape": list(shape)} for n, label, dt, shape in top],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=sorted(SCALED), default="h3")
    p.add_argument("--divisor", type=int, default=14, help="widths divided by this (h3: 14 keeps head dim 128)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--frames", type=int, default=4, help="latent frames")
    p.add_argument("--backend", default="dense", help="attention.backend (CPU: dense or reference)")
    p.add_argument("--save-attention", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--out", type=Path, default=None, help="folder for live_memory.json")
    args = p.parse_args(argv)
    result = measure(args.family, args.divisor, args.layers, args.frames, args.backend, args.save_attention)
    print(f"{result['rows']:,} rows, u = {result['u_bytes'] / 2**20:.2f} MiB; above weights and optimizer: end of "
          f"forward {result['forward_end_u']:.2f} u, peak {result['peak_u']:.2f} u")  # fmt: skip
    for label, n in result["at_peak_u"].items():
        print(f"  {label:24s} {n:6.2f} u")
    for t in result["largest_at_peak"]:
        print(f"  {t['u']:6.2f} u  {t['made']:48s} {t['dtype']:15s} {t['shape']}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "live_memory.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
