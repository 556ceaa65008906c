"""The latent shard format: safetensors shards of many items + a JSON index, written atomically, validated strictly.

Layout of a prepared dataset (ROOT):

    ROOT/index.json                  format, format_version, model, the dataset header, shards (file, bytes,
                                     sha256, items), items (per-item metadata, each with its shard number)
    ROOT/shards/<run>-r<rank>-<n>.safetensors
                                     tensors "<j>/latents" [C, F, H, W], "<j>/prompt_embeds" [l, D] (the valid
                                     tokens only), "<j>/pooled_prompt_embeds" [Dp] (HunyuanVideo),
                                     "<j>/prompt_embeds_2" [l2, D2] (HunyuanVideo-1.5's ByT5 glyph states),
                                     image-to-video datasets (header "image_fields") "<j>/image_latents"
                                     [4 + C, F, H, W] (HunyuanVideo-1.5: [C + 1, ...]) and "<j>/image_embeds"
                                     [N, Di] (Wan2.1 I2V's CLIP / HunyuanVideo-1.5's SigLIP states); the safetensors
                                     metadata repeats format, version, header and the item records, so the index
                                     can always be rebuilt from the shards (`python -m data.shards reindex ROOT`)
    ROOT/prepare.json, ROOT/prepare_report.json   settings and the last run's summary (informational)

The header (identical in every shard of a dataset): model, latent_channels, temporal/spatial factors, latent and
text dtypes, latent_norm (see data/latents.py), text_fields, encoders (identity of the VAE / text encoders),
latent_sample ("mode" or "sample"), and for image-to-video datasets image_fields. Item record: key, source,
caption, clip, clip_start, frames, fps, height, width, source_fps, source_size, source_duration, latent_shape, text_lens, tensors (name -> tensor key).

A shard is written to a temporary name, fsynced and renamed, so a shard that has its final name is complete; an
interrupted prepare leaves only `*.tmp` files, which the next run deletes. There are no pickles anywhere.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from radial.errors import DataError, cli_errors
from radial.families import FAMILIES, LatentGeometry, family_spec, geometry

FORMAT = "radial-latents"
FORMAT_VERSION = 1
INDEX_FILE = "index.json"
SHARD_DIR = "shards"
SHARD_SUFFIX = ".safetensors"
TMP_SUFFIX = ".tmp"
CORRUPT_SUFFIX = ".corrupt"

#: the family's text states of the empty prompt "", written by prepare beside the shards (caption dropout)
EMPTY_PROMPT_FILE = "empty_prompt.safetensors"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "float": "float32", "half": "float16"}
SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}

#: text fields each family's dataset must have (FamilySpec.text_fields), kept for the users of this name
TEXT_FIELDS = {name: spec.text_fields for name, spec in FAMILIES.items()}
#: the optional image conditioning an image-to-video dataset's header lists under "image_fields"
IMAGE_FIELDS = ("image_latents", "image_embeds", "first_frame_mask")
HEADER_KEYS = (
    "model",
    "latent_channels",
    "temporal_factor",
    "spatial_factor",
    "latent_dtype",
    "text_dtype",
    "latent_norm",
    "text_fields",
    "encoders",
    "latent_sample",
)
RECORD_KEYS = (
    "key",
    "source",
    "caption",
    "clip",
    "frames",
    "fps",
    "height",
    "width",
    "latent_shape",
    "text_lens",
    "tensors",
)


class ShardError(DataError):
    """A dataset, index or shard that is not what it should be; the message names the file and the field."""


def dtype_name(dtype: str | torch.dtype) -> str:
    """ "bf16" / torch.bfloat16 / "bfloat16" -> "bfloat16"."""
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    else:
        name = DTYPE_ALIASES.get(str(dtype), str(dtype))
    if name not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {sorted(DTYPES)} (or {sorted(DTYPE_ALIASES)})")
    return name


def make_header(encoders, latent_dtype: str, text_dtype: str, latent_sample: str) -> dict:
    """The dataset header for data written by `encoders` (a data.encoders.FamilyEncoders)."""
    g = encoders.geometry
    header = {
        "model": encoders.family,
        "latent_channels": g.latent_channels,
        "temporal_factor": g.temporal_factor,
        "spatial_factor": g.spatial_factor,
        "latent_dtype": dtype_name(latent_dtype),
        "text_dtype": dtype_name(text_dtype),
        "latent_norm": encoders.latent_norm,
        "text_fields": {name: f.to_json() for name, f in encoders.text_fields.items()},
        "encoders": encoders.identity(),
        "latent_sample": latent_sample,
    }
    if encoders.image_fields:  # image-to-video datasets only: text-to-video headers stay as they were
        header["image_fields"] = encoders.image_fields
    if encoders.joint_fields:  # MiniMax-H3's audio_latents; other families' headers stay as they were
        header["joint_fields"] = encoders.joint_fields
    return header


# ----- writing -----


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """temp file + fsync + rename: readers see the old file or the whole new one, never a part."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_write_json(path: Path, data) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=1, sort_keys=False) + "\n").encode())


def write_shard(path: Path, header: dict, items: Sequence[tuple[dict, dict[str, torch.Tensor]]]) -> dict:
    """Write items [(record, {name: tensor})] as one shard; returns its index entry (file, bytes, sha256, items)."""
    from safetensors.torch import save

    flat, records = {}, []
    for j, (record, tensors) in enumerate(items):
        names = {}
        for name, tensor in tensors.items():
            key = f"{j}/{name}"
            flat[key] = tensor.detach().cpu().contiguous()
            names[name] = key
        records.append({**record, "tensors": names})
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "header": json.dumps(header),
        "items": json.dumps(records),
    }
    data = save(flat, metadata=metadata)
    atomic_write_bytes(path, data)
    return {"file": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "items": len(records)}


class ShardWriter:
    """Buffers items and writes a shard every `items_per_shard`; `flush()` writes what is buffered."""

    def __init__(self, root: str | Path, header: dict, items_per_shard: int = 32, prefix: str | None = None):
        if items_per_shard < 1:
            raise ValueError(f"items_per_shard must be >= 1, got {items_per_shard}")
        self.dir = Path(root) / SHARD_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.header = header
        self.items_per_shard = items_per_shard
        self.prefix = prefix or uuid.uuid4().hex[:8]
        self.buffer: list[tuple[dict, dict[str, torch.Tensor]]] = []
        self.written: list[dict] = []
        self._seq = 0

    def add(self, record: dict, tensors: dict[str, torch.Tensor]) -> None:
        self.buffer.append((record, tensors))
        if len(self.buffer) >= self.items_per_shard:
            self.flush()

    def flush(self) -> dict | None:
        if not self.buffer:
            return None
        path = self.dir / f"{self.prefix}-{self._seq:05d}{SHARD_SUFFIX}"
        while path.exists():
            self._seq += 1
            path = self.dir / f"{self.prefix}-{self._seq:05d}{SHARD_SUFFIX}"
        entry = write_shard(path, self.header, self.buffer)
        self._seq += 1
        self.buffer = []
        self.written.append(entry)
        return entry


# ----- reading and validation -----


@dataclass
class Shard:
    path: Path
    header: dict
    records: list[dict]
    bytes: int


def _json_field(metadata: dict, name: str, path: Path):
    if name not in metadata:
        raise ShardError(f"shard {path}: metadata has no '{name}' (not written by data.prepare?)")
    try:
        return json.loads(metadata[name])
    except json.JSONDecodeError as e:
        raise ShardError(f"shard {path}: metadata '{name}' is not valid JSON ({e})") from None


def read_shard(path: str | Path) -> Shard:
    """Parse a shard's header (no tensor data is read); checks the format and version."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ShardError(f"shard {path}: file is missing")
    try:  # safetensors reports an unreadable file as a missing one: ask the OS first
        with open(path, "rb"):
            pass
    except PermissionError:
        raise ShardError(f"shard {path}: permission denied (the file exists but this user cannot read it)") from None
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:
        raise ShardError(f"shard {path}: not a readable safetensors file, corrupt or truncated ({e})") from None
    if metadata.get("format") != FORMAT:
        raise ShardError(f"shard {path}: format is {metadata.get('format')!r}, expected {FORMAT!r}")
    version = metadata.get("format_version")
    if version != str(FORMAT_VERSION):
        raise ShardError(
            f"shard {path}: format version {version}, this code reads version {FORMAT_VERSION}; "
            "prepare the dataset again with this version of data.prepare"
        )
    header = _json_field(metadata, "header", path)
    records = _json_field(metadata, "items", path)
    if not isinstance(header, dict) or not isinstance(records, list):
        raise ShardError(f"shard {path}: metadata 'header' must be an object and 'items' a list")
    return Shard(path, header, records, path.stat().st_size)


def check_header(header: dict, model: str, where: str) -> None:
    """The dataset header against the model family: names the file (`where`) and the field."""
    missing = [k for k in HEADER_KEYS if k not in header]
    if missing:
        raise ShardError(f"{where}: header lacks {', '.join(missing)}")
    g = geometry(model)
    if header["model"] != model:
        raise ShardError(f"{where}: prepared for model {header['model']!r}, expected model {model!r}")
    if header["latent_channels"] != g.latent_channels:
        raise ShardError(
            f"{where}: latents have {header['latent_channels']} channels, model {model} expects {g.latent_channels}"
        )
    if (header["temporal_factor"], header["spatial_factor"]) != (g.temporal_factor, g.spatial_factor):
        raise ShardError(
            f"{where}: VAE compression {header['temporal_factor']}x temporal, {header['spatial_factor']}x spatial; "
            f"model {model} has {g.temporal_factor}x and {g.spatial_factor}x"
        )
    for key in ("latent_dtype", "text_dtype"):
        if header[key] not in DTYPES:
            raise ShardError(f"{where}: {key} is {header[key]!r}, expected one of {sorted(DTYPES)}")
    norm = header["latent_norm"]
    if not isinstance(norm, dict) or not all(k in norm for k in ("shift", "scale", "convention")):
        raise ShardError(f"{where}: latent_norm must have convention, shift and scale")
    if len(norm["shift"]) != g.latent_channels or len(norm["scale"]) != g.latent_channels:
        raise ShardError(
            f"{where}: latent_norm has {len(norm['shift'])} shift / {len(norm['scale'])} scale values, model "
            f"{model} has {g.latent_channels} channels"
        )
    fields = header["text_fields"]
    want = family_spec(model).text_fields
    if not isinstance(fields, dict) or sorted(fields) != sorted(want):
        got = sorted(fields) if isinstance(fields, dict) else fields
        raise ShardError(f"{where}: text fields are {got}, model {model} needs {sorted(want)}")
    for name, field in fields.items():
        if not isinstance(field, dict) or not isinstance(field.get("dim"), int) or field["dim"] < 1:
            raise ShardError(f"{where}: text field {name} has no valid 'dim'")
        max_len = field.get("max_len")
        if max_len is not None and (not isinstance(max_len, int) or max_len < 1):
            raise ShardError(f"{where}: text field {name} has an invalid max_len {max_len!r}")
        if max_len is not None and not field.get("mask"):
            raise ShardError(f"{where}: sequence text field {name} names no mask")
    if header["latent_sample"] not in ("mode", "sample"):
        raise ShardError(f"{where}: latent_sample is {header['latent_sample']!r}, expected 'mode' or 'sample'")
    _check_image_fields(header.get("image_fields"), g, where)
    _check_joint_fields(header.get("joint_fields"), g, where)


def _check_joint_fields(fields, g: LatentGeometry, where: str) -> None:
    """The latent streams beside the video (FamilySpec.joint_latents): exactly the family's, each [leading dims]."""
    want = set(family_spec(g.family).joint_latents)
    got = set(fields) if isinstance(fields, dict) else set()
    if got != want or (fields is not None and not isinstance(fields, dict)):
        raise ShardError(
            f"{where}: joint_fields are {sorted(got)}, model {g.family} needs {sorted(want)} (prepare the dataset "
            f"again with this version's data.prepare --model {g.family})"
        )
    for name, dims in (fields or {}).items():
        if not isinstance(dims, list) or not dims or not all(isinstance(n, int) and n > 0 for n in dims):
            raise ShardError(f"{where}: joint_fields[{name}] must be a list of positive sizes, got {dims!r}")


def _check_image_fields(fields, g: LatentGeometry, where: str) -> None:
    """The optional image conditioning of an image-to-video dataset: image_latents [4 + C channels] and, for Wan2.1
    I2V, image_embeds [tokens, dim]; Wan2.2 TI2V: image_latents [C, 1 frame] and first_frame_mask [1 channel];
    HunyuanVideo-1.5 I2V: image_latents [C + 1 mask channels] and image_embeds [tokens, dim]."""
    if fields is None:
        return
    ok = isinstance(fields, dict) and set(fields) <= set(IMAGE_FIELDS) and "image_latents" in fields
    ok = ok and all(isinstance(v, list) and all(isinstance(n, int) and n > 0 for n in v) for v in fields.values())
    if not ok:
        raise ShardError(f"{where}: image_fields must name image_latents [channels] (and image_embeds [tokens, dim])")
    spec = family_spec(g.family)
    if spec.i2v_latents is None:
        raise ShardError(f"{where}: image_fields given, but model {g.family} takes no image conditioning")
    want = list(spec.i2v_latents)
    if fields["image_latents"] != want:
        raise ShardError(f"{where}: image_latents lead with {fields['image_latents']}, expected {want}")
    if "image_embeds" in spec.i2v_fields and "image_embeds" not in fields:
        raise ShardError(f"{where}: {spec.title} image conditioning needs image_embeds [tokens, dim]")
    if "first_frame_mask" in spec.i2v_fields and fields.get("first_frame_mask") != [1]:
        raise ShardError(f"{where}: {spec.title} image conditioning needs first_frame_mask [1]")
    if "image_embeds" in fields and len(fields["image_embeds"]) != 2:
        raise ShardError(f"{where}: image_embeds must be [tokens, dim], got {fields['image_embeds']}")


def check_record(record: dict, header: dict, g: LatentGeometry, where: str) -> None:
    """One item's metadata: present fields, a valid frame count, a latent shape that matches frames/resolution."""
    if not isinstance(record, dict):
        raise ShardError(f"{where}: an item record is not an object")
    key = record.get("key", "?")
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise ShardError(f"{where}: item {key!r} lacks {', '.join(missing)}")
    at = f"{where}: item {key!r}"
    frames, height, width = record["frames"], record["height"], record["width"]
    if not all(isinstance(v, int) and v > 0 for v in (frames, height, width)):
        raise ShardError(f"{at}: frames/height/width must be positive integers, got {frames}/{height}/{width}")
    try:
        latent_frames = g.latent_frames(frames)
    except ValueError as e:
        raise ShardError(f"{at}: frames: {e}") from None
    step = g.spatial_factor
    if height % step or width % step:
        raise ShardError(f"{at}: resolution {height}x{width} is not a multiple of the VAE's {step}x")
    want = [header["latent_channels"], latent_frames, height // step, width // step]
    if list(record["latent_shape"]) != want:
        raise ShardError(
            f"{at}: latent_shape {record['latent_shape']} does not match {frames} frames at {height}x{width} "
            f"(expected {want})"
        )
    tensors = record["tensors"]
    needed = ["latents", *header["text_fields"], *header.get("image_fields", {}), *header.get("joint_fields", {})]
    if not isinstance(tensors, dict) or any(n not in tensors for n in needed):
        raise ShardError(
            f"{at}: tensors must name {needed}, got {sorted(tensors) if isinstance(tensors, dict) else tensors}"
        )
    for name, dims in header.get("joint_fields", {}).items():
        shape = record.get("joint_shapes", {}).get(name) if isinstance(record.get("joint_shapes"), dict) else None
        if not isinstance(shape, list) or shape[: len(dims)] != dims or len(shape) != len(dims) + 1 or shape[-1] < 1:
            raise ShardError(f"{at}: joint_shapes[{name}] is {shape!r}, expected {dims} + [length]")
    for name, field in header["text_fields"].items():
        if field.get("max_len") is None:
            continue
        n = record["text_lens"].get(name) if isinstance(record["text_lens"], dict) else None
        if not isinstance(n, int) or not 0 <= n <= field["max_len"]:
            raise ShardError(f"{at}: text_lens[{name}] is {n!r}, expected an integer in [0, {field['max_len']}]")


def expected_tensor_shapes(record: dict, header: dict) -> dict[str, tuple[list[int], str]]:
    """name -> (shape, dtype name) that the item's tensors must have."""
    shapes = {"latents": (list(record["latent_shape"]), header["latent_dtype"])}
    for name, field in header["text_fields"].items():
        if field.get("max_len") is None:
            shapes[name] = ([field["dim"]], header["text_dtype"])
        else:
            shapes[name] = ([record["text_lens"][name], field["dim"]], header["text_dtype"])
    for name, dims in header.get("image_fields", {}).items():
        if name == "image_embeds":
            shapes[name] = (list(dims), header["text_dtype"])
        else:  # latent-grid fields: their leading dims, then the latents' own
            shapes[name] = ([*dims, *record["latent_shape"][len(dims) :]], header["latent_dtype"])
    for name in header.get("joint_fields", {}):
        shapes[name] = (list(record["joint_shapes"][name]), header["latent_dtype"])
    return shapes


def check_shard_tensors(shard: Shard, full: bool = False) -> None:
    """Every item's tensors exist with the recorded shapes and dtypes (header only; `full` also reads the values
    and refuses NaN / inf)."""
    from safetensors import safe_open

    try:
        with safe_open(str(shard.path), framework="pt") as f:
            keys = set(f.keys())
            for record in shard.records:
                for name, (shape, dtype) in expected_tensor_shapes(record, shard.header).items():
                    tkey = record["tensors"][name]
                    at = f"shard {shard.path}: item {record['key']!r}: {name}"
                    if tkey not in keys:
                        raise ShardError(f"{at}: tensor {tkey!r} is missing from the file")
                    sl = f.get_slice(tkey)
                    got_shape, got_dtype = list(sl.get_shape()), sl.get_dtype()
                    if name == "latents" and len(got_shape) == 4 and got_shape[0] != shape[0]:
                        raise ShardError(
                            f"shard {shard.path}: item {record['key']!r}: latents have {got_shape[0]} channels, "
                            f"model {shard.header['model']} expects {shape[0]}"
                        )
                    if got_shape != shape:
                        raise ShardError(f"{at}: shape {got_shape}, expected {shape}")
                    if got_dtype != SAFETENSORS_DTYPES[dtype]:
                        raise ShardError(f"{at}: dtype {got_dtype}, expected {SAFETENSORS_DTYPES[dtype]} ({dtype})")
                    if full:
                        t = f.get_tensor(tkey)
                        if t.numel() and not bool(torch.isfinite(t.float()).all()):
                            raise ShardError(f"{at}: contains NaN or inf")
    except ShardError:
        raise
    except Exception as e:
        raise ShardError(f"shard {shard.path}: unreadable ({type(e).__name__}: {e})") from None


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ----- shard folders and the index -----


def shard_paths(root: str | Path) -> list[Path]:
    d = Path(root) / SHARD_DIR
    return sorted(d.glob(f"*{SHARD_SUFFIX}")) if d.is_dir() else []


def remove_stale_tmp(root: str | Path) -> list[Path]:
    """Delete the temporary files an interrupted run left (never a finished shard)."""
    removed = []
    for d in (Path(root), Path(root) / SHARD_DIR):
        if d.is_dir():
            for p in d.glob(f"*{TMP_SUFFIX}"):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def scan_shards(root: str | Path, quarantine: bool = False) -> tuple[list[Shard], list[tuple[Path, str]]]:
    """Read every shard header under root. Unreadable shards raise, or with `quarantine` are renamed to
    *.corrupt (so their items are prepared again) and returned as (path, reason)."""
    shards, bad = [], []
    for path in shard_paths(root):
        try:
            shards.append(read_shard(path))
        except ShardError as e:
            if not quarantine:
                raise
            target = path.with_name(path.name + CORRUPT_SUFFIX)
            os.replace(path, target)
            bad.append((target, str(e)))
    return shards, bad


def build_index(root: str | Path, checksum: bool = True) -> dict:
    """Rebuild ROOT/index.json from the shards (atomically). Checksums of unchanged shards are reused."""
    root = Path(root)
    previous = {}
    old = root / INDEX_FILE
    if old.is_file():
        try:
            data = json.loads(old.read_text())
            previous = {s["file"]: s for s in data.get("shards", []) if isinstance(s, dict) and "file" in s}
        except (json.JSONDecodeError, AttributeError, TypeError):
            previous = {}
    shards, _ = scan_shards(root)
    if not shards:
        raise ShardError(f"{root}: no shards under {root / SHARD_DIR}; nothing to index")
    header = shards[0].header
    check_header(header, header.get("model"), f"shard {shards[0].path}")
    g = geometry(header["model"])
    entries, items, seen = [], [], {}
    for i, shard in enumerate(shards):
        if shard.header != header:
            diff = sorted(k for k in set(header) | set(shard.header) if header.get(k) != shard.header.get(k))
            raise ShardError(
                f"shard {shard.path}: header differs from {shards[0].path} in {', '.join(diff)}; one dataset "
                "folder holds the output of one model and one set of encoders"
            )
        entry = {"file": f"{SHARD_DIR}/{shard.path.name}", "bytes": shard.bytes, "items": len(shard.records)}
        if checksum:
            prev = previous.get(entry["file"])
            same = prev and prev.get("bytes") == shard.bytes and prev.get("sha256")
            entry["sha256"] = prev["sha256"] if same else sha256_file(shard.path)
        entries.append(entry)
        for record in shard.records:
            check_record(record, header, g, f"shard {shard.path}")
            if record["key"] in seen:
                raise ShardError(f"shard {shard.path}: item {record['key']!r} is also in {seen[record['key']]}")
            seen[record["key"]] = shard.path
            items.append({**record, "shard": i})
    index = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": header["model"],
        "header": header,
        "num_items": len(items),
        "shards": entries,
        "items": items,
    }
    atomic_write_json(root / INDEX_FILE, index)
    return index


def load_index(root: str | Path, model: str) -> dict:
    """Read and check ROOT/index.json: format, version, model, header, shard list, item records."""
    root = Path(root)
    path = root / INDEX_FILE
    if not root.is_dir():
        raise ShardError(f"dataset {root}: no such folder")
    if not path.is_file():
        hint = " (shards exist: prepare did not finish; run it again to resume, or `python -m data.shards reindex`)"
        raise ShardError(f"dataset {root}: no {INDEX_FILE}{hint if shard_paths(root) else ''}")
    try:
        index = json.loads(path.read_text())
    except PermissionError:
        raise ShardError(f"index {path}: permission denied (the file exists but this user cannot read it)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(
            f"index {path}: not valid JSON ({e}); rebuild it with `python -m data.shards reindex`"
        ) from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        got = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise ShardError(f"index {path}: format is {got!r}, expected {FORMAT!r}")
    if index.get("format_version") != FORMAT_VERSION:
        raise ShardError(
            f"index {path}: format version {index.get('format_version')}, this code reads version {FORMAT_VERSION}; "
            "prepare the dataset again with this version of data.prepare"
        )
    for key in ("header", "shards", "items"):
        if key not in index:
            raise ShardError(f"index {path}: no '{key}'")
    if index.get("model") != model:
        raise ShardError(f"index {path}: prepared for model {index.get('model')!r}, expected model {model!r}")
    check_header(index["header"], model, f"index {path}")
    g = geometry(model)
    shards = index["shards"]
    if not isinstance(shards, list) or not all(isinstance(s, dict) and "file" in s and "bytes" in s for s in shards):
        raise ShardError(f"index {path}: 'shards' must be a list of {{file, bytes, ...}}")
    seen = set()
    for record in index["items"]:
        check_record(record, index["header"], g, f"index {path}")
        s = record.get("shard")
        if not isinstance(s, int) or not 0 <= s < len(shards):
            raise ShardError(f"index {path}: item {record['key']!r}: shard number {s!r} is out of range")
        if record["key"] in seen:
            raise ShardError(f"index {path}: item {record['key']!r} appears twice")
        seen.add(record["key"])
    return index


def verify_shards(root: str | Path, index: dict, full: bool = False, values: bool = False) -> None:
    """Each shard of the index: present, the recorded size, the same header and items, tensors of the recorded
    shapes and dtypes; `values` also reads every tensor and refuses NaN / inf; `full` does that and checks sha256."""
    root = Path(root)
    by_shard: dict[int, list[dict]] = {}
    for record in index["items"]:
        by_shard.setdefault(record["shard"], []).append(record)
    for i, entry in enumerate(index["shards"]):
        path = root / entry["file"]
        if not path.is_file():
            raise ShardError(f"shard {path}: file is missing (listed in {root / INDEX_FILE})")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise ShardError(
                f"shard {path}: {size} bytes, the index says {entry['bytes']} (truncated or rewritten after prepare)"
            )
        shard = read_shard(path)
        if shard.header != index["header"]:
            model = shard.header.get("model")
            if model != index["header"]["model"]:
                raise ShardError(f"shard {path}: prepared for model {model!r}, the index is for {index['model']!r}")
            diff = sorted(
                k for k in set(shard.header) | set(index["header"]) if shard.header.get(k) != index["header"].get(k)
            )
            raise ShardError(f"shard {path}: header differs from the index in {', '.join(diff)}")
        listed = [{k: v for k, v in r.items() if k != "shard"} for r in by_shard.get(i, [])]
        if shard.records != listed:
            raise ShardError(f"shard {path}: its items differ from those {root / INDEX_FILE} lists for it")
        check_shard_tensors(shard, full=full or values)
        if full:
            if "sha256" not in entry:
                raise ShardError(f"shard {path}: the index has no sha256 to verify against")
            if sha256_file(path) != entry["sha256"]:
                raise ShardError(f"shard {path}: sha256 differs from the index (the file changed or is corrupt)")


# ----- CLI -----


def _describe(index: dict) -> str:
    from collections import Counter

    buckets = Counter((r["frames"], r["height"], r["width"]) for r in index["items"])
    lines = [
        f"model {index['model']}, format v{index['format_version']}, {index['num_items']} items in "
        f"{len(index['shards'])} shards, latents {index['header']['latent_dtype']} "
        f"({index['header']['latent_norm']['convention']} normalisation)"
    ]
    for (f, h, w), n in sorted(buckets.items()):
        lines.append(f"  bucket {f} frames {h}x{w}: {n} items")
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m data.shards", description="Inspect, verify or re-index a dataset.")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="validate a dataset as LatentDataset does, and every value (finite)")
    c.add_argument("root")
    c.add_argument("--model", help="expected model family (default: the index's)")
    c.add_argument("--full", action="store_true", help="also verify sha256 checksums")
    c.add_argument("--quick", action="store_true", help="headers and shapes only: do not read the values (NaN / inf)")
    r = sub.add_parser("reindex", help="rebuild index.json from the shards")
    r.add_argument("root")
    p.add_argument("--debug", action="store_true", help="full tracebacks for errors (also RADIAL_DEBUG=1)")
    args = p.parse_args(list(argv) if argv is not None else None)
    with cli_errors(args.debug):
        if args.cmd == "reindex":
            index = build_index(args.root)
        else:
            model = args.model
            if model is None:
                try:
                    model = json.loads((Path(args.root) / INDEX_FILE).read_text()).get("model")
                except (OSError, json.JSONDecodeError, AttributeError):
                    model = None
            index = load_index(args.root, model or "?")
            verify_shards(args.root, index, full=args.full, values=not args.quick)
        print(_describe(index))
        print("ok")


if __name__ == "__main__":
    main()
