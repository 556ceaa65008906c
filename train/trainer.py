"""The training loop: flow matching on LoRA parameters through Accelerate, resumable, observable, stoppable."""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from radial.lora import load_lora_state_dict, lora_state_dict
from train.checkpoint import CheckpointManager, TrainState, resolve_resume
from train.components import build_data, build_model, synthetic_latents
from train.config import Config
from train.flow import FlowMatching
from train.signals import StopFlag
from train.step import conditions_of, flow_matching_loss


class NonFiniteLoss(RuntimeError):
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
                self._iter = iter(self.loader)
            try:
                self._last = next(self._iter)
                return self._last
            except StopIteration:
                self._iter = None

    def state_dict(self) -> dict:
        return self.sampler.state_dict(after=self._last) if self._last is not None else self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
        self._iter, self._last = None, None


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """A generator for one micro-step's noise and timesteps: reproducible across resumes and device types."""
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
        set_seed(cfg.seed, device_specific=True)
        self.flow = FlowMatching(
            sampling=t.timestep_sampling,
            logit_mean=t.logit_mean,
            logit_std=t.logit_std,
            shift=cfg.model.flow_shift,
            weighting=t.loss_weighting,
        )
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
        latents_root = (
            synthetic_latents(cfg, acc.is_main_process) if cfg.data.kind == "synthetic" else Path(cfg.data.root)
        )
        acc.wait_for_everyone()
        self.parts = build_model(cfg, acc.device, self.out / "base_transformer" if acc.is_main_process else None)
        self.dataset, self.sampler, loader = build_data(
            cfg, self.parts, acc.process_index, acc.num_processes, latents_root
        )
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
            num_training_steps=t.max_steps * acc.num_processes,
        )
        self.model, self.optimizer, self.scheduler = acc.prepare(self.parts.transformer, optimizer, scheduler)
        self.state = TrainState()
        acc.register_for_checkpointing(self.state, self.cursor)
        self.checkpoints = CheckpointManager(
            acc, self.out / "checkpoints", t.keep_last, save_lora=self._save_lora, load_lora=self._load_lora
        )

    # -- checkpoint hooks -----------------------------------------------------------------------------------------
    def _unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def _save_lora(self, path: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.cpu() for k, v in lora_state_dict(self._unwrapped()).items()}, str(path))

    def _load_lora(self, path: Path) -> None:
        from safetensors.torch import load_file

        load_lora_state_dict(self._unwrapped(), load_file(str(path), device=str(self.accelerator.device)))

    # -- one step -----------------------------------------------------------------------------------------------
    def _micro_step(self, batch: dict, step: int, micro: int) -> tuple[torch.Tensor, int]:
        acc, parts = self.accelerator, self.parts
        x0 = batch["latents"].to(acc.device)
        gen = step_generator(self.cfg.seed, step, micro, acc.process_index)
        model_dtype = next(p.dtype for p in self.model.parameters() if not p.requires_grad)
        with acc.autocast():
            loss = flow_matching_loss(
                parts.adapter, self.model, self.flow, x0, conditions_of(batch, acc.device), gen, model_dtype
            )
        tokens = x0.shape[0] * parts.handle.last_grid.video_tokens if parts.handle.last_grid is not None else 0
        return loss, tokens

    def _all_ranks(self, flag: bool) -> bool:
        value = torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(value, reduction="sum").item() > 0)

    # -- the loop -----------------------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to train.max_steps (or until a stop signal), checkpointing and exporting; returns a summary."""
        cfg, acc, t = self.cfg, self.accelerator, self.cfg.train
        resume = resolve_resume(t.resume, self.out / "checkpoints")
        if resume is not None:
            self.checkpoints.load(resume)
            acc.print(f"resumed from {resume} at step {self.state.step}")
        if acc.is_main_process and cfg.logging.trackers:
            flat = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
            init = {"wandb": {"mode": cfg.logging.wandb_mode, "name": cfg.logging.run_name}}
            acc.init_trackers(cfg.logging.project, config=_flatten(flat), init_kwargs=init)
        bar = tqdm(total=t.max_steps, initial=self.state.step, disable=not acc.is_local_main_process, desc="train")
        nan_streak, stopped_by = 0, None
        with StopFlag() as stop:
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
                        acc.backward(loss)
                        losses.append(loss.detach())
                grad_norm = None
                if bad:
                    self.optimizer.zero_grad(set_to_none=True)
                    nan_streak += 1
                    msg = f"step {step}: non-finite loss"
                    if t.on_nan == "stop" or nan_streak > t.max_nan_skips:
                        raise NonFiniteLoss(f"{msg}; stopping (train.on_nan={t.on_nan}, {nan_streak} in a row)")
                    acc.print(f"{msg}; step skipped ({nan_streak} in a row, train.max_nan_skips={t.max_nan_skips})")
                else:
                    nan_streak = 0
                    if cfg.optim.max_grad_norm > 0:
                        grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.optim.max_grad_norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                self.state.step = step + 1
                loss_value = acc.reduce(torch.stack(losses).mean(), "mean").item() if losses else float("nan")
                self.state.losses.append((step + 1, loss_value))
                elapsed = time.perf_counter() - started
                if (step + 1) % t.log_every == 0:
                    self._log(step + 1, loss_value, grad_norm, elapsed, tokens)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}")
                if t.checkpoint_every and (step + 1) % t.checkpoint_every == 0 and step + 1 < t.max_steps:
                    self.checkpoints.save(step + 1)
                if self._all_ranks(stop.requested):
                    stopped_by = stop.signal_name or "a signal on another rank"
                    break
        bar.close()
        final = self.checkpoints.save(self.state.step)
        summary = {"step": self.state.step, "checkpoint": str(final), "stopped_by": stopped_by}
        if stopped_by:
            acc.print(f"stopped by {stopped_by} at step {self.state.step}; resume with train.resume=latest")
        else:
            from train.export import export_run

            if acc.is_main_process:
                summary.update(export_run(self))
        acc.wait_for_everyone()
        acc.end_training()
        return summary

    def _log(self, step: int, loss: float, grad_norm, elapsed: float, tokens: int) -> None:
        acc = self.accelerator
        plan = self.parts.handle.last_plan
        logs = {
            "loss": loss,
            "lr": self.scheduler.get_last_lr()[0],
            "step_time_s": elapsed,
            "tokens_per_s": tokens * acc.num_processes / max(elapsed, 1e-9),
            "peak_memory_gb": _peak_memory_gb(acc.device),
        }
        if grad_norm is not None:
            logs["grad_norm"] = float(grad_norm)
        if plan is not None:
            logs["attention_density"] = plan.stats.block_density
        logs = {k: v for k, v in logs.items() if not (isinstance(v, float) and math.isnan(v) and k != "loss")}
        acc.log(logs, step=step)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return out
