"""LatentDataset: validated at open, memory-mapped reads; its batches come from data.buckets (BucketBatchSampler,
collate). See data/__init__.py for how the trainer uses them."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import Dataset

from data.encoders.base import TextField
from data.shards import ShardError, dtype_name, load_index, verify_shards
from radial.families import family_spec, geometry

BucketKey = tuple[int, int, int]  # (frames, height, width) in pixels
VERIFY_MODES = ("header", "full")


@dataclass(frozen=True)
class Expect:
    """What the consumer (the transformer) needs; LatentDataset refuses datasets that differ. None = don't check."""

    latent_channels: int | None = None
    text_dim: int | None = None  # prompt_embeds hidden size
    text_len: int | None = None  # prompt_embeds padded length
    pooled_dim: int | None = None  # pooled_prompt_embeds size (HunyuanVideo)
    text_dim_2: int | None = None  # prompt_embeds_2 hidden size (HunyuanVideo-1.5's ByT5 glyph states)
    latent_dtype: str | None = None  # "bfloat16", "float32", "float16" (aliases bf16/fp32/fp16)
    latent_norm: str | None = None  # normalisation convention: "wan", "hunyuan", "mochi"
    frames: tuple[int, ...] | None = None  # every item must have one of these pixel frame counts
    resolutions: tuple[tuple[int, int], ...] | None = None  # every item must have one of these (height, width)
    # Image-to-video: the channels of image_latents the transformer concatenates to its input (0: a text-to-video
    # model) and the image_embeds dim it reads (0: none).
    image_channels: int | None = None
    image_dim: int | None = None
    audio_channels: int | None = None  # audio_latents channels the transformer reads (MiniMax-H3)

    @classmethod
    def coerce(cls, value: Expect | dict | None) -> Expect:
        if value is None:
            return cls()
        if isinstance(value, Expect):
            return value
        if isinstance(value, Mapping):  # a dict, or a Hydra / OmegaConf DictConfig
            unknown = set(value) - set(cls.__dataclass_fields__)
            if unknown:
                raise ValueError(f"expect: unknown keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
            value = dict(value)
            if value.get("frames") is not None:
                value["frames"] = tuple(int(f) for f in value["frames"])
            if value.get("resolutions") is not None:
                value["resolutions"] = tuple((int(h), int(w)) for h, w in value["resolutions"])
            return cls(**value)
        raise TypeError(f"expect must be an Expect, a dict or None, not {type(value).__name__}")

    @classmethod
    def from_transformer_config(cls, model: str, config: Any, **extra) -> Expect:
        """Expectations from a diffusers transformer config (Wan-, HunyuanVideo- or MochiTransformer3DModel)."""
        c = dict(config)
        channels = c.get("out_channels") or c.get("in_channels")
        text_dim = c.get("text_dim") or c.get("text_embed_dim")
        pooled = c.get("pooled_projection_dim") if "pooled_prompt_embeds" in family_spec(model).text_fields else None
        from radial.models import get_adapter  # the adapters import diffusers: only where a transformer is at hand

        conditioning = get_adapter(model).dataset_expectations(c)  # image conditioning, second text states
        return cls(latent_channels=channels, text_dim=text_dim, pooled_dim=pooled, **conditioning, **extra)


class SampleRef(NamedTuple):
    """What BucketBatchSampler yields per sample: the dataset index and where in the epoch it was drawn."""

    index: int
    epoch: int
    batch: int


def _compatible(a: dict, b: dict) -> list[str]:
    """Header fields in which two datasets differ (the encoders' source path may differ)."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if k == "encoders" and isinstance(va, dict) and isinstance(vb, dict):
            va = {x: y for x, y in va.items() if x != "source"}
            vb = {x: y for x, y in vb.items() if x != "source"}
        if va != vb:
            out.append(k)
    return out


class LatentDataset(Dataset):
    """A prepared dataset (or several with the same header), validated when opened.

    Opening checks the index and every shard (format version, model, latent channels, shapes, dtypes, text dims,
    sizes; `verify="full"` also sha256 and finite values) and raises ShardError naming the file and field; after
    that, reads cannot meet a wrong shape. `frames` keeps only items of those pixel frame counts.

    Items: {"latents": [C, F, H, W], "prompt_embeds": [L, D], "prompt_attention_mask": [L] bool,
    "pooled_prompt_embeds": [Dp] (hunyuan), "image_latents": [4 + C, F, H, W] and "image_embeds": [N, Di]
    (image-to-video datasets), "meta": {...}} (+ "cursor" when indexed by a SampleRef).
    """

    def __init__(
        self,
        root: str | Path | Sequence[str | Path],
        model: str,
        expect: Expect | dict | None = None,
        verify: str = "header",
        frames: Sequence[int] | None = None,
        repeats: Sequence[int] | None = None,
        caption_dropout: float = 0.0,
        seed: int = 0,
    ):
        self.model = model
        self.geometry = geometry(model)
        self.expect = Expect.coerce(expect)
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify={verify!r}: expected one of {VERIFY_MODES}")
        roots = [Path(root)] if isinstance(root, (str, Path)) else [Path(r) for r in root]
        if not roots:
            raise ValueError("LatentDataset: no dataset root given")
        self.roots = roots
        repeats = [1] * len(roots) if repeats is None else [int(r) for r in repeats]
        if len(repeats) != len(roots) or min(repeats) < 1:
            raise ValueError(f"repeats={repeats}: expected one integer >= 1 per dataset root ({len(roots)})")
        if not 0.0 <= caption_dropout < 1.0:
            raise ValueError(f"caption_dropout={caption_dropout}: expected a probability in [0, 1)")
        self.caption_dropout, self.seed = float(caption_dropout), int(seed)
        self._repeat_of: list[int] = []
        self.header: dict | None = None
        self.records: list[dict] = []
        self._shard_paths: list[Path] = []
        self._shard_of: list[int] = []
        for r in roots:
            index = load_index(r, model)
            verify_shards(r, index, full=verify == "full")
            if self.header is None:
                self.header = index["header"]
            else:
                diff = _compatible(self.header, index["header"])
                if diff:
                    raise ShardError(f"dataset {r}: header differs from {roots[0]} in {', '.join(diff)}")
            base = len(self._shard_paths)
            self._shard_paths += [r / s["file"] for s in index["shards"]]
            for record in index["items"]:
                self.records.append({k: v for k, v in record.items() if k != "shard"})
                self._shard_of.append(base + record["shard"])
                self._repeat_of.append(repeats[roots.index(r)])
        keys = [r["key"] for r in self.records]
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise ShardError(f"item {dup!r} appears in more than one of the datasets {[str(r) for r in roots]}")
        if frames is not None:
            keep = [i for i, r in enumerate(self.records) if r["frames"] in set(frames)]
            self.records = [self.records[i] for i in keep]
            self._shard_of = [self._shard_of[i] for i in keep]
            self._repeat_of = [self._repeat_of[i] for i in keep]
        if not self.records:
            what = f" with frames in {list(frames)}" if frames is not None else ""
            raise ShardError(f"dataset {', '.join(map(str, roots))}: no items{what}")
        self.text_fields = {n: TextField.from_json(f) for n, f in self.header["text_fields"].items()}
        self.latent_norm: dict = self.header["latent_norm"]
        self.image_fields: list[str] = sorted(self.header.get("image_fields", {}))
        self.joint_fields: list[str] = sorted(self.header.get("joint_fields", {}))
        self._check_expect()
        self.empty_prompt = self._empty_prompt() if self.caption_dropout > 0 else None
        # An item of a root with repeats=k stands k times in its bucket: k draws per epoch (musubi-tuner's
        # num_repeats); the sampler sees the repeated list, so order and resume stay exact.
        self.buckets: dict[BucketKey, list[int]] = {}
        for i, r in enumerate(self.records):
            self.buckets.setdefault((r["frames"], r["height"], r["width"]), []).extend([i] * self._repeat_of[i])
        blob = json.dumps(
            [
                self.header["model"],
                [(r["key"], r["frames"], r["height"], r["width"]) for r in self.records],
                self._repeat_of,
                self.caption_dropout,
            ]
        )
        self.fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()

    def _check_expect(self) -> None:
        e, h, where = self.expect, self.header, f"dataset {', '.join(map(str, self.roots))}"
        if e.latent_channels is not None and h["latent_channels"] != e.latent_channels:
            raise ShardError(
                f"{where}: latents have {h['latent_channels']} channels, the transformer expects {e.latent_channels}"
            )
        if e.latent_dtype is not None and h["latent_dtype"] != dtype_name(e.latent_dtype):
            raise ShardError(f"{where}: latents are {h['latent_dtype']}, expected {dtype_name(e.latent_dtype)}")
        if e.latent_norm is not None and self.latent_norm["convention"] != e.latent_norm:
            raise ShardError(
                f"{where}: latents are normalized by the {self.latent_norm['convention']!r} convention, expected "
                f"{e.latent_norm!r}"
            )
        seq = self.text_fields.get("prompt_embeds")
        if e.text_dim is not None and seq.dim != e.text_dim:
            raise ShardError(f"{where}: prompt_embeds have dim {seq.dim}, the transformer expects {e.text_dim}")
        if e.text_len is not None and seq.max_len != e.text_len:
            raise ShardError(f"{where}: prompt_embeds are padded to {seq.max_len} tokens, expected {e.text_len}")
        if e.pooled_dim is not None:
            pooled = self.text_fields.get("pooled_prompt_embeds")
            if pooled is None:
                raise ShardError(f"{where}: model {self.model} datasets have no pooled_prompt_embeds")
            if pooled.dim != e.pooled_dim:
                raise ShardError(
                    f"{where}: pooled_prompt_embeds have dim {pooled.dim}, the transformer expects {e.pooled_dim}"
                )
        glyph = self.text_fields.get("prompt_embeds_2")
        if e.text_dim_2 is not None and (glyph is None or glyph.dim != e.text_dim_2):
            raise ShardError(
                f"{where}: prompt_embeds_2 have dim {glyph.dim if glyph else 'none'}, the transformer expects "
                f"{e.text_dim_2} (HunyuanVideo-1.5's ByT5 states)"
            )
        self._check_image(where)
        audio = h.get("joint_fields", {}).get("audio_latents", [0, 0])[1]
        if e.audio_channels is not None and audio != e.audio_channels:
            raise ShardError(
                f"{where}: audio_latents have {audio or 'no'} channels, the transformer reads {e.audio_channels} "
                "(prepare the dataset with the model's audio VAE)"
            )
        for r in self.records:
            if e.frames is not None and r["frames"] not in e.frames:
                raise ShardError(
                    f"{where}: item {r['key']!r} has {r['frames']} frames, expected one of {list(e.frames)}"
                )
            if e.resolutions is not None and (r["height"], r["width"]) not in e.resolutions:
                raise ShardError(
                    f"{where}: item {r['key']!r} is {r['height']}x{r['width']}, expected one of "
                    f"{[f'{a}x{b}' for a, b in e.resolutions]}"
                )

    def _check_image(self, where: str) -> None:
        """A text-to-video dataset given to an image-to-video model, or the reverse, or other image states."""
        e, fields = self.expect, self.header.get("image_fields", {})
        channels = fields.get("image_latents", [0])[0]
        if e.image_channels is not None and channels != e.image_channels:
            if not channels:
                raise ShardError(
                    f"{where}: prepared for text-to-video (no image conditioning), the transformer is image-to-video "
                    f"({e.image_channels} conditioning channels); prepare it with --i2v"
                )
            if not e.image_channels:
                raise ShardError(
                    f"{where}: prepared for image-to-video (--i2v), the transformer is text-to-video; use an I2V "
                    "model or a dataset prepared without --i2v"
                )
            raise ShardError(
                f"{where}: image_latents have {channels} channels, the transformer expects {e.image_channels}"
            )
        dim = fields.get("image_embeds", [0, 0])[1]
        if e.image_dim is not None and dim != e.image_dim:
            raise ShardError(
                f"{where}: image_embeds have dim {dim or 'none'}, the transformer expects {e.image_dim or 'none'} "
                "(Wan2.1 I2V reads CLIP image states, Wan2.2 I2V none, HunyuanVideo-1.5 I2V SigLIP states)"
            )

    def stored_empty_prompt(self) -> dict[str, torch.Tensor] | None:
        """The family's text states of the empty prompt "" that data.prepare writes beside the shards (unpadded), or
        None for datasets prepared before that."""
        from safetensors.torch import load_file

        from data.shards import DTYPES, EMPTY_PROMPT_FILE

        dtype = DTYPES[dtype_name(self.header["text_dtype"])]
        for root in self.roots:
            if (root / EMPTY_PROMPT_FILE).is_file():
                states = load_file(str(root / EMPTY_PROMPT_FILE))
                missing = sorted(set(self.text_fields) - set(states))
                if missing:
                    raise ShardError(f"{root / EMPTY_PROMPT_FILE}: no {', '.join(missing)} (re-run data.prepare)")
                return {n: states[n].to(dtype) for n in self.text_fields}
        return None

    def _empty_prompt(self) -> dict[str, torch.Tensor]:
        """The stored empty-prompt states; datasets from before them get zero states (one valid token, so that
        masked attention over the text stays defined)."""
        stored = self.stored_empty_prompt()
        if stored is not None:
            return stored
        from data.shards import DTYPES

        dtype = DTYPES[dtype_name(self.header["text_dtype"])]
        zeros = {n: torch.zeros(f.dim) if f.pooled else torch.zeros(1, f.dim) for n, f in self.text_fields.items()}
        return {n: t.to(dtype) for n, t in zeros.items()}

    def padded_text(self, states: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Text states as items carry them: sequences zero-padded to their field's length with a bool mask (1 =
        real token) under the field's mask name; pooled states as they are."""
        out: dict[str, torch.Tensor] = {}
        for name, field in self.text_fields.items():
            t = states[name]
            if field.pooled:
                out[name] = t
                continue
            n = t.shape[0]
            padded = t.new_zeros(field.max_len, field.dim)
            padded[:n] = t
            mask = torch.zeros(field.max_len, dtype=torch.bool)
            mask[:n] = True
            out[name], out[field.mask] = padded, mask
        return out

    def drops_caption(self, ref: SampleRef) -> bool:
        """Whether caption dropout replaces this draw's text by the empty prompt: a pure function of (seed, epoch,
        batch, item), so the same draws drop on every rank, with any number of loader workers, after a resume."""
        if self.caption_dropout <= 0:
            return False
        digest = hashlib.sha256(f"{self.seed}/caption/{ref.epoch}/{ref.batch}/{int(ref.index)}".encode()).digest()
        return int.from_bytes(digest[:8], "little") / 2**64 < self.caption_dropout

    # ----- reading -----

    def __len__(self) -> int:
        return len(self.records)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handles"] = {}  # file handles don't cross processes; each worker opens its own
        return state

    def _handle(self, shard: int):
        from safetensors import safe_open

        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        f = self._handles.get(shard)
        if f is None:
            f = self._handles[shard] = safe_open(str(self._shard_paths[shard]), framework="pt")
        return f

    def _check_finite(self, tensor: torch.Tensor, i: int, name: str) -> None:
        """NaN / inf in an item is an error where it is first read (a NaN loss would only skip steps silently)."""
        if tensor.numel() and not bool(torch.isfinite(tensor).all()):
            raise ShardError(
                f"shard {self._shard_paths[self._shard_of[i]]}: item {self.records[i]['key']!r}: {name} contain NaN "
                "or inf (check every item with `python -m data.shards check ROOT`; prepare the item again)"
            )

    def bucket_of(self, index: int) -> BucketKey:
        r = self.records[index]
        return (r["frames"], r["height"], r["width"])

    def __getitem__(self, index: int | SampleRef) -> dict:
        ref = index if isinstance(index, SampleRef) else None
        i = int(ref.index if ref is not None else index)
        r = self.records[i]
        f = self._handle(self._shard_of[i])
        latents = f.get_tensor(r["tensors"]["latents"])
        if list(latents.shape) != r["latent_shape"]:  # only if a shard was replaced after the dataset was opened
            raise ShardError(
                f"shard {self._shard_paths[self._shard_of[i]]}: item {r['key']!r}: latents {list(latents.shape)}, "
                f"expected {r['latent_shape']} (the file changed after the dataset was opened)"
            )
        self._check_finite(latents, i, "latents")
        sample: dict[str, Any] = {"latents": latents}
        dropped = ref is not None and self.drops_caption(ref)
        if dropped:
            text = self.empty_prompt
        else:
            text = {name: f.get_tensor(r["tensors"][name]) for name in self.text_fields}
            for name, t in text.items():
                self._check_finite(t, i, name)
        sample.update(self.padded_text(text))
        for name in (*self.image_fields, *self.joint_fields):  # kept under caption dropout
            sample[name] = f.get_tensor(r["tensors"][name])
            self._check_finite(sample[name], i, name)
        sample["meta"] = {
            "index": i,
            "key": r["key"],
            "source": r["source"],
            "caption": r["caption"],
            "frames": r["frames"],
            "fps": r["fps"],
            "height": r["height"],
            "width": r["width"],
            "clip": r["clip"],
            "clip_start": r.get("clip_start"),
            "caption_dropped": dropped,
        }
        if ref is not None:
            sample["cursor"] = {"epoch": ref.epoch, "batch": ref.batch}
        return sample
