"""The memory planner, train.memory=auto: from the model, the layout (tokens) and the card (and host) memory, the
cheapest combination of checkpointed blocks, saved attention, activation offload (train/offload.py) and weight
streaming (train/weight_stream.py) that fits, decided and printed before the model is loaded.

The per-block memory model (GiB = 2**30 bytes; T tokens, d hidden width, f feed-forward width, u = 2*T*d bytes, one
bf16 hidden state; n blocks of which c are checkpointed):
  weights      base parameters x bytes per parameter (model.dtype, or model.storage_dtype's 1 for fp8); with
               streaming the c checkpointed blocks' weights are on the host, `STREAM_WINDOW` blocks on the device
  LoRA         trainable parameters x 16 bytes (fp32 weight, gradient, two AdamW moments)
  outside      OUTSIDE x u (the fp32 copy of the hidden states kept outside the blocks)
  checkpointed 1 u (the block's input) + attention x u x a/d with saved attention (a: heads x head dim, the
               saved output's width); activation offload moves the input to the host (2 u of prefetch window stay)
               but not the attention cache (see train/offload.py)
  kept         a block that is not checkpointed: the checkpointed cost + 2*T*(2 f + kept_hidden d) bytes (its
               GELU input and output are feed-forward wide, the rest hidden wide); offloaded whole with offload
  working set  work_const GiB + 2*T*(work_hidden d + work_ffn f) bytes: one block's recomputation and backward
The coefficients (MemoryModel's fields) are fitted to the step peaks the repo measured (MEASURED, with their files); `fit()` shows how.
Plans are tried cheapest first by COSTS: activation offload (PCIe traffic on a side stream) before weight
streaming (the blocks' weights cross PCIe twice per step: forward and recomputation) before recomputing attention
(about a third more attention work); a combination costs the sum of its savers.
train.checkpoint_blocks=auto takes the fewest checkpointed blocks that fit without activation offload (and is
measured again at run time, train/recompute.py, unless the plan checkpoints every block: then it is `all`, since the
run-time probe keeps one block's activations); `all` or N is kept as set. Options the user turned on are never
turned off. T counts the rows every block carries (the adapter's `sequence_rows`: the video tokens, and
MiniMax-H3's audio and text rows packed beside them); HunyuanVideo's 256 text tokens are within a rounding.
What holds the memory of a short stack of wide blocks (MiniMax-H3, 4 of 50 blocks at 2x: 37.5 GB on an H100) is one
block's recomputation and backward (the working set, ~30 u at its widths), not what the blocks keep: each
checkpointed H3 block keeps 2.4 u (input and attention output), and nothing large is kept outside them
(benchmarks/results/memory.md, 2026-12-08).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from radial.errors import ConfigError
from train.recompute import MARGIN

GIB = 2**30
#: blocks on the device while streaming: the one that runs and the one copied ahead
STREAM_WINDOW = 2
#: share of the host memory that pinned copies (streamed weights, offloaded activations) may take
HOST_SHARE = 0.8
#: the fp32 hidden states kept outside the blocks, in bf16 hidden states (saved_activations.md: 0.754 GB "outside")
OUTSIDE = 2.0


@dataclass(frozen=True)
class ModelShape:
    """What the memory model needs of a transformer: parameter counts, blocks and widths."""

    name: str
    params: int  # every base parameter
    block_params: int  # those of the transformer blocks (the streamable part)
    blocks: int
    hidden: int
    ffn: int
    lora_params: int  # trainable LoRA parameters
    attention: int = 0  # the q / k / v width, heads x head dim (0: the hidden width; MiniMax-H3's is 4/3 of it)

    @property
    def attention_width(self) -> int:
        return self.attention or self.hidden

    @property
    def size(self) -> str:
        """The architecture in a few words, so that a log shows which model was planned."""
        return f"{self.params / 1e9:.1f}B parameters, {self.blocks} blocks of width {self.hidden}"

    @classmethod
    def of(cls, name: str, model: torch.nn.Module, blocks: list, lora_params: int) -> ModelShape:
        """From a transformer (the meta device will do) and its blocks in execution order."""
        linears = [m for m in blocks[0].modules() if isinstance(m, torch.nn.Linear)]
        widths = [m.in_features for m in linears]
        hidden = max(set(widths), key=widths.count)  # the attention projections' width
        outs = [m.out_features for m in linears]
        attention = max(set(outs), key=lambda w: (outs.count(w), w == hidden))  # q, k, v (and the text's) outputs
        # the feed-forward width: the widest input, the MLP's down projection (not the modulation's wide output)
        return cls(
            name=name,
            params=sum(p.numel() for p in model.parameters()),
            block_params=sum(p.numel() for b in blocks for p in b.parameters()),
            blocks=len(blocks),
            hidden=hidden,
            ffn=max(widths),
            lora_params=lora_params,
            attention=attention,
        )


# Architectures of the measured runs (counted from the diffusers configs; tests/test_memory_plan.py checks them).
WAN_1_3B = ModelShape("wan t2v-1.3b", 1_418_996_800, 1_393_221_120, 30, 1536, 8960, 30 * 4 * 128 * 3072, 1536)
WAN_I2V_14B = ModelShape("wan i2v-14b", 16_394_878_784, 16_153_538_560, 40, 5120, 13824, 40 * 4 * 128 * 10240, 5120)
WAN_T2V_14B = ModelShape("wan t2v-14b", 14_288_491_584, 14_055_772_160, 40, 5120, 13824, 40 * 4 * 128 * 10240, 5120)


@dataclass(frozen=True)
class Measured:
    """One measured step peak (bf16 weights, LoRA r128 on q/k/v/o, eager blocks, batch 1)."""

    shape: ModelShape
    tokens: int
    checkpointed: int
    save_attention: bool
    peak_gb: float  # torch.cuda.max_memory_allocated / 2**30
    source: str  # the results file and row


MEASURED = (
    Measured(WAN_1_3B, 32_760, 30, False, 9.658, "train_step.json plain_checkpointing wan1x dense"),
    Measured(WAN_1_3B, 63_960, 30, False, 18.593, "train_step.json plain_checkpointing wan2x dense"),
    Measured(WAN_1_3B, 126_360, 30, False, 30.785, "train_step.json plain_checkpointing wan4x triton"),
    Measured(WAN_I2V_14B, 126_360, 40, False, 121.091, "train_step_i2v_h200.json wan_i2v4x fa4+plain"),
    Measured(WAN_1_3B, 126_360, 30, True, 49.250, "train_step_settings_h200.json wan4x fa4 (default)"),
    Measured(WAN_1_3B, 126_360, 21, True, 120.747, "train_step_settings_h200.json wan4x fa4 --checkpoint-blocks auto"),
)


@dataclass(frozen=True)
class MemoryModel:
    """The coefficients of the per-block memory model (module docstring)."""

    attention: float  # saved attention per checkpointed block, in u
    kept_hidden: float  # hidden-wide saved tensors of a block that keeps its activations, in hidden states
    work_const: float  # GiB
    work_hidden: float
    work_ffn: float
    residual_gb: float = 0.0  # the largest misfit of the working-set fit over its measured points


def _fixed_gib(shape: ModelShape, tokens: float, wbytes: float) -> float:
    u = 2 * tokens * shape.hidden
    return (shape.params * wbytes + shape.lora_params * 16 + OUTSIDE * u) / GIB


def fit(points: tuple[Measured, ...] = MEASURED) -> MemoryModel:
    """Least squares of the working set over the plain-checkpointing points, then the saved attention and the kept
    block from the points that add each (bf16 weights)."""
    plain = [p for p in points if not p.save_attention and p.checkpointed == p.shape.blocks]
    rows, rhs = [], []
    for p in plain:
        s, u = p.shape, 2 * p.tokens * p.shape.hidden
        rhs.append(p.peak_gb - _fixed_gib(s, p.tokens, 2) - s.blocks * u / GIB)
        rows.append([1.0, 2 * p.tokens * s.hidden / GIB, 2 * p.tokens * s.ffn / GIB])
    (const, w_hidden, w_ffn), *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
    residual = float(np.max(np.abs(np.array(rows) @ np.array([const, w_hidden, w_ffn]) - np.array(rhs))))
    by_key = {(p.shape, p.tokens, p.checkpointed, p.save_attention): p for p in points}
    saved = next(p for p in points if p.save_attention and p.checkpointed == p.shape.blocks)
    base = by_key[(saved.shape, saved.tokens, saved.shape.blocks, False)]
    u_gib = 2 * saved.tokens * saved.shape.hidden / GIB
    attention = (saved.peak_gb - base.peak_gb) / saved.shape.blocks / u_gib
    partial = next(p for p in points if p.save_attention and p.checkpointed < p.shape.blocks)
    per_block = (partial.peak_gb - saved.peak_gb) / (saved.shape.blocks - partial.checkpointed) * GIB
    kept_hidden = (per_block / (2 * partial.tokens) - 2 * partial.shape.ffn) / partial.shape.hidden
    return MemoryModel(attention, kept_hidden, float(const), float(w_hidden), float(w_ffn), residual)


@dataclass(frozen=True)
class Plan:
    """One combination of the memory savers and what the model expects of it."""

    checkpointed: int
    save_attention: bool
    offload_activations: bool
    stream_weights: bool
    peak_gb: float = 0.0
    host_gb: float = 0.0

    def measures(self) -> str:
        parts = [m for m, on in (("activation offload", self.offload_activations), ("weight streaming",
                 self.stream_weights)) if on]  # fmt: skip
        return " + ".join(parts) or "everything on the device"


def predict(shape: ModelShape, tokens: float, plan: Plan, model: MemoryModel, wbytes: float = 2) -> Plan:
    """`plan` with its expected device peak and pinned host memory (GiB) filled in."""
    n, c = shape.blocks, plan.checkpointed
    u = 2 * tokens * shape.hidden / GIB
    block_w = shape.block_params / n * wbytes / GIB
    # the saved attention output is heads x head dim wide (the fit's models have it as wide as the hidden states)
    saved = model.attention * u * shape.attention_width / shape.hidden
    attention = saved if plan.save_attention else 0.0
    kept = 2 * tokens * (2 * shape.ffn + model.kept_hidden * shape.hidden) / GIB + u + saved
    work = model.work_const + 2 * tokens * (model.work_hidden * shape.hidden + model.work_ffn * shape.ffn) / GIB
    gpu = _fixed_gib(shape, tokens, wbytes) + work + c * attention
    host = 0.0
    if plan.stream_weights:
        gpu -= c * block_w - min(STREAM_WINDOW, c) * block_w
        host += c * block_w
    if plan.offload_activations:
        gpu += 2 * u
        host += c * u + (n - c) * kept
    else:
        gpu += c * u + (n - c) * kept
    return replace(plan, peak_gb=gpu, host_gb=host)


@dataclass(frozen=True)
class Card:
    """The memory a run may use: the card's (or the emulated cap's) and the host's, GiB."""

    memory_gb: float
    host_gb: float
    name: str = "card"

    @property
    def usable_gb(self) -> float:
        return self.memory_gb * (1 - MARGIN)


#: relative cost of each saver, for ordering the combinations (module docstring): PCIe traffic overlapped with
#: compute, then twice the blocks' weights over PCIe, then a third more attention work
COSTS = {"offload": 1, "stream": 2, "recompute_attention": 3}


def _rungs(save_attention: bool, offload: bool, stream: bool) -> list[tuple[bool, bool, bool]]:
    """(save_attention, offload, stream) cheapest first, never below what the user turned on."""
    rungs = [
        (keep, off, strm)
        for keep in ((True, False) if save_attention else (False,))
        for off in (False, True)
        for strm in (False, True)
        if off >= offload and strm >= stream
    ]

    def cost(r: tuple[bool, bool, bool]) -> tuple[int, int]:
        keep, off, strm = r
        return (COSTS["offload"] * off + COSTS["stream"] * strm + COSTS["recompute_attention"] * (not keep), not keep)

    return sorted(rungs, key=cost)


def choose(
    shape: ModelShape,
    tokens: float,
    card: Card,
    checkpoint: int | str,
    *,
    save_attention: bool = True,
    offload: bool = False,
    stream: bool = False,
    wbytes: float = 2,
    model: MemoryModel | None = None,
) -> Plan | None:
    """The cheapest plan that fits `card` (None: none does); `checkpoint` is train.checkpoint_blocks parsed. With
    activation offload, `auto` checkpoints every block: offloading a kept block's activations (about 25 hidden
    states) moves more over PCIe per step than its recomputation costs on the device."""
    model = model or fit()
    n = shape.blocks
    fixed = [n if checkpoint in ("all", "auto") else int(checkpoint)]
    for keep_attention, off, strm in _rungs(save_attention, offload, stream):
        counts = range(n + 1) if checkpoint == "auto" and not off else fixed
        for c in counts:
            plan = predict(shape, tokens, Plan(c, keep_attention, off, strm), model, wbytes)
            if plan.peak_gb <= card.usable_gb and plan.host_gb <= card.host_gb * HOST_SHARE:
                return plan
    return None


def what_would_fit(shape: ModelShape, tokens: int, frames: int, card: Card, wbytes: float) -> str:
    """With every saver on: the longest clip, the sequence-parallel group, or fp8 storage that would fit."""

    def fits(t: float, w: float = wbytes) -> bool:
        return choose(shape, t, card, "all", offload=True, stream=True, wbytes=w) is not None

    options = []
    per_frame = tokens / max(frames, 1)
    shorter = max((f for f in range(1, frames) if fits(f * per_frame)), default=0)
    if shorter:
        options.append(f"a clip of at most {shorter} latent frames ({int(shorter * per_frame):,} tokens)")
    sp = next((k for k in (2, 4, 8, 16) if fits(tokens / k)), None)
    if sp:
        options.append(f"parallel.sp_degree={sp} over {sp} GPUs")
    if wbytes > 1 and fits(tokens, 1):
        options.append("model.storage_dtype=float8_e4m3fn")
    return "; ".join(options) or "nothing on this card (a card with more memory)"


def describe(plan: Plan, shape: ModelShape, tokens: int, card: Card) -> str:
    """The summary line of a plan."""
    attention = "attention saved" if plan.save_attention else "attention recomputed"
    return (
        f"plan:       train.memory=auto for {shape.name} ({shape.size}) at {tokens:,} tokens on {card.memory_gb:.0f} GB "
        f"({card.name}): {plan.measures()}, {plan.checkpointed} of {shape.blocks} blocks checkpointed, {attention}; "
        f"expected peak {plan.peak_gb:.1f} GB of {card.usable_gb:.1f} usable ({MARGIN:.0%} kept free)"
        + (f", {plan.host_gb:.1f} GB pinned on the host" if plan.host_gb else "")
    )


def host_memory_gb(cgroup: Path = Path("/sys/fs/cgroup")) -> float:
    """This process's share of the host memory it may use, GiB: the machine's physical memory or the container's
    limit (cgroup v2 `memory.max`, v1 `memory.limit_in_bytes`), whichever is smaller; the processes of one host share
    it. Without the limit, a container's job would plan pinned buffers its OOM killer does not allow."""
    share = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for file in (cgroup / "memory.max", cgroup / "memory" / "memory.limit_in_bytes"):
        try:
            limit = file.read_text().strip()
        except OSError:
            continue
        if limit.isdigit():  # "max" (v2) or a page-rounded 2**63 (v1) when there is none
            total = min(total, int(limit))
        break
    return total / GIB / share


def plan_or_refuse(
    shape: ModelShape, tokens: int, frames: int, card: Card, checkpoint: int | str, save_attention: bool,
    offload: bool, stream: bool, wbytes: float,
) -> Plan:  # fmt: skip
    """The plan, or a ConfigError naming what would fit."""
    plan = choose(shape, tokens, card, checkpoint, save_attention=save_attention, offload=offload, stream=stream,
                  wbytes=wbytes)  # fmt: skip
    if plan is not None:
        return plan
    best = predict(shape, tokens, Plan(shape.blocks, False, True, True), fit(), wbytes)
    raise ConfigError(
        f"train.memory=auto: {shape.name} at {tokens:,} tokens does not fit {card.memory_gb:.0f} GB ({card.name}): "
        f"with every saving on it needs {best.peak_gb:.1f} GB of {card.usable_gb:.1f} usable and "
        f"{best.host_gb:.1f} GB of host memory of {card.host_gb * HOST_SHARE:.0f}; what would fit: "
        + what_would_fit(shape, tokens, frames, card, wbytes)
    )


def model_name(m) -> str:
    """The configured transformer in words: family and variant (the default one resolved), or the folder it loads."""
    from radial.models import get_adapter

    if m.source == "pretrained":
        parts = Path(m.path).expanduser().parts
        # a Hub id resolved to its cache: .../models--Org--Name/snapshots/<commit>
        hub = len(parts) > 2 and parts[-2] == "snapshots"
        name = parts[-3].removeprefix("models--").replace("--", "/") if hub else parts[-1]
        return f"{m.family} {name}" + (f"/{m.expert}" if m.expert else "")
    variant = m.variant or (get_adapter(m.family).default_variant if m.source == "full" else None)
    return f"{m.family} {variant or 'tiny'}" + (" (tiny)" if m.source == "tiny" and variant else "")


def config_shape(cfg, transformer: torch.nn.Module | None = None) -> ModelShape:
    """The ModelShape of the transformer that trains: `transformer` where the caller built it (benchmarks build
    reduced or other-variant models themselves), else the configured one built on the meta device (no weights read),
    from the config the trainer's `build_transformer` builds from."""
    from radial.models import get_adapter
    from train.config import meta_transformer, planned_lora_names

    m = cfg.model
    adapter = get_adapter(m.family)
    model = meta_transformer(m) if transformer is None else transformer
    if model is None:
        raise ConfigError(f"model.path={m.path}: the transformer's config.json is not readable")
    modules = dict(model.named_modules())
    names = planned_lora_names(cfg, model) if cfg.train.mode == "lora" else []
    lora = sum(cfg.lora.rank * (modules[n].in_features + modules[n].out_features) for n in names)
    return ModelShape.of(model_name(m), model, adapter.blocks(model), lora)


def plan_config(
    cfg, frames: int, tokens: int, device: torch.device, transformer: torch.nn.Module | None = None
) -> str | None:
    """train.memory=auto on CUDA: plan for `tokens` (the largest bucket; `frames` latent frames) and the transformer
    that trains (`config_shape`), apply the plan to cfg.train (offload_activations, offload_blocks, save_attention)
    and return its summary line; ConfigError when nothing fits. train.checkpoint_blocks=auto becomes `all` where the
    plan keeps no block's activations. Applies train.memory_cap_gb first (also with train.memory=off). None where
    nothing is planned."""
    from train.memory_cap import apply_memory_cap
    from train.recompute import parse_checkpoint_blocks

    t = cfg.train
    device = torch.device(device)
    if device.type != "cuda":
        return None
    capacity = apply_memory_cap(t.memory_cap_gb, device)
    if t.memory != "auto" or t.mode != "lora" or not t.gradient_checkpointing:
        return None
    shape = config_shape(cfg, transformer)
    name = torch.cuda.get_device_name(device) + (f", capped at {t.memory_cap_gb:g} GB" if t.memory_cap_gb else "")
    card = Card(capacity, host_memory_gb(), name)
    wbytes = 1 if cfg.model.storage_dtype else {"float32": 4}.get(cfg.model.dtype, 2)
    checkpoint = parse_checkpoint_blocks(t.checkpoint_blocks, shape.blocks)
    plan = plan_or_refuse(shape, tokens, frames, card, checkpoint, t.save_attention, t.offload_activations,
                          t.offload_blocks, wbytes)  # fmt: skip
    t.offload_activations, t.offload_blocks, t.save_attention = (
        plan.offload_activations,
        plan.stream_weights,
        plan.save_attention,
    )
    if checkpoint == "auto" and plan.checkpointed == shape.blocks:
        # No block can keep its activations: train.checkpoint_blocks=auto's run-time probe (its third step keeps
        # one block's) would itself run out of memory (MiniMax-H3 at 4x on an H100, 2026-12-08).
        t.checkpoint_blocks = "all"
    return describe(plan, shape, tokens, card)


def plan_run(cfg, datasets: tuple[list, list[int]], device: torch.device) -> str | None:
    """plan_config for the largest bucket of the run's datasets (roots and repeats, as the run summary reads them)."""
    from radial.models import get_adapter
    from train.summary import _data_lines

    if torch.device(device).type != "cuda":
        return None
    _, largest, _ = _data_lines(cfg, *datasets)
    if largest is None:
        return None
    g = get_adapter(cfg.model.family).geometry
    frames = g.latent_frames(largest[0])
    # Ulysses sequence parallelism: each rank holds its share of the tokens' activations (and all the weights).
    rows = get_adapter(cfg.model.family).sequence_rows(frames, frames * g.tokens_per_frame(largest[1], largest[2]))
    tokens = rows // cfg.parallel.sp_degree
    return plan_config(cfg, frames, tokens, device)
