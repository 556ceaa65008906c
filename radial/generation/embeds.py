"""Precomputed prompt embeddings: generate without loading a text encoder.

File format (`.safetensors`, or a `.pt` dict of the same keys; `save_prompt_embeds` writes it):

    prompt_embeds                   [L, D] or [N, L, D]   text encoder states (N prompts; trimmed or padded)
    prompt_attention_mask           [L] or [N, L]         1 = real token (optional: all ones; zero rows of a
                                                          trimmed-then-padded Wan embedding count as padding)
    pooled_prompt_embeds            [P] or [N, P]         HunyuanVideo's CLIP pooled state
    negative_prompt_embeds, negative_prompt_attention_mask, negative_pooled_prompt_embeds
                                                          the same for classifier-free guidance (optional)
    metadata (safetensors header / "prompts" key in .pt): "prompts" a JSON list of N captions (for the sidecar),
    "negative_prompt", "family".

Sequences are padded (zeros, mask 0) or checked to the pipeline's text length, so that positive and negative
embeddings can be concatenated (Mochi, Wan CFG) and Wan sees the zero-padded 512 tokens its pipeline makes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from radial.families import family_spec

SEQUENCE_KEYS = ("prompt_embeds", "negative_prompt_embeds")
MASK_OF = {"prompt_embeds": "prompt_attention_mask", "negative_prompt_embeds": "negative_prompt_attention_mask"}
POOLED_KEYS = ("pooled_prompt_embeds", "negative_pooled_prompt_embeds")
ALL_KEYS = (*SEQUENCE_KEYS, *MASK_OF.values(), *POOLED_KEYS)


@dataclass
class PromptEmbeds:
    """One prompt's embeddings, batch dimension 1, ready for a pipeline call (`call_kwargs`)."""

    tensors: dict[str, torch.Tensor]
    prompt: str | None = None
    negative_prompt: str | None = None
    source: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def has_negative(self) -> bool:
        return "negative_prompt_embeds" in self.tensors

    def call_kwargs(self, family: str, device=None, dtype=None) -> dict[str, torch.Tensor]:
        """The pipeline arguments the family's pipelines take (radial.families): masks where they take masks (not
        Wan's), pooled states where its text states have them (HunyuanVideo's)."""
        spec = family_spec(family)
        out = {}
        for key, t in self.tensors.items():
            if key in MASK_OF.values() and not spec.pipeline_text_masks:
                continue
            if key in POOLED_KEYS and "pooled_prompt_embeds" not in spec.text_fields:
                continue
            t = t.to(device) if device is not None else t
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            out[key] = t
        return out


def _as_batch(t: torch.Tensor, key: str, rank: int) -> torch.Tensor:
    if t.dim() == rank - 1:
        return t.unsqueeze(0)
    if t.dim() != rank:
        want = "[L, D] or [N, L, D]" if rank == 3 else ("[L] or [N, L]" if key.endswith("mask") else "[P] or [N, P]")
        raise ValueError(f"{key} must be {want}, got shape {tuple(t.shape)}")
    return t


def _fit_length(embeds: torch.Tensor, mask: torch.Tensor, length: int, key: str, source: str):
    n = embeds.shape[1]
    if n > length:
        if mask[:, length:].any():
            raise ValueError(
                f"{source}: {key} has {int(mask.sum(1).max())} real tokens, more than the pipeline's text length "
                f"{length} (max_sequence_length)"
            )
        return embeds[:, :length], mask[:, :length]
    if n < length:
        pad = length - n
        embeds = torch.cat([embeds, embeds.new_zeros(embeds.shape[0], pad, embeds.shape[2])], dim=1)
        mask = torch.cat([mask, mask.new_zeros(mask.shape[0], pad)], dim=1)
    return embeds, mask


def load_prompt_embeds(
    path: str | Path, *, text_len: int | None = None, family: str | None = None
) -> list[PromptEmbeds]:
    """Read an embeddings file -> one PromptEmbeds per prompt (N), sequences padded to `text_len` when given."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise FileNotFoundError(f"--prompt-embeds {path}: no such file")
    meta: dict = {}
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            raw = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
        for k, v in header.items():
            try:
                meta[k] = json.loads(v)
            except ValueError:
                meta[k] = v
    elif path.suffix in (".pt", ".pth", ".bin"):
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
        if not isinstance(obj, Mapping):
            raise ValueError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
        raw = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        meta = {k: v for k, v in obj.items() if not isinstance(v, torch.Tensor)}
    else:
        raise ValueError(f"{source}: expected a .safetensors or .pt file of prompt embeddings")
    unknown = sorted(set(raw) - set(ALL_KEYS))
    if unknown:
        raise ValueError(f"{source}: unknown tensors {unknown}; expected some of {list(ALL_KEYS)}")
    if "prompt_embeds" not in raw:
        raise ValueError(f"{source}: no prompt_embeds tensor (keys: {sorted(raw)})")
    if family is not None and meta.get("family") not in (None, family):
        raise ValueError(f"{source}: embeddings were made for family {meta['family']!r}, generating {family!r}")

    tensors: dict[str, torch.Tensor] = {}
    for key in SEQUENCE_KEYS:
        if key not in raw:
            continue
        embeds = _as_batch(raw[key], key, 3)
        mask_key = MASK_OF[key]
        if mask_key in raw:
            mask = _as_batch(raw[mask_key], mask_key, 2).to(torch.int64)
            if mask.shape != embeds.shape[:2]:
                raise ValueError(f"{source}: {mask_key} {tuple(mask.shape)} does not fit {key} {tuple(embeds.shape)}")
        else:
            mask = torch.ones(embeds.shape[:2], dtype=torch.int64)
        if text_len is not None:
            embeds, mask = _fit_length(embeds, mask, text_len, key, source)
        tensors[key], tensors[mask_key] = embeds, mask
    for key in POOLED_KEYS:
        if key in raw:
            tensors[key] = _as_batch(raw[key], key, 2)
    n = tensors["prompt_embeds"].shape[0]
    for key, t in tensors.items():
        if key.startswith("negative") and t.shape[0] == 1 and n > 1:
            tensors[key] = t.expand(n, *t.shape[1:])
        elif tensors[key].shape[0] != n:
            raise ValueError(f"{source}: {key} has {t.shape[0]} prompts, prompt_embeds has {n}")
    if (
        "negative_prompt_embeds" in tensors
        and tensors["negative_prompt_embeds"].shape[1:] != tensors["prompt_embeds"].shape[1:]
    ):
        raise ValueError(
            f"{source}: negative_prompt_embeds {tuple(tensors['negative_prompt_embeds'].shape)} and prompt_embeds "
            f"{tuple(tensors['prompt_embeds'].shape)} differ in length or width; give text_len to pad both"
        )
    prompts = meta.get("prompts")
    if isinstance(prompts, str):
        prompts = [prompts]
    if prompts is None and isinstance(meta.get("prompt"), str):
        prompts = [meta["prompt"]]
    if prompts is not None and len(prompts) != n:
        raise ValueError(f"{source}: metadata lists {len(prompts)} prompts for {n} embeddings")
    out = []
    for i in range(n):
        out.append(
            PromptEmbeds(
                {k: v[i : i + 1].clone() for k, v in tensors.items()},
                prompt=prompts[i] if prompts else None,
                negative_prompt=meta.get("negative_prompt"),
                source=f"{source}#{i}" if n > 1 else source,
                meta={k: v for k, v in meta.items() if k not in ("prompts", "prompt")},
            )
        )
    return out


def save_prompt_embeds(
    path: str | Path,
    tensors: Mapping[str, torch.Tensor],
    *,
    prompts: Sequence[str] | None = None,
    negative_prompt: str | None = None,
    family: str | None = None,
) -> Path:
    """Write an embeddings file that `load_prompt_embeds` (and `--prompt-embeds`) reads."""
    from safetensors.torch import save_file

    path = Path(path)
    unknown = sorted(set(tensors) - set(ALL_KEYS))
    if unknown:
        raise ValueError(f"unknown prompt-embedding keys {unknown}; expected some of {list(ALL_KEYS)}")
    meta = {}
    if prompts is not None:
        meta["prompts"] = json.dumps(list(prompts))
    if negative_prompt is not None:
        meta["negative_prompt"] = json.dumps(negative_prompt)
    if family is not None:
        meta["family"] = json.dumps(family)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    for k, v in data.items():
        if k.endswith("mask"):
            data[k] = v.to(torch.int64)
    save_file(data, str(path), metadata=meta)
    return path
