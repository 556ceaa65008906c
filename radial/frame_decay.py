"""Attention decay past the training window (UltraViCo-style training-free length extension).

A video model trained on `train_frames` latent frames never saw a query attend to a key that many frames away; at
longer lengths those keys dilute the attention the model learned ("attention dispersion", Zhao et al. 2025,
"UltraViCo: Breaking Extrapolation Limits in Video Diffusion Transformers"). The rule here: the softmax weight of
a video key whose frame distance to the query's frame is >= train_frames is multiplied by `factor` (lambda, in
(0, 1]) before normalisation, i.e. log(lambda) is added to its logit. Text tokens (queries or keys) are not decayed.

The paper's rule is more elaborate (official kernel, thu-ml/DiT-Extrapolation branch ultra-wan): it multiplies the
positive logits (not the weights) by lambda for keys farther than half the training window in tokens
(|q - k| > tokens_per_frame * train_frames / 2, a centred window), leaves negative logits alone, and masks out
keys past the training window for the queries of the first frame. The constant-factor form here is the one the
length-extension experiment compares (issue 25); it is a pure function of (frame distance, lambda), so it composes
with any block mask (radial, window) and is exact in every backend that takes a score bias.

Backends: `reference` adds the bias per query chunk (no S x S tensor), `flex` passes a score_mod to FlexAttention;
`radial.attention` routes the others there (see `radial_attention`).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch

from radial.plan import RadialPlan

_score_mods: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class FrameDecay:
    """Multiply by `factor` the attention weights of video keys >= `train_frames` frames from the query's frame."""

    factor: float
    train_frames: int

    def applies(self, num_frames: int) -> bool:
        """Whether any query-key pair of a clip of `num_frames` latent frames is decayed (factor 1 never is)."""
        return self.factor < 1.0 and num_frames > self.train_frames

    @property
    def log_factor(self) -> float:
        return math.log(self.factor)

    def bias(self, plan: RadialPlan, rows: slice, device: torch.device) -> torch.Tensor:
        """The additive fp32 logit bias [rows, S] of query rows `rows` (0 or log(factor))."""
        s, n = plan.tokens_per_frame, plan.video_tokens
        q = torch.arange(rows.start, rows.stop, device=device)
        k = torch.arange(plan.seq_len, device=device)
        far = ((q[:, None] // s - k[None, :] // s).abs() >= self.train_frames) & (q[:, None] < n) & (k[None, :] < n)
        return torch.where(far, self.log_factor, 0.0).to(torch.float32)

    def score_mod(self, plan: RadialPlan):
        """A FlexAttention score_mod adding log(factor) to the decayed pairs; one function object per (plan, decay),
        so that the compiled kernel is reused across layers and steps."""
        per_plan = _score_mods.setdefault(plan, {})
        if self not in per_plan:
            s, n, t, log_factor = plan.tokens_per_frame, plan.video_tokens, self.train_frames, self.log_factor

            def score_mod(score, b, h, q_idx, kv_idx):
                far = ((q_idx // s - kv_idx // s).abs() >= t) & (q_idx < n) & (kv_idx < n)
                return torch.where(far, score + log_factor, score)

            per_plan[self] = score_mod
        return per_plan[self]
