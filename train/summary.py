"""The run summary printed before the model is built: what will be trained, on what, for how long, where, and
roughly how much memory the weights and optimizer need (as SimpleTuner and finetrainers print).

Everything here is cheap: the model is built on the meta device (no memory, no weights read), the data is read
from the index, and the attention density comes from the block mask of the largest bucket.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from data.shards import load_index
from radial.models.base import ModelPathError
from train.config import Config, meta_transformer

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1}


def _count(n: float) -> str:
    return next(f"{n / d:.2f}{u}" for d, u in ((1e9, "B"), (1e6, "M"), (1e3, "K"), (1, "")) if n >= d or d == 1)


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _data_lines(cfg: Config, roots: list[Path], repeats: list[int]) -> tuple[list[str], tuple | None, int]:
    """Draws per epoch by bucket from the datasets' indexes (items x repeats); the largest bucket (frames, height,
    width); the draws per epoch."""
    buckets: Counter = Counter()
    for root, k in zip(roots, repeats, strict=True):
        index = load_index(root, cfg.model.family)  # checked: a missing or broken index is a one-line ShardError
        for r in index["items"]:
            buckets[(r["frames"], r["height"], r["width"])] += k
    items = sum(buckets.values())
    shown = ", ".join(f"{f}f {h}x{w}: {n}" for (f, h, w), n in sorted(buckets.items()))
    where = ", ".join(f"{r} x{k}" if k > 1 else str(r) for r, k in zip(roots, repeats, strict=True))
    if cfg.data.caption_dropout:
        where += f"; caption dropout {cfg.data.caption_dropout}"
    largest = max(buckets, key=lambda b: b[0] * b[1] * b[2]) if buckets else None
    return [f"data:       {items} items in {len(buckets)} bucket(s) ({shown}) from {where}"], largest, items


def run_summary(cfg: Config, datasets: tuple[list[Path], list[int]], device: torch.device) -> str:
    """The summary as printed lines (see the module docstring); `datasets`: roots and their repeats."""
    import radial
    from radial.attention import resolve_backend
    from radial.mask import mask_stats
    from radial.mask.stats import density_text, model_density
    from radial.models import get_adapter
    from train.checkpoint import list_checkpoints

    m, a, t = cfg.model, cfg.attention, cfg.train
    adapter = get_adapter(m.family)
    model = meta_transformer(m)
    if model is None:  # model.path has no readable transformer config: the loader's check says what is missing
        adapter.resolve_pretrained(m.path, m.expert)
        raise ModelPathError(f"model.path={m.path}: the transformer's config.json is not readable")
    base_params = sum(p.numel() for p in model.parameters())
    targets = cfg.lora.target_modules or adapter.lora_target_modules(cfg.lora.projections, text=cfg.lora.text)
    modules = dict(model.named_modules())
    names = (
        adapter.lora_target_names(model, cfg.lora.projections, text=cfg.lora.text)
        if not cfg.lora.target_modules
        else []
    )
    lora_params = sum(cfg.lora.rank * (modules[n].in_features + modules[n].out_features) for n in names)
    source = {"tiny": "tiny random-init", "full": "full-size, random weights", "pretrained": str(m.path)}[m.source]
    lines = [
        f"model:      {m.family} {adapter.class_name} ({source}), {_count(base_params)} parameters in {m.dtype}"
        + (f", stored in {m.storage_dtype}" if m.storage_dtype else ""),
        f"LoRA:       rank {cfg.lora.rank} on {','.join(cfg.lora.projections)} of {len(names) or '?'} modules "
        f"({_count(lora_params)} trainable)" + ("" if not cfg.lora.target_modules else f" [{targets}]")
        if t.mode != "full"
        else f"full:       every parameter trains ({_count(base_params)}, fp32 masters; train.mode=full)",
    ]
    data_lines, largest, items = _data_lines(cfg, *datasets)
    lines += data_lines
    per_step = cfg.data.batch_size * t.gradient_accumulation_steps
    epochs = t.max_steps * per_step / max(items, 1)
    lines.append(
        f"training:   {t.max_steps} steps x batch {cfg.data.batch_size} x accumulation {t.gradient_accumulation_steps}"
        f" (~{epochs:.1f} epochs per data-parallel rank), lr {cfg.optim.lr}, mixed precision {t.mixed_precision}"
        + (f", {cfg.optim.scheduler} over {cfg.optim.schedule_steps} steps" if cfg.optim.schedule_steps else "")
        + (f", weights averaged (EMA {t.ema_decay})" if t.ema_decay else "")
    )
    layers = len(adapter.attention_layers(model))
    backend = resolve_backend(a.backend, device, a.block_size, a.deterministic or None)
    density = ""
    kind = "dense (stock attention)" if a.backend == "dense" else "radial"
    if a.window_frames:
        kind = f"temporal window of {a.window_frames} frames"
    if largest is not None and kind == "radial":
        g = adapter.geometry
        frames, tokens = g.latent_frames(largest[0]), g.tokens_per_frame(largest[1], largest[2])
        mask = radial.radial_block_mask(
            frames, tokens, block_size=a.block_size, decay_factor=a.decay_factor, model=adapter.mask_model,
            sink=a.sink, decay_adjacent=a.decay_adjacent,
        )  # fmt: skip
        stats = mask_stats(mask, frames * tokens, a.block_size)
        whole = model_density(stats.block_density, layers, min(a.dense_layers, layers))
        density = f"; at {largest[0]}f {largest[1]}x{largest[2]} ({frames * tokens} tokens): {density_text(stats.block_density, whole)}"
    dense = min(a.dense_layers, layers)
    lines.append(
        f"attention:  {kind}, backend {backend}" + (" (auto)" if a.backend == "auto" else "")
        + f"; {dense} of {layers} layers dense" + (f", first {a.dense_timesteps} timesteps dense" if a.dense_timesteps else "")
        + (f"; RIFLEx past {a.train_frames} latent frames" if a.rope_extension == "riflex" else "")
        + (f"; decay {a.extrapolation_decay} past {a.train_frames} frames" if a.extrapolation_decay != 1 else "")
        + density
    )  # fmt: skip
    if t.resume == "latest":
        found = list_checkpoints(Path(cfg.output_dir) / "checkpoints")
        resume = f"latest: {found[-1]}" if found else "latest: none yet, starting fresh"
    else:
        resume = t.resume or ("none, fresh start" + ("; train.overwrite=true" if t.overwrite else ""))
    lines.append(f"output_dir: {cfg.output_dir} (resume: {resume})")
    weight_bytes = base_params * BYTES[m.storage_dtype or m.dtype]
    if t.mode == "full":  # every parameter in fp32 with its gradient and AdamW moments
        weight_bytes, lora_params = 0, base_params
    lora_bytes = lora_params * (4 + 4 + 8)  # fp32 weights, gradients, AdamW moments
    ckpt = f"on, {t.checkpoint_blocks} blocks" if t.gradient_checkpointing else "off"
    lines.append(
        f"memory:     ~{_size(weight_bytes + lora_bytes)} per process for weights, gradients and AdamW "
        f"state, plus activations (gradient checkpointing {ckpt})"
        + (f"; blocks compiled ({t.compile_backend})" if t.compile else "")
        + ("; fused q/k/v" if t.fuse_qkv else "")
    )
    return "\n".join(lines)
