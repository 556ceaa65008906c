"""The steps that assemble a run before it trains, in the order `Trainer.__init__` takes them: the accelerator and
the checks that need no model, the output folder and the data root, the model, the data, the optimizer and its
schedule, the moving average; each a function of explicit inputs (torchtitan's trainer is assembled the same way)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, ProjectConfiguration, broadcast_object_list

from radial.errors import CheckpointError, ConfigError
from radial.parallel import sequence_parallel_groups
from train.checkpoint import resolve_resume
from train.components import ModelParts, build_model, dataset_roots, synthetic_latents
from train.config import Config
from train.ema import has_weight_average
from train.flow import FlowMatching
from train.run_dir import clear_previous_run


def make_accelerator(cfg: Config, out: Path) -> Accelerator:
    """Accelerate for train.mixed_precision / gradient accumulation / the trackers; refuses N copies of a one-process
    run (they would overwrite each other's outputs)."""
    t = cfg.train
    acc = Accelerator(
        mixed_precision=t.mixed_precision,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        log_with=list(cfg.logging.trackers) or None,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != acc.num_processes:
        raise ConfigError(
            f"launched as {launched} processes but Accelerate runs {acc.num_processes}: on a machine without "
            "GPUs set ACCELERATE_USE_CPU=1 (or `accelerate launch --cpu`) so that the processes train together"
        )
    return acc


def configure_deepspeed(cfg: Config, acc: Accelerator) -> None:
    """Batch size, accumulation and clipping into the DeepSpeed config: our loader is not `prepare`d (the sampler
    shards by data-parallel rank), so Accelerate cannot infer them. DeepSpeed counts every process as data
    parallel; with sequence parallelism a step still takes batch_size samples per group."""
    plugin = acc.state.deepspeed_plugin
    if plugin is None:
        return
    ga = cfg.train.gradient_accumulation_steps
    ds = plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = cfg.data.batch_size
    ds["gradient_accumulation_steps"] = ga
    ds["train_batch_size"] = cfg.data.batch_size * ga * acc.num_processes
    ds["gradient_clipping"] = cfg.optim.max_grad_norm


def zero3(acc: Accelerator) -> bool:
    """Whether DeepSpeed ZeRO-3 shards the parameters."""
    plugin = acc.state.deepspeed_plugin
    return plugin is not None and plugin.zero_stage == 3


def check_parallel(cfg: Config, acc: Accelerator) -> None:
    """train.mode=full runs on one process or DDP; parallel.sp_degree divides the processes (its error names it)."""
    if cfg.train.mode == "full" and acc.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        raise ConfigError(
            f"train.mode=full runs on one process or DDP (launch/multi_gpu.yaml), not {acc.distributed_type.value}"
        )
    sequence_parallel_groups(acc.num_processes, cfg.parallel.sp_degree)


def shared_resume(cfg: Config, acc: Accelerator, out: Path) -> Path | None:
    """train.resume resolved on the main process (it reads the checkpoints back once), shared with every rank; an
    error is raised on every rank, so that none waits for the others."""
    answer: list = [None, None]
    if acc.is_main_process:
        try:
            path = resolve_resume(cfg.train.resume, out / "checkpoints")
            answer = [None if path is None else str(path), None]
        except (CheckpointError, FileNotFoundError) as e:
            answer = [None, e]
    if acc.num_processes > 1:
        broadcast_object_list(answer, from_process=0)
    if answer[1] is not None:
        raise answer[1]
    return None if answer[0] is None else Path(answer[0])


def flow_of(cfg: Config) -> FlowMatching:
    """The flow-matching objective of train.* (timestep sampling, weighting, range, guidance distillation)."""
    t = cfg.train
    return FlowMatching(
        sampling=t.timestep_sampling,
        logit_mean=t.logit_mean,
        logit_std=t.logit_std,
        shift=cfg.model.flow_shift,
        weighting=t.loss_weighting,
        sigma_range=tuple(t.timestep_range or (0.0, 1.0)),
        distill_guidance=t.distill_guidance,
    )


def prepare_output(cfg: Config, acc: Accelerator, out: Path) -> Path:
    """output_dir made (a previous run cleared with train.overwrite), the latents root (synthetic data generated
    there first), the memory plan and the run summary printed: before the model is built."""
    t = cfg.train
    if acc.is_main_process:
        if t.overwrite and not t.resume:
            removed = clear_previous_run(out)
            if removed:
                acc.print(f"train.overwrite=true: removed the previous run's {', '.join(removed)} in {out}")
        out.mkdir(parents=True, exist_ok=True)
    latents_root = synthetic_latents(cfg, acc.is_main_process) if cfg.data.kind == "synthetic" else Path(cfg.data.root)
    acc.wait_for_everyone()
    from train.memory_plan import plan_run  # train.memory=auto: on every rank, before the model is built

    memory_plan = plan_run(cfg, dataset_roots(cfg, latents_root), acc.device)
    if acc.is_main_process:  # what will run, where, roughly how big
        from train.summary import run_summary

        print(run_summary(cfg, dataset_roots(cfg, latents_root), acc.device), flush=True)
        if memory_plan:
            print(memory_plan, flush=True)
    return latents_root


def model_parts(cfg: Config, acc: Accelerator, out: Path) -> ModelParts:
    """The transformer with radial attention and LoRA, the same LoRA initialisation on every rank whatever the
    wrapper; the base saved beside the run by the main process."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        parts = build_model(cfg, acc.device, out / "base_transformer" if acc.is_main_process else None)
    acc.print(f"attention backend: {parts.backend} (attention.backend={cfg.attention.backend})")
    if parts.recompute is not None and parts.recompute.decided:
        acc.print(parts.recompute.decided)
    return parts


def uncond_text(cfg: Config, dataset) -> dict | None:
    """train.distill_guidance: the empty prompt's padded text states (the guidance-augmented target's unconditional
    text), stored beside the dataset; None without guidance distillation."""
    if cfg.train.distill_guidance == 1.0:
        return None
    empty = dataset.stored_empty_prompt()
    if empty is None:
        raise ConfigError(
            "train.distill_guidance needs the empty prompt's text states beside the dataset (empty_prompt."
            "safetensors): prepare it again with data.prepare"
        )
    return dataset.padded_text(empty)


def optimizer_and_schedule(cfg: Config, acc: Accelerator, params: list[torch.nn.Parameter]):
    """AdamW over the trainable parameters and the diffusers schedule of optim.* (steps counted per process)."""
    from diffusers.optimization import get_scheduler

    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)
    scheduler = get_scheduler(
        o.scheduler,
        optimizer=optimizer,
        num_warmup_steps=o.warmup_steps * acc.num_processes,
        num_training_steps=(o.schedule_steps or cfg.train.max_steps) * acc.num_processes,
    )
    return optimizer, scheduler


def weight_average(cfg: Config, acc: Accelerator, params: list[torch.nn.Parameter], resume: Path | None):
    """train.ema_decay > 0: (the moving average, pending). It is registered for checkpointing now unless the
    checkpoint being resumed has none (`pending`: it then starts from the resumed weights, registered after the
    load). (None, False) without an average."""
    decay = cfg.train.ema_decay
    if not decay:
        return None, False
    if zero3(acc) or acc.distributed_type == DistributedType.FSDP:
        raise ConfigError(
            f"train.ema_decay={decay} needs whole parameters on every rank: DDP, ZeRO-1/2 or one process, "
            "not ZeRO-3 / FSDP (set train.ema_decay=0)"
        )
    from train.ema import WeightAverage

    ema = WeightAverage(params, decay)
    pending = resume is not None and not has_weight_average(resume)
    if not pending:
        acc.register_for_checkpointing(ema)
    return ema, pending
