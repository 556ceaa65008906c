"""What the trainer is made of, built from a validated config: the transformer (with radial attention and LoRA)
and the data (synthetic demo data prepared on first use, or prepared latents)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

import radial
from radial.attention import resolve_backend
from radial.base_id import base_identity
from radial.checkpointing import enable_checkpointing
from radial.compile import compile_blocks
from radial.lora import attach_lora
from radial.models import ModelAdapter, get_adapter
from train.config import Config
from train.offload import ActivationOffload, enable_activation_offload
from train.recompute import RecomputeBudget, parse_checkpoint_blocks
from train.signals import ignore_stop_signals
from train.weight_stream import BlockStreamer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelParts:
    adapter: ModelAdapter
    transformer: torch.nn.Module
    handle: Any  # radial.RadialHandle
    lora_config: Any  # peft.LoraConfig (None in train.mode=full)
    target_modules: Any
    backend: str = "reference"  # the attention backend that runs (`auto` resolved for the device)
    recompute: RecomputeBudget | None = None  # train.checkpoint_blocks (None without gradient checkpointing)
    base: dict | None = None  # the base's identity for the LoRA header (radial.base_id), taken before training
    offload: ActivationOffload | None = None  # train.offload_activations
    streamer: BlockStreamer | None = None  # train.offload_blocks


def build_transformer(cfg: Config, adapter: ModelAdapter, device: torch.device) -> torch.nn.Module:
    """The base transformer: tiny random-init, full-size random weights, or real weights from `model.path`."""
    m = cfg.model
    dtype = DTYPES[m.dtype]
    if m.source == "tiny":
        return adapter.build_tiny(seed=cfg.seed, dtype=dtype, device=device, variant=m.variant)
    if m.source == "full":
        return adapter.build_full(m.variant, dtype=dtype, device=device, seed=cfg.seed)
    subfolder = None if m.expert is None else m.expert
    return adapter.from_pretrained(m.path, dtype=dtype, subfolder=subfolder, device=device)


def build_model(
    cfg: Config, device: torch.device, base_dir: Path | None = None, transformer: torch.nn.Module | None = None
) -> ModelParts:
    """Transformer + radial attention + PEFT LoRA (trainable parameters in fp32), ready for Accelerate.

    train.mode=full: no LoRA; every parameter is trainable and kept in fp32.
    `transformer` replaces the one `model.*` describes (benchmarks build reduced full-size models themselves).
    """
    adapter = get_adapter(cfg.model.family)
    if transformer is None:
        transformer = build_transformer(cfg, adapter, device)
    if base_dir is not None and cfg.model.source == "tiny":
        # A LoRA is useless without its base: random tiny bases are saved beside the run.
        transformer.save_pretrained(base_dir)
    base = base_identity(adapter, transformer)  # before fp8 storage and training change the weights
    if cfg.model.storage_dtype is not None:
        # Before LoRA is attached, so only the frozen base layers are stored in fp8.
        transformer.enable_layerwise_casting(
            storage_dtype=getattr(torch, cfg.model.storage_dtype), compute_dtype=DTYPES[cfg.model.dtype]
        )
    settings = cfg.attention.settings()
    if settings.deterministic:  # before the backend is resolved: `auto` then picks a deterministic kernel
        torch.use_deterministic_algorithms(True, warn_only=True)
    backend = resolve_backend(settings.backend, device, settings.block_size)
    handle = radial.inject(transformer, settings, family=cfg.model.family, backend=backend, fuse_qkv=cfg.train.fuse_qkv)
    if cfg.train.mode == "full":  # every weight trains; no adapter
        targets = lora_config = None
        transformer.requires_grad_(True)
    else:
        targets = cfg.lora.target_modules or adapter.lora_target_modules(cfg.lora.projections, text=cfg.lora.text)
        lora_config = attach_lora(
            transformer,
            rank=cfg.lora.rank,
            alpha=cfg.lora.alpha,
            dropout=cfg.lora.dropout,
            target_modules=targets,
            exclude_modules=adapter.lora_unused_modules(transformer),
        )
    # Trainable weights are fp32 masters (autocast computes in bf16); frozen ones keep model.dtype.
    for p in transformer.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    t = cfg.train
    blocks = adapter.blocks(transformer)
    budget = None
    if t.gradient_checkpointing:
        enable_checkpointing(transformer, blocks, save_attention=t.save_attention)
        budget = RecomputeBudget(blocks, parse_checkpoint_blocks(t.checkpoint_blocks, len(blocks)), device)
    if t.compile:  # after LoRA and checkpointing: the compiled blocks hold the LoRA layers, checkpointing wraps them
        compile_blocks(blocks, backend=t.compile_backend, mode=t.compile_mode)
    offload = enable_activation_offload(transformer, device) if t.offload_activations else None
    streamer = BlockStreamer(blocks, device) if t.offload_blocks else None
    transformer.train()
    return ModelParts(adapter, transformer, handle, lora_config, targets, backend, budget, base, offload, streamer)


def synthetic_latents(cfg: Config, main_process: bool) -> Path:
    """Generate synthetic videos and prepare them with the family's tiny encoders (once; reused afterwards)."""
    from data.prepare import PrepareConfig, prepare
    from data.synthetic import make_synthetic_videos

    root = Path(cfg.data.root)
    videos, latents = root / "videos", root / "latents"
    d = cfg.data
    if main_process:
        started = time.perf_counter()
        if (videos / "manifest.jsonl").is_file():
            print(f"data 1/2: reusing the synthetic videos in {videos}", flush=True)
        else:
            print(f"data 1/2: making {d.num_videos} synthetic videos ({d.frames} frames, {d.height}x{d.width}) in "
                  f"{videos} ...", flush=True)  # fmt: skip
            make_synthetic_videos(
                videos, num=d.num_videos, frames=d.frames, fps=d.fps, sizes=((d.height, d.width),), seed=cfg.seed
            )
            print(f"data 1/2: done in {time.perf_counter() - started:.1f} s", flush=True)
        started = time.perf_counter()
        print(f"data 2/2: encoding them with the tiny {cfg.model.family} VAE and text encoder into {latents} "
              "(already encoded items are reused) ...", flush=True)  # fmt: skip
        summary = prepare(
            PrepareConfig(
                model=cfg.model.family, input=str(videos / "manifest.jsonl"), out=str(latents), tiny=True,
                lengths=(d.frames,), fps=d.fps, buckets=(f"{d.height}x{d.width}",),
                seed=cfg.seed, progress=False, latent_dtype="fp32", text_dtype="fp32",
            )
        )  # fmt: skip
        print(
            f"data 2/2: {len(summary.written)} encoded, {len(summary.already_done)} reused "
            f"in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
    return latents


def dataset_roots(cfg: Config, latents_root: Path) -> tuple[list[Path], list[int]]:
    """The prepared datasets to train on and their repeats: data.datasets, else the one at `latents_root`."""
    if cfg.data.datasets:
        return [Path(d.root).expanduser() for d in cfg.data.datasets], [d.repeats for d in cfg.data.datasets]
    return [Path(latents_root)], [1]


def build_data(cfg: Config, parts: ModelParts, rank: int, world_size: int, latents_root: Path):
    """Dataset validated against the transformer, a resumable bucket sampler for this data-parallel rank, loader."""
    from data import BucketBatchSampler, Expect, LatentDataset, collate, data_parallel_rank

    expect = Expect.from_transformer_config(cfg.model.family, parts.transformer.config)
    roots, repeats = dataset_roots(cfg, latents_root)
    dataset = LatentDataset(
        roots,
        model=cfg.model.family,
        expect=expect,
        repeats=repeats,
        caption_dropout=cfg.data.caption_dropout,
        seed=cfg.seed,
    )
    dp_rank, dp_world = data_parallel_rank(rank, world_size, cfg.parallel.sp_degree)
    sampler = BucketBatchSampler(
        dataset,
        cfg.data.batch_size,
        cfg.seed,
        rank=dp_rank,
        world_size=dp_world,
        shuffle=cfg.data.shuffle,
        drop_last=cfg.data.drop_last,
    )
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=cfg.data.num_workers,
        pin_memory=False,
        worker_init_fn=ignore_stop_signals if cfg.data.num_workers else None,
    )
    return dataset, sampler, loader
