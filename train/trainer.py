"""The training loop: flow matching on LoRA parameters through Accelerate, resumable, observable, stoppable."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from data import data_parallel_rank
from radial.compile import CompileWatch, without_ddp_optimizer
from radial.errors import CheckpointError, ConfigError, TrainingError
from radial.lora import adapter_metadata, load_lora_state_dict, lora_state_dict
from radial.mask.stats import model_density
from radial.parallel import enable as enable_sequence_parallel
from radial.parallel import init_sequence_parallel, sequence_parallel_groups
from radial.run_lock import lock_for_launch
from train.checkpoint import FULL_FILE, LORA_FILE, CheckpointManager, TrainState, resolve_resume
from train.components import build_data, build_model, dataset_roots, synthetic_latents
from train.config import Config
from train.console import bar_safe_logging, say
from train.ema import has_weight_average
from train.flow import FlowMatching
from train.launcher import report_stop
from train.records import append_metrics
from train.resume_fit import check_resume_fits
from train.run_dir import check_output_dir, clear_previous_run
from train.run_parts import RunView
from train.signals import StopFlag, stop_signals_blocked
from train.step import conditions_of, flow_matching_loss, input_dtype

#: a finished run with more than this share of its steps skipped (non-finite loss) fails instead of exporting
MAX_SKIPPED_SHARE = 0.5


class NonFiniteLoss(TrainingError):
    """Raised when losses stay NaN / inf (train.on_nan=stop, or more than train.max_nan_skips in a row)."""


class DataCursor:
    """An endless iterator over the loader that remembers where it is, for exact resume (checkpointed object)."""

    def __init__(self, loader, sampler) -> None:
        self.loader, self.sampler = loader, sampler
        self._iter = None
        self._last = None

    def next(self) -> dict:
        while True:
            if self._iter is None:
                with stop_signals_blocked():  # loader workers start deaf to SLURM's signals (train.signals)
                    self._iter = iter(self.loader)
            try:
                self._last = next(self._iter)
                return self._last
            except StopIteration:
                self._iter = None

    def close(self) -> None:
        """Let go of the loader's iterator, which stops its worker processes (the next `next` starts new ones)."""
        self._iter = None

    def state_dict(self) -> dict:
        return self.sampler.state_dict(after=self._last) if self._last is not None else self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
        self._iter, self._last = None, None


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """A generator for one micro-step's noise and timesteps: reproducible across resumes and device types.

    `rank` is the data-parallel rank: the ranks of one sequence-parallel group draw the same noise."""
    digest = hashlib.sha256(f"{seed}/{step}/{micro}/{rank}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class Trainer:
    """Config -> model, data, optimizer under Accelerate -> `fit()` -> checkpoints and exported LoRA."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        t = cfg.train
        self.accelerator = Accelerator(
            mixed_precision=t.mixed_precision,
            gradient_accumulation_steps=t.gradient_accumulation_steps,
            log_with=list(cfg.logging.trackers) or None,
            project_config=ProjectConfiguration(project_dir=str(self.out), logging_dir=str(self.out / "logs")),
        )
        acc = self.accelerator
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched != acc.num_processes:  # N copies of a one-process run would overwrite each other's outputs
            raise ConfigError(
                f"launched as {launched} processes but Accelerate runs {acc.num_processes}: on a machine without "
                "GPUs set ACCELERATE_USE_CPU=1 (or `accelerate launch --cpu`) so that the processes train together"
            )
        # Rank 0 holds output_dir's lock until fit() ends: a live run is refused first (the more precise message).
        self.run_lock = lock_for_launch(self.out, "output_dir")
        check_output_dir(self.out, t.resume, t.overwrite)  # on every rank, before any rank writes
        self._configure_deepspeed()
        # Read once: Accelerate's state can be reset under a live trainer (tests, the extension benchmark).
        self._deepspeed = acc.distributed_type == DistributedType.DEEPSPEED
        self.full = t.mode == "full"
        if self.full and acc.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
            raise ConfigError(
                f"train.mode=full runs on one process or DDP (launch/multi_gpu.yaml), not {acc.distributed_type.value}"
            )
        sequence_parallel_groups(acc.num_processes, cfg.parallel.sp_degree)  # the error names parallel.sp_degree
        # Before the summary, the data and the model: a checkpoint that this config cannot continue fails here.
        self._resume = self._resolve_resume()
        if self._resume is not None:
            check_resume_fits(self._resume, cfg)
        set_seed(cfg.seed, device_specific=True)
        self.flow = FlowMatching(
            sampling=t.timestep_sampling,
            logit_mean=t.logit_mean,
            logit_std=t.logit_std,
            shift=cfg.model.flow_shift,
            weighting=t.loss_weighting,
            sigma_range=tuple(t.timestep_range or (0.0, 1.0)),
            distill_guidance=t.distill_guidance,
        )
        if acc.is_main_process:
            if t.overwrite and not t.resume:
                removed = clear_previous_run(self.out)
                if removed:
                    acc.print(f"train.overwrite=true: removed the previous run's {', '.join(removed)} in {self.out}")
            self.out.mkdir(parents=True, exist_ok=True)
        latents_root = (
            synthetic_latents(cfg, acc.is_main_process) if cfg.data.kind == "synthetic" else Path(cfg.data.root)
        )
        acc.wait_for_everyone()
        from train.memory_plan import plan_run  # train.memory=auto: on every rank, before the model is built

        memory_plan = plan_run(cfg, dataset_roots(cfg, latents_root), acc.device)
        if acc.is_main_process:  # before the model is built: what will run, where, roughly how big
            from train.summary import run_summary

            print(run_summary(cfg, dataset_roots(cfg, latents_root), acc.device), flush=True)
            if memory_plan:
                print(memory_plan, flush=True)
        # Ulysses sequence parallelism (parallel.sp_degree > 1): groups of consecutive ranks share one sample.
        sp_degree = cfg.parallel.sp_degree
        self.dp_rank, self.dp_world = data_parallel_rank(acc.process_index, acc.num_processes, sp_degree)
        with torch.random.fork_rng(devices=[]):  # the same LoRA initialisation on every rank, whatever the wrapper
            torch.manual_seed(cfg.seed)
            self.parts = build_model(cfg, acc.device, self.out / "base_transformer" if acc.is_main_process else None)
        acc.print(f"attention backend: {self.parts.backend} (attention.backend={cfg.attention.backend})")
        recompute = self.parts.recompute
        if recompute is not None and recompute.decided:
            acc.print(recompute.decided)
        self.compile_watch = CompileWatch() if t.compile else None
        if t.compile and self._zero3():
            acc.print(
                "compile: under ZeRO-3, DeepSpeed's parameter-gathering hooks on the modules inside each block split "
                "its compiled graph into per-module pieces (correct, little fused; ZeRO-2 and DDP keep whole blocks)"
            )
        self.sp = init_sequence_parallel(sp_degree, acc.device)
        self.sp_handle = enable_sequence_parallel(self.parts.handle, self.sp) if self.sp is not None else None
        self.dataset, self.sampler, loader = build_data(
            cfg, self.parts, acc.process_index, acc.num_processes, latents_root
        )
        if self.flow.distill_guidance != 1.0:  # the unconditional text of the guidance-augmented target
            empty = self.dataset.stored_empty_prompt()
            if empty is None:
                raise ConfigError(
                    "train.distill_guidance needs the empty prompt's text states beside the dataset (empty_prompt."
                    "safetensors): prepare it again with data.prepare"
                )
            self._uncond_text = self.dataset.padded_text(empty)
        self.cursor = DataCursor(loader, self.sampler)
        params = [p for p in self.parts.transformer.parameters() if p.requires_grad]
        self.num_trainable = sum(p.numel() for p in params)
        o = cfg.optim
        optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)
        from diffusers.optimization import get_scheduler

        scheduler = get_scheduler(
            o.scheduler,
            optimizer=optimizer,
            num_warmup_steps=o.warmup_steps * acc.num_processes,
            num_training_steps=(o.schedule_steps or t.max_steps) * acc.num_processes,
        )
        self.model, self.optimizer, self.scheduler = acc.prepare(self.parts.transformer, optimizer, scheduler)
        if t.compile and isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            line = without_ddp_optimizer()
            if line:
                acc.print(line)
        self.state = TrainState()
        acc.register_for_checkpointing(self.state, self.cursor)
        self.ema = self._weight_average(params)
        deepspeed = acc.distributed_type == DistributedType.DEEPSPEED
        self.checkpoints = CheckpointManager(
            acc,
            self.out / "checkpoints",
            t.keep_last,
            save_lora=self._save_lora,
            load_lora=self._load_lora,
            # DeepSpeed writes its own model file: only the trainable (LoRA) weights, so checkpoints stay LoRA-sized.
            save_kwargs={"exclude_frozen_parameters": True} if deepspeed else None,
            load_kwargs={"load_module_strict": False} if deepspeed else None,
            weights_file=FULL_FILE if self.full else LORA_FILE,
        )
        self._lora_snapshot: dict | None = None
        self.run = RunView(
            cfg=cfg,
            accelerator=acc,
            out=self.out,
            parts=self.parts,
            dataset=self.dataset,
            state=self.state,
            sigma_range=self.flow.sigma_range,
            dp_rank=self.dp_rank,
            dp_world=self.dp_world,
            sp=self.sp,
            model=lambda: self.model,
            unwrapped=self.unwrapped,
            averaged_weights=self.averaged_weights,
        )
        from train.eval.validation import Validator

        self.validator = Validator(self.run)

    def _weight_average(self, params: list[torch.nn.Parameter]):
        """train.ema_decay > 0: the moving average (train/ema.py), registered for checkpointing now unless the
        checkpoint being resumed has none (it then starts from the resumed weights, registered after the load)."""
        decay = self.cfg.train.ema_decay
        if not decay:
            return None
        if self._zero3() or self.accelerator.distributed_type == DistributedType.FSDP:
            raise ConfigError(
                f"train.ema_decay={decay} needs whole parameters on every rank: DDP, ZeRO-1/2 or one process, "
                "not ZeRO-3 / FSDP (set train.ema_decay=0)"
            )
        from train.ema import WeightAverage

        ema = WeightAverage(params, decay)
        self._ema_pending = self._resume is not None and not has_weight_average(self._resume)
        if not self._ema_pending:
            self.accelerator.register_for_checkpointing(ema)
        return ema

    def averaged_weights(self):
        """A context with the weights' moving average in the model (train.ema_decay > 0), else the weights as
        they are: what validation samples and exports hold."""
        return self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext()

    def _configure_deepspeed(self) -> None:
        """Batch size, accumulation and clipping into the DeepSpeed config: our loader is not `prepare`d (the sampler
        shards by data-parallel rank), so Accelerate cannot infer them. DeepSpeed counts every process as data
        parallel; with sequence parallelism a step still takes batch_size samples per group."""
        plugin = self.accelerator.state.deepspeed_plugin
        if plugin is None:
            return
        cfg, acc = self.cfg, self.accelerator
        ga = cfg.train.gradient_accumulation_steps
        ds = plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = cfg.data.batch_size
        ds["gradient_accumulation_steps"] = ga
        ds["train_batch_size"] = cfg.data.batch_size * ga * acc.num_processes
        ds["gradient_clipping"] = cfg.optim.max_grad_norm

    def _zero3(self) -> bool:
        plugin = self.accelerator.state.deepspeed_plugin
        return plugin is not None and plugin.zero_stage == 3

    def _sharded_lora(self) -> bool:
        """Whether the LoRA parameters are sharded across ranks (DeepSpeed ZeRO-3, FSDP)."""
        return self._zero3() or self.accelerator.distributed_type == DistributedType.FSDP

    @contextlib.contextmanager
    def _full_lora(self, modifier_rank: int | None = None):
        """The LoRA parameters whole on every rank for the block (collective: every rank enters); a no-op unless they
        are sharded. ZeRO-3: DeepSpeed's GatheredParameters (`modifier_rank`: the rank whose in-place changes are
        kept). FSDP2: the sharded (DTensor) LoRA parameters are swapped for whole copies and put back afterwards;
        changes made inside are not kept."""
        if self._zero3():
            import deepspeed

            params = [p for p in self.unwrapped().parameters() if p.requires_grad]
            with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
                yield
            return
        if self.accelerator.distributed_type != DistributedType.FSDP:
            yield
            return
        swapped = []
        for module in self.unwrapped().modules():
            for name, param in list(module._parameters.items()):
                if param is not None and param.requires_grad and hasattr(param, "full_tensor"):
                    swapped.append((module, name, param))
                    module._parameters[name] = torch.nn.Parameter(param.full_tensor(), requires_grad=False)
        try:
            yield
        finally:
            for module, name, param in swapped:
                module._parameters[name] = param

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The LoRA weights (PEFT keys) on the CPU, whole under every wrapper; collective: call on every rank."""
        with self._full_lora():
            return {k: v.detach().cpu().clone() for k, v in lora_state_dict(self.unwrapped()).items()}

    def _save_checkpoint(self, step: int) -> Path:
        self._lora_snapshot = self.lora_state_dict() if self._sharded_lora() else None
        try:
            path = self.checkpoints.save(step)
        finally:
            self._lora_snapshot = None
        say(self.accelerator, f"step {step}: checkpoint {path}" + ("" if self.full else f" (LoRA in {path / 'lora'})"))
        return path

    # -- checkpoint hooks -----------------------------------------------------------------------------------------
    def unwrapped(self) -> torch.nn.Module:
        """The transformer itself, under whatever wrapper Accelerate put around it."""
        if self._deepspeed:
            return self.accelerator.unwrap_model(self.model)
        # Accelerate's unwrap imports DeepSpeed whenever it is installed, and that import logs an accelerator
        # warning on every run; without DeepSpeed the wrappers are torch's (DDP, FSDP1, a whole-model compile).
        from torch._dynamo.eval_frame import OptimizedModule
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = self.model
        while isinstance(model, (torch.nn.parallel.DistributedDataParallel, FullyShardedDataParallel, OptimizedModule)):
            model = model._orig_mod if isinstance(model, OptimizedModule) else model.module
        return model

    def _save_lora(self, path: Path) -> None:
        from safetensors.torch import save_file

        if self.full:  # every weight (fp32 masters): exact resume
            save_file({k: v.detach().cpu().contiguous() for k, v in self.unwrapped().state_dict().items()}, str(path))
            return
        state = self._lora_snapshot
        if state is None:
            state = {k: v.cpu() for k, v in lora_state_dict(self.unwrapped()).items()}
        save_file(state, str(path))  # PEFT keys: what resume loads
        if self.ema is not None:  # the export holds the average (train.ema_decay; never sharded, see _weight_average)
            with self.ema.swapped_in():
                state = {k: v.detach().cpu().clone() for k, v in lora_state_dict(self.unwrapped()).items()}
        from train.export import lora_info, write_lora_files

        # and the LoRA as the final export writes it, so any checkpoint can be generated with or shared
        write_lora_files(
            path.parent / "lora",
            state,
            adapter=self.parts.adapter,
            lora_meta=adapter_metadata(self.parts.lora_config),
            info=lora_info(self.run),
            comfy=self.cfg.train.export_comfy,
            transformer=self.unwrapped(),
        )

    def _load_lora(self, path: Path) -> None:  # on every rank
        from safetensors.torch import load_file

        if self.full:
            self.unwrapped().load_state_dict(load_file(str(path)), strict=True)
            return
        if self.accelerator.distributed_type == DistributedType.FSDP:
            return  # Accelerate's FSDP checkpoint holds the (sharded) model state, LoRA included; it is loaded already
        with self._full_lora(modifier_rank=0):
            load_lora_state_dict(self.unwrapped(), load_file(str(path)), source=path)  # CPU, copied into the params

    # -- one step -----------------------------------------------------------------------------------------------
    def _micro_step(self, batch: dict, step: int, micro: int) -> tuple[torch.Tensor, int]:
        acc, parts = self.accelerator, self.parts
        x0 = batch["latents"].to(acc.device)
        gen = step_generator(self.cfg.seed, step, micro, self.dp_rank)
        model_dtype = input_dtype(self.model)
        conditions = conditions_of(batch, acc.device, model_dtype)
        uncond = None
        if self.flow.distill_guidance != 1.0:
            uncond = {k: v.to(acc.device, model_dtype if v.is_floating_point() else v.dtype).expand(x0.shape[0], *v.shape)
                      for k, v in self._uncond_text.items()}  # fmt: skip
        with acc.autocast():
            loss = flow_matching_loss(parts.adapter, self.model, self.flow, x0, conditions, gen, model_dtype, uncond)
        tokens = x0.shape[0] * parts.handle.last_grid.video_tokens if parts.handle.last_grid is not None else 0
        return loss, tokens

    def _after_step(self) -> None:
        """The recompute budget's measurements (train.checkpoint_blocks=auto) and the log of (re)compilations."""
        acc, recompute = self.accelerator, self.parts.recompute
        line = recompute.after_step() if recompute is not None else None
        if line:
            say(acc, line)
        grid = self.parts.handle.last_grid
        if self.compile_watch is not None and grid is not None:
            line = self.compile_watch.check(f"{grid.frames}x{grid.height}x{grid.width}")
            if line:
                say(acc, line)

    def _all_ranks(self, flag: bool) -> bool:
        value = torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(value, reduction="sum").item() > 0)

    # -- the loop -----------------------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to train.max_steps (or until a stop signal), checkpointing and exporting; returns a summary."""
        cfg, acc, t = self.cfg, self.accelerator, self.cfg.train
        resume = self._resume
        if resume is not None:
            self.checkpoints.load(resume)
            acc.print(f"resumed from {resume} at step {self.state.step}")
            if self.ema is not None and self._ema_pending:
                acc.register_for_checkpointing(self.ema)
                acc.print(f"train.ema_decay={t.ema_decay}: {resume} holds no average; it starts from these weights")
        if acc.is_main_process and cfg.logging.trackers:
            flat = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
            init = {"wandb": {"mode": cfg.logging.wandb_mode, "name": cfg.logging.run_name}}
            acc.init_trackers(cfg.logging.project, config=_flatten(flat), init_kwargs=init)
        bar = tqdm(total=t.max_steps, initial=self.state.step, disable=not acc.is_local_main_process, desc="train")
        nan_streak, stopped_by, ended_early, interrupted = 0, None, None, False
        self._best_val, self._stale = math.inf, 0
        fit_started = time.perf_counter()
        with StopFlag() as stop, contextlib.closing(self.cursor), bar_safe_logging():  # workers stop with the loop
            while self.state.step < t.max_steps:
                step = self.state.step
                started = time.perf_counter()
                losses, tokens, bad = [], 0, False
                for micro in range(t.gradient_accumulation_steps):
                    batch = self.cursor.next()
                    with acc.accumulate(self.model):
                        loss, n = self._micro_step(batch, step, micro)
                        tokens += n
                        if self._all_ranks(not torch.isfinite(loss).item()):
                            bad = True
                            continue
                        # SP: the group's ranks each hold a share of the full-sample gradient and the wrappers
                        # average over all ranks, so the loss is scaled by the group size (radial.parallel).
                        acc.backward(loss * self.sp.loss_scale if self.sp is not None else loss)
                        losses.append(loss.detach())
                grad_norm = None
                if bad:
                    self.optimizer.zero_grad(set_to_none=True)
                    nan_streak += 1
                    self.state.skipped += 1
                    msg = f"step {step}: non-finite loss"
                    if t.on_nan == "stop" or nan_streak > t.max_nan_skips:
                        raise NonFiniteLoss(f"{msg}; stopping (train.on_nan={t.on_nan}, {nan_streak} in a row)")
                    say(acc, f"{msg}; step skipped ({nan_streak} in a row, train.max_nan_skips={t.max_nan_skips})")
                else:
                    nan_streak = 0
                    if cfg.optim.max_grad_norm > 0:
                        grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.optim.max_grad_norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    if self.ema is not None:
                        self.ema.update()
                self.state.step = step + 1
                self._after_step()
                loss_value = acc.reduce(torch.stack(losses).mean(), "mean").item() if losses else float("nan")
                self.state.losses.append((step + 1, loss_value))
                elapsed = time.perf_counter() - started
                if (step + 1) % t.log_every == 0:
                    self._log(step + 1, loss_value, grad_norm, elapsed, tokens)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}")
                ended_early = self._ended_early(self.validator.maybe_run(step + 1), fit_started)
                if ended_early:
                    say(acc, f"step {step + 1}: {ended_early}; ending the run here")
                    break
                if t.checkpoint_every and (step + 1) % t.checkpoint_every == 0 and step + 1 < t.max_steps:
                    self._save_checkpoint(step + 1)
                if self._all_ranks(stop.requested):
                    stopped_by = stop.signal_name or "a signal on another rank"
                    interrupted = self._all_ranks(stop.signal_name == "SIGINT")  # Ctrl-C: export too
                    break
        bar.close()
        final = self._save_checkpoint(self.state.step)
        summary = {
            "step": self.state.step,
            "checkpoint": str(final),
            "stopped_by": stopped_by,
            "ended_early": ended_early,
            "interrupted": interrupted,
            "wall_s": time.perf_counter() - fit_started,
            **final_loss(self.state.losses),
        }
        if not stopped_by or interrupted:
            self._check_skipped(final)
        if stopped_by and not interrupted:
            report_stop(self.state.step, final, stopped_by)  # train.launcher: the job exits 0 when every rank saved
            acc.print(f"stopped by {stopped_by} at step {self.state.step}; resume with train.resume=latest")
        else:
            from train.export import export_run

            # ZeRO-3 / FSDP: the LoRA whole on every rank while the main process exports
            with self._full_lora(), self.averaged_weights():
                if acc.is_main_process:
                    summary.update(export_run(self.run))
            if not interrupted:  # Ctrl-C: the user wants out; the end hooks (sampling, metrics) can take minutes
                with self.averaged_weights():
                    summary["eval"] = self.validator.run_end_hooks()
        acc.wait_for_everyone()
        acc.end_training()
        self.run_lock.release()  # after the last write
        return summary

    def _ended_early(self, metrics: dict | None, started: float) -> str | None:
        """Why the run ends before train.max_steps (the held-out loss stopped improving, or train.time_limit_s has
        passed), decided alike on every rank; None to go on."""
        t = self.cfg.train
        if not (t.early_stop_patience or t.time_limit_s):
            return None
        reason = None
        if metrics and t.early_stop_patience and "val/loss" in metrics:
            loss = metrics["val/loss"]
            if loss < self._best_val * (1 - t.early_stop_min_delta):
                self._best_val, self._stale = loss, 0
            else:
                self._best_val, self._stale = min(self._best_val, loss), self._stale + 1
            if self._stale >= t.early_stop_patience:
                reason = (
                    f"held-out loss plateaued ({self._stale} validations without a "
                    f"{t.early_stop_min_delta:.1%} gain on {self._best_val:.4f})"
                )
        if reason is None and t.time_limit_s and time.perf_counter() - started >= t.time_limit_s:
            reason = f"train.time_limit_s={t.time_limit_s:g} reached"
        if not self._all_ranks(reason is not None):
            return None
        return reason or "another rank ended the run early"

    def _resolve_resume(self):
        """train.resume on the main process (it reads the checkpoints back once), shared with every rank; an error
        is raised on every rank, so that none waits for the others."""
        from accelerate.utils import broadcast_object_list

        acc = self.accelerator
        answer: list = [None, None]
        if acc.is_main_process:
            try:
                path = resolve_resume(self.cfg.train.resume, self.out / "checkpoints")
                answer = [None if path is None else str(path), None]
            except (CheckpointError, FileNotFoundError) as e:
                answer = [None, e]
        if acc.num_processes > 1:
            broadcast_object_list(answer, from_process=0)
        if answer[1] is not None:
            raise answer[1]
        return None if answer[0] is None else Path(answer[0])

    def _check_skipped(self, final: Path) -> None:
        """A run whose steps were mostly skipped (non-finite losses) does not export: its LoRA would claim steps
        it did not train. More than MAX_SKIPPED_SHARE of all steps (resumed ones included) is too many."""
        skipped, steps = self.state.skipped, self.state.step
        if steps and skipped > MAX_SKIPPED_SHARE * steps:
            what = "all" if skipped == steps else f"{skipped}"
            raise TrainingError(
                f"{what} of {steps} steps were skipped for a non-finite loss (more than {MAX_SKIPPED_SHARE:.0%}: "
                f"the LoRA would claim {steps} steps it did not train), so nothing was exported; check the data "
                f"(`python -m data.shards check ROOT`) or lower optim.lr; the last checkpoint is {final}"
            )

    def _log(self, step: int, loss: float, grad_norm, elapsed: float, tokens: int) -> None:
        acc = self.accelerator
        plan = self.parts.handle.last_plan
        logs = {
            "loss": loss,
            "lr": self.scheduler.get_last_lr()[0],
            "step_time_s": elapsed,
            "tokens_per_s": tokens * self.dp_world / max(elapsed, 1e-9),  # one sample per SP group
            "peak_memory_gb": _peak_memory_gb(acc.device),
        }
        if grad_norm is not None:
            logs["grad_norm"] = float(grad_norm)
        if plan is not None:  # the sparse layers' block density, and the whole model's with dense layers counted
            h = self.parts.handle
            logs["block_density"] = plan.stats.block_density
            logs["model_block_density"] = model_density(plan.stats.block_density, h.num_layers, h.config.dense_layers)
        logs = {k: v for k, v in logs.items() if not (isinstance(v, float) and math.isnan(v) and k != "loss")}
        acc.log(logs, step=step)
        if acc.is_main_process:  # machine-readable beside the trackers (benchmarks read it)
            append_metrics(self.out, step, logs)


#: the final loss is the mean over this many last steps (one step's loss is as noisy as its timestep draw)
FINAL_LOSS_STEPS = 10


def final_loss(losses: list[tuple[int, float]]) -> dict:
    """{"final_loss": mean of the last FINAL_LOSS_STEPS finite step losses, "final_loss_steps": how many}."""
    tail = [v for _, v in losses[-FINAL_LOSS_STEPS:] if math.isfinite(v)]
    return {"final_loss": sum(tail) / len(tail) if tail else None, "final_loss_steps": len(tail)}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return out
