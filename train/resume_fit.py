"""Whether a checkpoint fits the run that resumes it: its weights file against this run's train.mode, LoRA rank and
adapted modules, read from the safetensors header before anything is built (a mismatch would otherwise surface
as PyTorch's size-mismatch traceback after the model, data and optimizer are ready)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from radial.errors import CheckpointError
from train.checkpoint import FULL_FILE, LORA_FILE
from train.config import Config, meta_transformer, planned_lora_names

NEW_RUN = "or start a new run (another output_dir=..., or train.overwrite=true to replace this one)"


def checkpoint_lora(path: Path) -> tuple[dict[str, int], str | None]:
    """The LoRA in a checkpoint's weights file: {module name: rank} (PEFT keys), and the train.mode that wrote it
    (None: no weights file of ours, e.g. FSDP's own format)."""
    from safetensors import safe_open

    if (path / FULL_FILE).is_file():
        return {}, "full"
    if not (path / LORA_FILE).is_file():
        return {}, None
    ranks = {}
    with safe_open(str(path / LORA_FILE), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open has no items()
            if ".lora_A." in key:
                ranks[key.split(".lora_A.")[0]] = f.get_slice(key).get_shape()[0]
    return ranks, "lora"


def check_resume_fits(checkpoint: Path, cfg: Config) -> None:
    """A CheckpointError naming what differs (train.mode, lora.rank, the adapted modules) when this run's config
    cannot continue `checkpoint`."""
    ranks, mode = checkpoint_lora(checkpoint)
    if mode is None:
        return
    where = f"train.resume: checkpoint {checkpoint}"
    if mode != cfg.train.mode:
        raise CheckpointError(
            f"{where} was written by a train.mode={mode} run, this run has train.mode={cfg.train.mode}: resume with "
            f"train.mode={mode}, {NEW_RUN}"
        )
    if mode == "full":
        return
    rank = Counter(ranks.values()).most_common(1)[0][0] if ranks else None
    if rank is not None and rank != cfg.lora.rank:
        raise CheckpointError(
            f"{where}: its LoRA does not fit this run: checkpoint rank {rank}, this run {cfg.lora.rank} (lora.rank); "
            f"resume with lora.rank={rank}, {NEW_RUN}"
        )
    model = meta_transformer(cfg.model)
    if model is None:  # no readable transformer config: the model loader names what is missing
        return
    planned = set(planned_lora_names(cfg, model))
    saved = set(ranks)
    if planned != saved:
        extra, missing = sorted(planned - saved), sorted(saved - planned)
        diff = "; ".join(
            f"{what}: {len(names)} (e.g. {names[0]})"
            for what, names in (("only in this run", extra), ("only in the checkpoint", missing))
            if names
        )
        raise CheckpointError(
            f"{where}: its LoRA does not fit this run: checkpoint {len(saved)} modules, this run {len(planned)} "
            f"({diff}); resume with the checkpoint's lora.projections / lora.text / lora.target_modules, {NEW_RUN}"
        )
