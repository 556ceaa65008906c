"""A run as train.export sees it (train.run_parts.RunView) without training: the tiny model's real parts
(train.components.build_model), one forward for the handle's grid and plan, trained-looking LoRA weights. Seconds,
where a trainer fixture takes a whole run (and mutmut credits a module fixture's export to one test only)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from tests.trainer_helpers import compose_config, tiny_overrides
from train.checkpoint import TrainState
from train.components import build_model
from train.config import validate
from train.run_parts import RunView

RANK, ALPHA = 4, 12  # scale 3: a wrong alpha or scale shows


def tiny_view(
    out: Path,
    *overrides: str,
    model: str = "tiny_wan",
    records: list[dict] | None = None,
    forward: bool = True,
    step: int = 3,
    losses: tuple = ((1, 0.5), (2, float("nan")), (3, 0.25)),
) -> RunView:
    """The view of a tiny run in `out` (its base saved in out/base_transformer) at `step` with `losses`; `records`:
    the dataset's item records (None: a dataset without them); `forward`: one forward, so the handle has a grid."""
    cfg = validate(
        compose_config([*tiny_overrides(out, out / "data", model=model), f"lora.rank={RANK}", f"lora.alpha={ALPHA}",
                        *overrides])
    )  # fmt: skip
    parts = build_model(cfg, torch.device("cpu"), base_dir=out / "base_transformer")
    m, adapter = parts.transformer, parts.adapter
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        if forward:
            latents = adapter.make_dummy_latents(m, 1, 5, 8, 8)  # 5 latent frames of 4x4 tokens
            conditions = adapter.make_dummy_conditions(m, 1, 8, latent_shape=latents.shape)
            adapter.predict(m, latents, torch.tensor([500.0]), conditions)
    state = TrainState()
    state.step, state.losses = step, list(losses)
    dataset = SimpleNamespace() if records is None else SimpleNamespace(records=records)
    return RunView(cfg=cfg, accelerator=None, out=out, parts=parts, dataset=dataset, state=state, sigma_range=(0.0, 1.0),
                   dp_rank=0, dp_world=1, sp=None, model=lambda: m, unwrapped=lambda: m, averaged_weights=None)  # fmt: skip
