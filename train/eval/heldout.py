"""The held-out flow-matching loss of validation: the same items at fixed noise levels, the same noise (seeded per
item and level) every time, so that the curve moves only with the model."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch

from train.flow import flow_loss, noisy_latents
from train.step import conditions_of, input_dtype


def _seeded(*parts) -> torch.Generator:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


class HeldOutLoss:
    """The Validator's held-out loss (a mixin: it reads `view`, `settings`, `family` and caches `_heldout`)."""

    def heldout_dataset(self):
        if self._heldout is None:
            s = self.settings
            if s.heldout_root:
                from data import Expect, LatentDataset

                transformer = self._transformer()
                expect = Expect.from_transformer_config(self.family, transformer.config)
                self._heldout = LatentDataset(Path(s.heldout_root).expanduser(), model=self.family, expect=expect)
            else:
                self._heldout = self.view.dataset
        return self._heldout

    def heldout_indices(self) -> list[int]:
        return list(range(min(self.settings.num_heldout, len(self.heldout_dataset()))))

    def heldout_loss(self) -> dict[str, float]:
        """Mean flow-matching loss of the held-out items at each fixed noise level; identical on every rank."""
        from data import collate

        s, t = self.settings, self.view
        acc = t.accelerator
        indices = self.heldout_indices()
        # A run trained on part of the schedule (a Wan2.2 expert, train.timestep_range) is measured on that part.
        lo, hi = t.sigma_range
        # (position in eval.timesteps, sigma): the noise is seeded by the position, whichever levels are kept.
        levels = [(j, float(x)) for j, x in enumerate(s.timesteps) if lo <= float(x) <= hi]
        if not indices or not levels:
            return {}
        ds = self.heldout_dataset()
        world = acc.num_processes
        # Items are shared out by data-parallel rank: the ranks of a sequence-parallel group run the same item
        # together, and only the group's first rank counts it (its loss is the full item's on every group rank).
        rank, ranks = t.dp_rank, t.dp_world
        counts_here = t.sp is None or t.sp.rank == 0
        per_rank = math.ceil(len(indices) / ranks)  # every rank runs as many forwards (collectives stay in step)
        mine = [indices[(rank * per_rank + k) % len(indices)] for k in range(per_rank)]
        real = [counts_here and rank * per_rank + k < len(indices) for k in range(per_rank)]
        sums = torch.zeros(len(levels) + 1, dtype=torch.float64, device=acc.device)
        model = t.model()
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model_dtype = input_dtype(model)
                for index, counts in zip(mine, real, strict=True):
                    item = ds[index]
                    batch = collate([item])
                    x0 = batch["latents"].to(acc.device, torch.float32)
                    conds = conditions_of(batch, acc.device, model_dtype)
                    key = item["meta"]["key"]
                    for j, (position, sigma) in enumerate(levels):
                        gen = _seeded(t.cfg.seed, "heldout", key, position)
                        noise = torch.randn(x0.shape, generator=gen).to(acc.device)
                        sig = torch.full((x0.shape[0],), sigma, device=acc.device)
                        x_t, target = noisy_latents(x0, noise, sig)
                        with acc.autocast():
                            pred = t.parts.adapter.predict(model, x_t.to(model_dtype), sig * 1000, conds)
                        if counts:
                            mask = conds.get("first_frame_mask")  # as the training loss: clean latents excluded
                            sums[j] += flow_loss(pred, target, torch.ones_like(sig), mask).double()
                    if counts:
                        sums[-1] += 1
        finally:
            model.train(was_training)
        total = acc.reduce(sums, reduction="sum") if world > 1 else sums
        n = max(float(total[-1]), 1.0)
        out = {f"val/loss_t{sigma:.2f}": float(total[j]) / n for j, (_, sigma) in enumerate(levels)}
        out["val/loss"] = sum(out.values()) / len(levels)
        out["val/heldout_items"] = float(total[-1])
        return out
