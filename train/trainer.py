"""The training loop: flow matching on LoRA parameters through Accelerate, resumable, observable, stoppable."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import DistributedType, set_seed
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from data import data_parallel_rank
from radial.compile import CompileWatch, without_ddp_optimizer
from radial.errors import TrainingError
from radial.lora import adapter_metadata, load_lora_state_dict, lora_state_dict
from radial.mask.stats import model_density
from radial.parallel import enable as enable_sequence_parallel
from radial.parallel import init_sequence_parallel
from radial.run_lock import lock_for_launch
from train.checkpoint import FULL_FILE, LORA_FILE, CheckpointManager, TrainState
from train.components import build_data
from train.config import Config
from train.console import bar_safe_logging, say
from train.data_cursor import DataCursor
from train.launcher import report_stop
from train.policies import EarlyStop, NanPolicy, NonFiniteLoss, StopSignal
from train.records import append_metrics, final_loss, flat_config, peak_memory_gb
from train.resume_fit import check_resume_fits
from train.run_dir import check_output_dir
from train.run_parts import RunView
from train.setup import (
    check_parallel,
    configure_deepspeed,
    flow_of,
    make_accelerator,
    model_parts,
    optimizer_and_schedule,
    prepare_output,
    shared_resume,
    uncond_text,
    weight_average,
    zero3,
)
from train.signals import StopFlag
from train.step import conditions_of, flow_matching_loss, input_dtype, step_generator
from train.weight_stream import device_placement
from train.wrapped import full_lora, sharded_lora, unwrap

__all__ = ["DataCursor", "NonFiniteLoss", "Trainer", "final_loss", "step_generator"]

#: a finished run with more than this share of its steps skipped (non-finite loss) fails instead of exporting
MAX_SKIPPED_SHARE = 0.5


@dataclass
class StepResult:
    """One optimizer step's micro-step losses (finite ones), gradient norm, tokens, whether it was skipped, start."""

    losses: list[torch.Tensor]
    grad_norm: torch.Tensor | None
    tokens: int
    bad: bool
    started: float


class Trainer:
    """Config -> model, data, optimizer under Accelerate -> `fit()` -> checkpoints and exported LoRA."""

    def __init__(self, cfg: Config) -> None:
        self.cfg, self.out, t = cfg, Path(cfg.output_dir), cfg.train
        self.accelerator = acc = make_accelerator(cfg, self.out)
        # Rank 0 holds output_dir's lock until fit() ends: a live run is refused first (the more precise message).
        self.run_lock = lock_for_launch(self.out, "output_dir")
        check_output_dir(self.out, t.resume, t.overwrite)  # on every rank, before any rank writes
        configure_deepspeed(cfg, acc)
        # Read once: Accelerate's state can be reset under a live trainer (tests, the extension benchmark).
        self._deepspeed = acc.distributed_type == DistributedType.DEEPSPEED
        self.full = t.mode == "full"
        check_parallel(cfg, acc)
        # Before the summary, the data and the model: a checkpoint that this config cannot continue fails here.
        self._resume = shared_resume(cfg, acc, self.out)
        if self._resume is not None:
            check_resume_fits(self._resume, cfg)
        set_seed(cfg.seed, device_specific=True)
        self.flow = flow_of(cfg)
        latents_root = prepare_output(cfg, acc, self.out)
        # Ulysses sequence parallelism (parallel.sp_degree > 1): groups of consecutive ranks share one sample.
        self.dp_rank, self.dp_world = data_parallel_rank(acc.process_index, acc.num_processes, cfg.parallel.sp_degree)
        self.parts = model_parts(cfg, acc, self.out)
        self.compile_watch = CompileWatch() if t.compile else None
        if t.compile and zero3(acc):
            acc.print(
                "compile: under ZeRO-3, DeepSpeed's parameter-gathering hooks on the modules inside each block split "
                "its compiled graph into per-module pieces (correct, little fused; ZeRO-2 and DDP keep whole blocks)"
            )
        self.sp = init_sequence_parallel(cfg.parallel.sp_degree, acc.device)
        self.sp_handle = enable_sequence_parallel(self.parts.handle, self.sp) if self.sp is not None else None
        self.dataset, self.sampler, loader = build_data(
            cfg, self.parts, acc.process_index, acc.num_processes, latents_root
        )
        self._uncond_text = uncond_text(cfg, self.dataset)
        self.cursor = DataCursor(loader, self.sampler)
        params = [p for p in self.parts.transformer.parameters() if p.requires_grad]
        self.num_trainable = sum(p.numel() for p in params)
        optimizer, scheduler = optimizer_and_schedule(cfg, acc, params)
        self.model, self.optimizer, self.scheduler = acc.prepare(
            self.parts.transformer, optimizer, scheduler, device_placement=device_placement(acc, self.parts.streamer, 3)
        )
        if t.compile and isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            line = without_ddp_optimizer()
            if line:
                acc.print(line)
        self.state = TrainState()
        acc.register_for_checkpointing(self.state, self.cursor)
        self.ema, self._ema_pending = weight_average(cfg, acc, params, self._resume)
        self.checkpoints = CheckpointManager(
            acc,
            self.out / "checkpoints",
            t.keep_last,
            save_lora=self._save_lora,
            load_lora=self._load_lora,
            # DeepSpeed writes its own model file: only the trainable (LoRA) weights, so checkpoints stay LoRA-sized.
            save_kwargs={"exclude_frozen_parameters": True} if self._deepspeed else None,
            load_kwargs={"load_module_strict": False} if self._deepspeed else None,
            weights_file=FULL_FILE if self.full else LORA_FILE,
        )
        self._lora_snapshot: dict | None = None
        self.view = RunView(
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

        self.validator = Validator(self.view)

    def averaged_weights(self):
        """A context with the weights' moving average in the model (train.ema_decay > 0), else the weights as
        they are: what validation samples and exports hold."""
        return self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext()

    def _full_lora(self, modifier_rank: int | None = None):
        """The LoRA parameters whole on every rank for the block (train.wrapped.full_lora; collective)."""
        return full_lora(self.accelerator, self.unwrapped(), modifier_rank)

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The LoRA weights (PEFT keys) on the CPU, whole under every wrapper; collective: call on every rank."""
        with self._full_lora():
            return {k: v.detach().cpu().clone() for k, v in lora_state_dict(self.unwrapped()).items()}

    def _save_checkpoint(self, step: int) -> Path:
        self._lora_snapshot = self.lora_state_dict() if sharded_lora(self.accelerator) else None
        try:
            path = self.checkpoints.save(step)
        finally:
            self._lora_snapshot = None
        say(self.accelerator, f"step {step}: checkpoint {path}" + ("" if self.full else f" (LoRA in {path / 'lora'})"))
        return path

    # -- checkpoint hooks -----------------------------------------------------------------------------------------
    def unwrapped(self) -> torch.nn.Module:
        """The transformer itself, under whatever wrapper Accelerate put around it."""
        return unwrap(self.accelerator, self.model, self._deepspeed)

    def _save_lora(self, path: Path) -> None:
        from safetensors.torch import save_file

        if self.full:  # every weight (fp32 masters): exact resume
            save_file({k: v.detach().cpu().contiguous() for k, v in self.unwrapped().state_dict().items()}, str(path))
            return
        state = self._lora_snapshot
        if state is None:
            state = {k: v.cpu() for k, v in lora_state_dict(self.unwrapped()).items()}
        save_file(state, str(path))  # PEFT keys: what resume loads
        if self.ema is not None:  # the export holds the average (train.ema_decay; never sharded: train.setup)
            with self.ema.swapped_in():
                state = {k: v.detach().cpu().clone() for k, v in lora_state_dict(self.unwrapped()).items()}
        from train.export import lora_info, write_lora_files

        # and the LoRA as the final export writes it, so any checkpoint can be generated with or shared
        write_lora_files(
            path.parent / "lora",
            state,
            adapter=self.parts.adapter,
            lora_meta=adapter_metadata(self.parts.lora_config),
            info=lora_info(self.view),
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
    def micro_step(self, batch: dict, step: int, micro: int) -> tuple[torch.Tensor, int]:
        acc, parts = self.accelerator, self.parts
        x0 = batch["latents"].to(acc.device)
        gen = step_generator(self.cfg.seed, step, micro, self.dp_rank)
        model_dtype = input_dtype(self.model)
        conditions = conditions_of(batch, acc.device, model_dtype)
        uncond = None
        if self._uncond_text is not None:
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
    def train_step(self, step: int) -> StepResult:
        """One optimizer step of train.gradient_accumulation_steps micro-steps; a non-finite loss on any rank skips
        the update (the NaN policy decides what follows)."""
        acc, t = self.accelerator, self.cfg.train
        started = time.perf_counter()
        losses, tokens, bad = [], 0, False
        for micro in range(t.gradient_accumulation_steps):
            batch = self.cursor.next()
            with acc.accumulate(self.model):
                loss, n = self.micro_step(batch, step, micro)
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
            self.state.skipped += 1
        else:
            if self.cfg.optim.max_grad_norm > 0:
                grad_norm = acc.clip_grad_norm_(self.model.parameters(), self.cfg.optim.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update()
        return StepResult(losses, grad_norm, tokens, bad, started)

    # -- the loop -----------------------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to train.max_steps (or until a stop signal), checkpointing and exporting; returns a summary."""
        acc, t = self.accelerator, self.cfg.train
        self._resume_and_track()
        bar = tqdm(total=t.max_steps, initial=self.state.step, disable=not acc.is_local_main_process, desc="train")
        nan = NanPolicy(t.on_nan, t.max_nan_skips)
        early = EarlyStop(t.early_stop_patience, t.early_stop_min_delta, t.time_limit_s)
        ended_early = None
        fit_started = time.perf_counter()
        with StopFlag() as flag, contextlib.closing(self.cursor), bar_safe_logging():  # workers stop with the loop
            stop = StopSignal(flag)
            while self.state.step < t.max_steps:
                step = self.state.step
                result = self.train_step(step)
                line = nan.after_step(step, result.bad)
                if line:
                    say(acc, line)
                self.state.step = step + 1
                self._after_step()
                loss = acc.reduce(torch.stack(result.losses).mean(), "mean").item() if result.losses else float("nan")
                self.state.losses.append((step + 1, loss))
                if (step + 1) % t.log_every == 0:
                    self.log_step(step + 1, loss, result.grad_norm, time.perf_counter() - result.started, result.tokens)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                metrics = self.validator.maybe_run(step + 1)
                ended_early = early.check(metrics, time.perf_counter() - fit_started, self._all_ranks)
                if ended_early:
                    say(acc, f"step {step + 1}: {ended_early}; ending the run here")
                    break
                if t.checkpoint_every and (step + 1) % t.checkpoint_every == 0 and step + 1 < t.max_steps:
                    self._save_checkpoint(step + 1)
                if stop.check(self._all_ranks):
                    break
        bar.close()
        return self._finish(fit_started, ended_early, stop.stopped_by, stop.interrupted)

    def _resume_and_track(self) -> None:
        """train.resume's checkpoint loaded (the moving average registered after it when it held none), the
        trackers started with the whole config."""
        cfg, acc, resume = self.cfg, self.accelerator, self._resume
        if resume is not None:
            self.checkpoints.load(resume)
            acc.print(f"resumed from {resume} at step {self.state.step}")
            if self.ema is not None and self._ema_pending:
                acc.register_for_checkpointing(self.ema)
                acc.print(
                    f"train.ema_decay={cfg.train.ema_decay}: {resume} holds no average; it starts from these weights"
                )
        if acc.is_main_process and cfg.logging.trackers:
            flat = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
            init = {"wandb": {"mode": cfg.logging.wandb_mode, "name": cfg.logging.run_name}}
            acc.init_trackers(cfg.logging.project, config=flat_config(flat), init_kwargs=init)

    def _finish(self, fit_started: float, ended_early: str | None, stopped_by: str | None, interrupted: bool) -> dict:
        """The final checkpoint, then the export and the end hooks (not after a stop signal other than Ctrl-C: the
        job resumes instead); returns fit()'s summary."""
        acc = self.accelerator
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

            with self.averaged_weights():  # train.ema_decay: the export and the end hooks hold the average
                # ZeRO-3 / FSDP: the LoRA whole on every rank while the main process exports
                with self._full_lora():
                    if acc.is_main_process:
                        summary.update(export_run(self.view))
                if not interrupted:  # Ctrl-C: the user wants out; the end hooks (sampling, metrics) can take minutes
                    summary["eval"] = self.validator.run_end_hooks()
        acc.wait_for_everyone()
        acc.end_training()
        self.run_lock.release()  # after the last write
        return summary

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

    def log_step(self, step: int, loss: float, grad_norm, elapsed: float, tokens: int) -> None:
        acc = self.accelerator
        plan = self.parts.handle.last_plan
        logs = {
            "loss": loss,
            "lr": self.scheduler.get_last_lr()[0],
            "step_time_s": elapsed,
            "tokens_per_s": tokens * self.dp_world / max(elapsed, 1e-9),  # one sample per SP group
            "peak_memory_gb": peak_memory_gb(acc.device),
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
