"""Prepare: videos + captions -> latent shards (VAE latents, text embeddings, metadata) for LatentDataset.

    python -m data.prepare --model wan --input videos/ --out data/wan_2x --pretrained /models/Wan2.1-T2V-1.3B \\
        --length 2x --buckets 480x832,832x480,624x624
    python -m data.prepare --model hunyuan --input captions.jsonl --out ds --tiny --length 17 --buckets 64x64
    accelerate launch -m data.prepare ...        # one process per GPU; or --workers N on one machine

Input (data/sources.py): a folder (videos found recursively, captions in a .txt beside each video with the same
name) or a manifest (.csv with a header, or .jsonl), with columns path (or video/file/file_name) and caption (or
text/prompt); relative paths are relative to the manifest.

For each video and each requested length (1x/2x/4x of the base model, or a frame count k*t+1) prepare takes up to
--clips-per-video non-overlapping clips at --fps, resizes and center-crops them to the nearest-aspect bucket,
encodes them with the family's VAE (normalized latents, see data/latents.py) and text encoder(s), and writes
shards (data/shards.py). Items already in the output's shards are skipped, so an interrupted run resumes; bad
inputs (unreadable, truncated, too short, no caption) are skipped and reported at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from data.shards import (
    EMPTY_PROMPT_FILE,
    FORMAT_VERSION,
    INDEX_FILE,
    ShardWriter,
    atomic_write_bytes,
    atomic_write_json,
    build_index,
    dtype_name,
    make_header,
    remove_stale_tmp,
    scan_shards,
)
from data.sources import Source, read_sources
from data.video import (
    CLIP_MODES,
    VideoError,
    check_buckets,
    choose_bucket,
    clip_frames,
    default_buckets,
    longest_clip,
    parse_bucket,
    plan_clips,
    probe,
    read_clips,
    to_pixels,
)
from radial.errors import USER_ERRORS, cli_errors
from radial.families import geometry
from radial.help_format import DefaultsHelpFormatter
from radial.parent_death import say, when_parent_dies
from radial.run_lock import lock_folder, lock_for_launch

SETTINGS_FILE = "prepare.json"
REPORT_FILE = "prepare_report.json"


@dataclass
class PrepareConfig:
    """Everything prepare needs; the CLI flags and a Hydra `data/prepare` config map onto these fields."""

    model: str
    input: str
    out: str
    pretrained_path: str | None = None  # local diffusers folder (vae/, text_encoder/, tokenizer/ ...)
    tiny: bool = False  # tiny random-init encoders of the real classes (tests, CPU demo)
    image: bool = False  # image-to-video conditioning from each clip's first frame (Wan2.1 / Wan2.2 I2V)
    lengths: Sequence[str | int] = ("1x",)  # "1x", "2x", "4x" of the base clip, or frame counts (k*t+1)
    fps: float | None = None  # target frame rate; default: the family's
    buckets: Sequence[str] | None = None  # "HxW"; default: base resolution, its portrait twin, a square
    clips_per_video: int = 1
    clip_mode: str = "uniform"  # uniform (spread evenly; one clip: centered) or start (back to back from 0)
    items_per_shard: int = 32
    latent_dtype: str = "bf16"
    text_dtype: str = "bf16"
    latent_sample: str = "mode"  # "mode" (posterior mean) or "sample" (seeded per item)
    seed: int = 0  # tiny encoders' weights and posterior samples
    device: str | None = None  # default: the accelerate process's device, else cuda:<rank> if any, else cpu
    vae_dtype: str = "fp32"
    encoder_dtype: str | None = None  # text encoders; default bf16 on CUDA, fp32 on CPU
    vae_tiling: bool = False
    workers: int = 1  # processes on this machine (when not distributed)
    distributed: bool = False  # every process of an `accelerate launch` / torchrun job runs prepare together
    # (the CLI sets it when WORLD_SIZE > 1); leave False to call prepare from one process of a bigger job
    threads: int | None = None  # torch CPU threads while encoding; default 1 for tiny encoders on CPU (they are
    # dominated by per-op overhead, and extra threads spin when the machine is busy), else torch's default
    limit: int | None = None  # stop after writing this many new items (smoke runs)
    strict_fps: bool = False  # skip videos whose frame rate is below the target (instead of repeating frames)
    path_column: str | None = None
    caption_column: str | None = None
    progress: bool = True
    checksum: bool = True  # sha256 of every shard in the index (for `verify="full"`)


@dataclass
class Unit:
    source: Source
    keys: list[tuple[str, int, int]]  # (item key, frames, clip index) still to do


@dataclass
class RankReport:
    written: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    too_short: list[tuple[str, int, int]] = field(default_factory=list)  # (video, frames asked, longest that fits)
    shards: int = 0
    seconds: float = 0.0


@dataclass
class PrepareSummary:
    written: list[str]
    already_done: list[str]
    skipped: list[tuple[str, str]]
    quarantined: list[tuple[str, str]]
    index: str | None
    num_items: int
    seconds: float
    rank: int = 0  # under a distributed launch, only rank 0's summary covers every rank
    too_short: list[tuple[str, int, int]] = field(default_factory=list)  # (video, frames asked, longest that fits)

    def nothing_written(self, out: str | Path) -> str:
        """The one-line reason why `out` holds no items (for the error when prepare wrote nothing)."""
        reasons = []
        if self.too_short:
            asked = sorted({f for _, f, _ in self.too_short})
            videos = sorted({v for v, _, _ in self.too_short})
            fits = min(n for _, _, n in self.too_short)
            shown = ", ".join(f"{v} (fits {n})" for v, n in sorted({(v, n) for v, _, n in self.too_short})[:3])
            more = f" and {len(videos) - 3} more" if len(videos) > 3 else ""
            hint = f"use --length {fits} (or shorter) or longer videos" if fits > 1 else "use longer videos"
            reasons.append(
                f"{len(videos)} video(s) too short for {'/'.join(map(str, asked))} frames: {shown}{more}; {hint}"
            )
        other = [(w, r) for w, r in self.skipped if not any(w.startswith(v) for v, _, _ in self.too_short)]
        if other:  # the most common reason (the text after the file name), with one example
            tails = [r.rsplit(": ", 1)[-1] for _, r in other]
            common = max(set(tails), key=tails.count)
            what, reason = other[tails.index(common)]
            reasons.append(f"{len(other)} skipped ({tails.count(common)} for: {common}), e.g. {what}: {reason}")
        if not reasons:
            reasons.append("the input lists no videos")
        return f"prepare wrote no items to {out}: " + "; ".join(reasons)

    def format(self) -> str:
        lines = [
            f"prepare: {len(self.written)} items written, {len(self.already_done)} already done, "
            f"{len(self.skipped)} skipped ({self.seconds:.1f} s)"
        ]
        for what, reason in self.skipped:
            lines.append(f"  skipped {what}: {reason}")
        for what, reason in self.quarantined:
            lines.append(f"  moved aside {what}: {reason}")
        if self.index:
            lines.append(f"index: {self.index} ({self.num_items} items)")
        return "\n".join(lines)


def item_key(rel: str, frames: int, clip: int) -> str:
    return f"{rel}:{frames}f:c{clip}"


# ----- settings and resume -----


def _resolve(cfg: PrepareConfig):
    """Validate everything cheap before any heavy work; returns (frames list, fps, buckets)."""
    g = geometry(cfg.model)
    from data.encoders import check_image_family, check_pretrained, encoder_class

    encoder_class(cfg.model)
    check_image_family(cfg.model, cfg.image)
    if cfg.tiny and cfg.pretrained_path:
        raise ValueError("give either --tiny or --pretrained (pretrained_path), not both")
    if not cfg.tiny:
        if cfg.pretrained_path:  # a Hub id in the Hugging Face cache becomes its snapshot folder
            from data.encoders.base import PRETRAINED_KEY
            from radial.hub import resolve_model_path

            cfg.pretrained_path = str(resolve_model_path(cfg.pretrained_path, key=PRETRAINED_KEY, family=cfg.model))
        check_pretrained(cfg.model, cfg.pretrained_path)
    frames = sorted({clip_frames(g, v) for v in cfg.lengths})
    if not frames:
        raise ValueError("lengths: give at least one (1x, 2x, 4x or a frame count)")
    fps = float(cfg.fps or g.fps)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    buckets = check_buckets(g, [parse_bucket(b) for b in cfg.buckets] if cfg.buckets else default_buckets(g))
    if cfg.clips_per_video < 1:
        raise ValueError(f"clips_per_video must be >= 1, got {cfg.clips_per_video}")
    if cfg.clip_mode not in CLIP_MODES:
        raise ValueError(f"clip_mode {cfg.clip_mode!r}: expected one of {CLIP_MODES}")
    if cfg.latent_sample not in ("mode", "sample"):
        raise ValueError(f"latent_sample {cfg.latent_sample!r}: expected 'mode' or 'sample'")
    for name in ("latent_dtype", "text_dtype", "vae_dtype"):
        dtype_name(getattr(cfg, name))
    if cfg.encoder_dtype:
        dtype_name(cfg.encoder_dtype)
    if not Path(cfg.input).exists():
        raise FileNotFoundError(f"input {cfg.input}: no such folder or manifest")
    return frames, fps, buckets


def _settings(cfg: PrepareConfig, fps: float) -> dict:
    """What must not change between runs into one output folder (resume safety)."""
    return {
        "format_version": FORMAT_VERSION,
        "model": cfg.model,
        "encoders": "tiny" if cfg.tiny else str(Path(cfg.pretrained_path).expanduser().resolve()),
        "seed": cfg.seed if cfg.tiny or cfg.latent_sample == "sample" else None,
        "fps": fps,
        "latent_dtype": dtype_name(cfg.latent_dtype),
        "text_dtype": dtype_name(cfg.text_dtype),
        "latent_sample": cfg.latent_sample,
        "clip_mode": cfg.clip_mode,
        "image": cfg.image,
    }


def _check_settings(out: Path, settings: dict) -> None:
    path = out / SETTINGS_FILE
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text()).get("settings", {})
    except (json.JSONDecodeError, AttributeError):
        return
    diff = [k for k in settings if k in old and old[k] != settings[k]]
    if diff:
        changes = "; ".join(f"{k}: {old[k]!r} before, {settings[k]!r} now" for k in diff)
        raise ValueError(
            f"out {out} was prepared with other settings ({changes}); use another --out, or the same settings to resume"
        )


# ----- the work of one rank -----


def _torch_dtype(name: str) -> torch.dtype:
    from data.shards import DTYPES

    return DTYPES[dtype_name(name)]


def _default_device(rank: int) -> str:
    if torch.cuda.is_available():
        return f"cuda:{rank % torch.cuda.device_count()}"
    return "cpu"


def _load(cfg: PrepareConfig, device: str):
    from data.encoders import load_encoders

    enc = load_encoders(
        cfg.model,
        cfg.pretrained_path,
        tiny=cfg.tiny,
        device=device,
        vae_dtype=_torch_dtype(cfg.vae_dtype),
        text_dtype=_torch_dtype(cfg.encoder_dtype) if cfg.encoder_dtype else None,
        seed=cfg.seed,
        image=cfg.image,
    )
    if cfg.vae_tiling:
        enc.enable_vae_tiling()
    return enc


def _item_generator(cfg: PrepareConfig, key: str) -> torch.Generator:
    seed = int.from_bytes(hashlib.sha256(f"{cfg.seed}:{key}".encode()).digest()[:8], "little") >> 1
    return torch.Generator().manual_seed(seed)


def _encode_clip(enc, cfg: PrepareConfig, clip, key: str) -> dict[str, torch.Tensor]:
    """uint8 [F, H, W, 3] -> {"latents": normalized [C, f, h, w]} (float32), and with image conditioning what the
    I2V pipeline computes from the first frame (see WanEncoders.encode_image_conditioning)."""
    pixels = to_pixels(clip)
    gen = _item_generator(cfg, key) if cfg.latent_sample == "sample" else None
    if gen is not None and enc.device.type != "cpu":
        gen = torch.Generator(device=enc.device).manual_seed(gen.initial_seed())
    out = {"latents": enc.encode_video(pixels.unsqueeze(0), sample=cfg.latent_sample == "sample", generator=gen)[0]}
    if enc.image_fields:
        from PIL import Image

        out.update(enc.encode_image_conditioning(pixels, Image.fromarray(clip[0])))
    return out


def _process_unit(enc, cfg, unit: Unit, fps: float, buckets, writer: ShardWriter, report: RankReport, budget):
    """Probe, plan, decode once, encode and write the unit's missing items; skips are recorded with a reason."""
    src = unit.source
    try:
        info = probe(src.path)
    except VideoError as e:
        report.skipped.append((src.rel, str(e)))
        return
    if cfg.strict_fps and info.fps + 1e-3 < fps:
        report.skipped.append((src.rel, f"{src.path}: {info.fps:.3g} fps is below the target {fps:.3g} fps"))
        return
    bucket = choose_bucket(info.width, info.height, buckets)
    todo = []  # (key, frames, clip, start)
    fits = longest_clip(info, fps, geometry(cfg.model))
    for frames in sorted({f for _, f, _ in unit.keys}):
        wanted = [(k, c) for k, f, c in unit.keys if f == frames]
        if fits < frames:
            report.too_short.append((src.rel, frames, fits))
        try:
            starts = plan_clips(info, frames, fps, cfg.clips_per_video, cfg.clip_mode)
        except VideoError as e:
            for k, _ in wanted:
                report.skipped.append((k, str(e)))
            continue
        for k, c in wanted:
            if c < len(starts):
                todo.append((k, frames, c, starts[c]))
            else:
                report.skipped.append(
                    (
                        k,
                        f"{src.path}: {info.duration:.2f} s holds only {len(starts)} non-overlapping {frames}-frame clips",
                    )
                )
    if budget is not None:
        todo = todo[: max(0, budget())]
    if not todo:
        return
    # One decoding pass per frame count (a pass serves all clips of that length).
    text = None
    for frames in sorted({t[1] for t in todo}):
        group = [t for t in todo if t[1] == frames]
        try:
            clips = read_clips(info, [t[3] for t in group], frames, fps, bucket)
        except VideoError as e:
            for k, *_ in group:
                report.skipped.append((k, str(e)))
            continue
        if text is None:
            text = enc.encode_text([src.caption])[0]
        for (key, frames_, clip_idx, start), clip in zip(group, clips, strict=True):
            try:
                encoded = _encode_clip(enc, cfg, clip, key)
                notes = {}
                if enc.joint_fields:  # streams beside the video (MiniMax-H3's sound track) from the same span
                    joint, notes = enc.encode_joint(src.path, start, frames_, fps)
                    encoded.update(joint)
            except VideoError as e:
                report.skipped.append((key, str(e)))
                continue
            except torch.OutOfMemoryError:
                report.skipped.append((key, "out of memory while encoding (try --vae-tiling or smaller buckets)"))
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            latents = encoded["latents"]
            if not all(bool(torch.isfinite(t).all()) for t in encoded.values()):
                report.skipped.append((key, "the VAE produced NaN/inf latents (try --vae-dtype fp32)"))
                continue
            record = {
                "key": key,
                "source": src.rel,
                "caption": src.caption,
                "clip": clip_idx,
                "clip_start": round(start, 6),
                "frames": frames_,
                "fps": fps,
                "height": bucket[0],
                "width": bucket[1],
                "source_fps": round(info.fps, 6),
                "source_size": [info.width, info.height],
                "source_duration": round(info.duration, 6),
                "latent_shape": list(latents.shape),
                "text_lens": {n: int(t.shape[0]) for n, t in text.items() if t.ndim == 2},
                **notes,
            }
            if enc.joint_fields:
                record["joint_shapes"] = {n: list(encoded[n].shape) for n in enc.joint_fields}
            tensors = {"latents": latents.to(_torch_dtype(cfg.latent_dtype))}
            tensors.update({n: t.to(_torch_dtype(cfg.text_dtype)) for n, t in text.items()})
            for name, t in encoded.items():  # image / joint latents in the latent dtype, image states in the text one
                if name != "latents":
                    tensors[name] = t.to(_torch_dtype(cfg.text_dtype if name == "image_embeds" else cfg.latent_dtype))
            writer.add(record, tensors)
            report.written.append(key)


def run_rank(
    cfg: PrepareConfig,
    units: list[Unit],
    rank: int,
    world: int,
    device: str,
    expected_header: dict | None,
    on_unit: Callable[[RankReport], None] | None = None,
    show_progress: bool = False,
) -> RankReport:
    """Encode and write the given units with this process's encoders; flushes what is done even when stopped."""
    t0 = time.time()
    _, fps, buckets = _resolve(cfg)
    threads = cfg.threads or (1 if cfg.tiny and torch.device(device).type == "cpu" else None)
    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run_rank(cfg, units, rank, world, device, expected_header, on_unit, show_progress, fps, buckets, t0)
    finally:
        torch.set_num_threads(saved_threads)


def _run_rank(cfg, units, rank, world, device, expected_header, on_unit, show_progress, fps, buckets, t0):
    from tqdm.auto import tqdm

    enc = _load(cfg, device)
    header = make_header(enc, cfg.latent_dtype, cfg.text_dtype, cfg.latent_sample)
    if expected_header is not None and expected_header != header:
        diff = sorted(k for k in set(header) | set(expected_header) if header.get(k) != expected_header.get(k))
        raise ValueError(
            f"out {cfg.out}: its shards were written with other encoders or settings (differs in {', '.join(diff)}); "
            "use another --out, or the same model folder and settings to resume"
        )
    empty = Path(cfg.out) / EMPTY_PROMPT_FILE
    if rank == 0 and not empty.is_file():
        from safetensors.torch import save

        states = {n: t.to(_torch_dtype(cfg.text_dtype)) for n, t in enc.encode_text([""])[0].items()}
        atomic_write_bytes(empty, save(states))
    stamp = time.strftime("%Y%m%d%H%M%S") + f"{os.getpid() % 10000:04d}"
    writer = ShardWriter(cfg.out, header, cfg.items_per_shard, prefix=f"{stamp}-r{rank:03d}")
    report = RankReport()
    budget = None
    if cfg.limit is not None:
        share = cfg.limit // world + (1 if rank < cfg.limit % world else 0)
        budget = lambda: share - len(report.written)  # noqa: E731
    bar = tqdm(total=len(units), desc=f"prepare {cfg.model}", unit="video", disable=not show_progress, leave=True)
    try:
        for unit in units:
            if budget is not None and budget() <= 0:
                break
            _process_unit(enc, cfg, unit, fps, buckets, writer, report, budget)
            bar.update(1)
            bar.set_postfix(written=len(report.written), skipped=len(report.skipped), refresh=False)
            if on_unit is not None:
                on_unit(report)
    finally:
        writer.flush()  # completed items are never lost, whatever stopped the loop
        bar.close()
        report.shards = len(writer.written)
        report.seconds = time.time() - t0
    return report


def _exit_orphaned(parent: int) -> None:
    say(f"data.prepare: the parent process (pid {parent}) is gone; exiting (a new prepare resumes from the shards)")
    os._exit(1)


def _worker(cfg, units, rank, world, device, expected_header, queue):
    when_parent_dies(_exit_orphaned)  # a killed prepare's workers must not write on beside the next one
    try:
        if cfg.threads is None:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        report = run_rank(
            cfg, units, rank, world, device, expected_header, on_unit=lambda r: queue.put(("unit", rank, None))
        )
        queue.put(("done", rank, asdict(report)))
    except BaseException as e:  # report every failure to the parent, then exit non-zero
        queue.put(("error", rank, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        raise SystemExit(1) from None


# ----- the driver -----


def _plan(cfg: PrepareConfig, frames_list, done: set[str]):
    sources = read_sources(cfg.input, cfg.path_column, cfg.caption_column)
    units, already, skipped = [], [], []
    for s in sources:
        keys = [(item_key(s.rel, f, c), f, c) for f in frames_list for c in range(cfg.clips_per_video)]
        missing = [k for k in keys if k[0] not in done]
        already.extend(k for k, _, _ in keys if k in done)
        if not missing:
            continue
        if s.problem:
            skipped.append((s.rel, s.problem))
            continue
        units.append(Unit(s, missing))
    return units, already, skipped


def _distributed_state(cfg: PrepareConfig):
    """accelerate's PartialState when every process of a launch runs prepare (cfg.distributed), else None."""
    if not cfg.distributed or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # CPU-only: gloo, as `accelerate launch --cpu`
    if state.num_processes <= 1:
        raise RuntimeError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} but accelerate sees one process: every process would do all "
            "the work; launch with `accelerate launch` or `torchrun`, or unset WORLD_SIZE"
        )
    return state


def prepare(cfg: PrepareConfig | None = None, **kwargs) -> PrepareSummary:
    """Run prepare (see the module docstring); returns the summary (also printed and written to the output)."""
    if cfg is None:
        cfg = PrepareConfig(**kwargs)
    elif kwargs:
        raise TypeError("give a PrepareConfig or keyword arguments, not both")
    t0 = time.time()
    frames_list, fps, _ = _resolve(cfg)
    state = _distributed_state(cfg)
    if state and "TORCHELASTIC_RUN_ID" in os.environ:  # a rank of `accelerate launch` / torchrun ends with it
        when_parent_dies(_exit_orphaned)
    # One live prepare per output folder, from before its first write to after its last: rank 0 of a distributed
    # prepare holds it; a prepare called by one trainer rank (synthetic data) must not wait for the other ranks.
    with lock_for_launch(cfg.out, "--out") if state else lock_folder(cfg.out, "--out"):
        return _prepare(cfg, state, frames_list, fps, t0)


def _prepare(cfg: PrepareConfig, state, frames_list: list[int], fps: float, t0: float) -> PrepareSummary:
    out = Path(cfg.out)
    settings = _settings(cfg, fps)
    rank, world = (state.process_index, state.num_processes) if state else (0, max(1, cfg.workers))
    main = rank == 0

    quarantined: list[tuple[str, str]] = []
    if main:
        out.mkdir(parents=True, exist_ok=True)
        _check_settings(out, settings)
        remove_stale_tmp(out)
        shards, bad = scan_shards(out, quarantine=True)
        quarantined = [(str(p), reason) for p, reason in bad]
        done = {r["key"] for s in shards for r in s.records}
        header = shards[0].header if shards else None
        units, already, skipped = _plan(cfg, frames_list, done)
        atomic_write_json(out / SETTINGS_FILE, {"settings": settings, "config": _jsonable(cfg)})
    if state:
        # Rank 0 scanned and planned; the others read its plan (the same list on every rank).
        plan_file = out / ".prepare_plan.json"
        if main:
            atomic_write_json(plan_file, {"header": header, "units": [_unit_json(u) for u in units]})
        state.wait_for_everyone()
        if not main:
            plan = json.loads(plan_file.read_text())
            header, units = plan["header"], [_unit_from_json(u) for u in plan["units"]]
    mine = units[rank::world]

    if state or world == 1:
        device = cfg.device or (str(state.device) if state else _default_device(0))
        report = run_rank(cfg, mine, rank, world, device, header, show_progress=cfg.progress and main)
        reports = [report]
        if state:
            part = out / f".prepare_report-r{rank:03d}.json"
            atomic_write_json(part, asdict(report))
            state.wait_for_everyone()
            if not main:
                return PrepareSummary(report.written, [], report.skipped, [], None, 0, time.time() - t0, rank)
            reports = []
            for r in range(world):
                p = out / f".prepare_report-r{r:03d}.json"
                reports.append(RankReport(**json.loads(p.read_text())))
                p.unlink(missing_ok=True)
            (out / ".prepare_plan.json").unlink(missing_ok=True)
    else:
        reports = _run_workers(cfg, units, world, header)

    written = [k for r in reports for k in r.written]
    skipped += [tuple(s) for r in reports for s in r.skipped]
    too_short = [tuple(s) for r in reports for s in r.too_short]
    index_path, num_items = None, 0
    if any(out.joinpath("shards").glob("*.safetensors")):
        index = build_index(out, checksum=cfg.checksum)
        index_path, num_items = str(out / INDEX_FILE), index["num_items"]
    summary = PrepareSummary(
        written, already, skipped, quarantined, index_path, num_items, time.time() - t0, too_short=too_short
    )
    atomic_write_json(out / REPORT_FILE, asdict(summary))
    if cfg.progress:
        print(summary.format(), file=sys.stderr)
    if index_path is None:  # nothing to train on: the next step (shards check, training) would fail less clearly
        raise ValueError(summary.nothing_written(out))
    return summary


def _run_workers(cfg: PrepareConfig, units: list[Unit], world: int, header: dict | None) -> list[RankReport]:
    """`world` worker processes on this machine (spawned), progress collected in this one."""
    import multiprocessing as mp

    from tqdm.auto import tqdm

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = []
    for rank in range(world):
        device = cfg.device or _default_device(rank)
        share = units[rank::world]
        p = ctx.Process(target=_worker, args=(cfg, share, rank, world, device, header, queue), daemon=False)
        p.start()
        procs.append(p)
    reports: dict[int, RankReport] = {}
    errors: dict[int, str] = {}
    bar = tqdm(total=len(units), desc=f"prepare {cfg.model} ({world} workers)", unit="video", disable=not cfg.progress)
    try:
        while len(reports) + len(errors) < world:
            try:
                kind, rank, payload = queue.get(timeout=5)
            except Exception:  # queue.Empty: check for workers that died without a word (killed, out of memory)
                for rank, proc in enumerate(procs):
                    if rank not in reports and rank not in errors and not proc.is_alive():
                        errors[rank] = f"worker {rank} exited with code {proc.exitcode}"
                continue
            if kind == "unit":
                bar.update(1)
            elif kind == "done":
                reports[rank] = RankReport(**payload)
            else:
                errors[rank] = f"worker {rank}: {payload}"
    finally:
        bar.close()
        for p in procs:
            p.join()
    if errors:
        lines = "\n".join(errors[r] for r in sorted(errors))
        raise RuntimeError(f"prepare workers failed (finished items are kept; run again to resume):\n{lines}")
    return [reports[r] for r in sorted(reports)]


def _jsonable(cfg: PrepareConfig) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}


def _unit_json(u: Unit) -> dict:
    return {"source": asdict(u.source) | {"path": str(u.source.path)}, "keys": u.keys}


def _unit_from_json(d: dict) -> Unit:
    s = d["source"]
    return Unit(Source(s["rel"], Path(s["path"]), s["caption"], s["problem"]), [tuple(k) for k in d["keys"]])


# ----- CLI -----


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data.prepare",
        description="Encode videos + captions into latent shards for long-video LoRA training.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="family: wan, wan22, wan22_ti2v, hunyuan, hunyuan15, mochi, h3")
    p.add_argument("--input", required=True, help="folder of videos (+ .txt captions) or a .csv / .jsonl manifest")
    p.add_argument("--out", required=True, help="output dataset folder (resumable)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument(
        "--pretrained", dest="pretrained_path", help="the model's diffusers folder, or its Hub id in the HF cache"
    )
    g.add_argument("--tiny", action="store_true", help="tiny random-init encoders (tests, CPU demo)")
    p.add_argument(
        "--i2v",
        dest="image",
        action="store_true",
        help="image-to-video conditioning from each clip's first frame, as the I2V pipeline computes it (wan: "
        "Wan2.1 I2V's CLIP image states and first-frame latent with its mask; wan22: Wan2.2 A14B I2V, latent only; "
        "wan22_ti2v: the clean first latent frame and its per-token mask; hunyuan15: HunyuanVideo-1.5 I2V's SigLIP "
        "states and the first frame's latent with its mask channel)",
    )
    p.add_argument(
        "--length",
        dest="lengths",
        nargs="+",
        default=["1x"],
        help="clip length(s): 1x/2x/4x of the base model's clip (Wan 81/161/321 frames) or frame counts k*4+1; "
        "videos shorter than a length are skipped for it",
    )
    p.add_argument("--fps", type=float, default=None, help="frame rate clips are sampled at (default: the family's)")
    p.add_argument("--buckets", default=None, help="HxW,HxW,... (default: base resolution, portrait, square)")
    p.add_argument("--clips-per-video", type=int, default=1, help="non-overlapping clips taken from each video")
    p.add_argument(
        "--clip-mode",
        choices=CLIP_MODES,
        default="uniform",
        help="uniform: clips spread over the video (one clip: centered); start: back to back from the start",
    )
    p.add_argument("--items-per-shard", type=int, default=32, help="clips per safetensors shard file")
    p.add_argument("--latent-dtype", default="bf16", help="stored latents: bf16, fp16 or fp32")
    p.add_argument("--text-dtype", default="bf16", help="stored text states: bf16, fp16 or fp32")
    p.add_argument(
        "--latent-sample",
        choices=("mode", "sample"),
        default="mode",
        help="mode: the VAE posterior mean; sample: a seeded draw per item",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the tiny encoders and of --latent-sample sample")
    p.add_argument("--device", default=None, help="encoding device (default: cuda:<rank> if any, else cpu)")
    p.add_argument("--vae-dtype", default="fp32", help="VAE compute dtype (fp32 avoids NaN latents)")
    p.add_argument(
        "--encoder-dtype", default=None, help="text encoder compute dtype (default: bf16 on CUDA, fp32 on CPU)"
    )
    p.add_argument("--vae-tiling", action="store_true", help="encode in tiles (less memory for long / large clips)")
    p.add_argument("--workers", type=int, default=1, help="processes on this machine (not with accelerate launch)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--limit", type=int, default=None, help="stop after this many new items")
    p.add_argument("--strict-fps", action="store_true", help="skip videos below the target fps")
    p.add_argument("--path-column", default=None, help="manifest column with the video path (default: path/video/file)")
    p.add_argument(
        "--caption-column", default=None, help="manifest column with the caption (default: caption/text/prompt)"
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar and summary")
    p.add_argument(
        "--no-checksum", dest="checksum", action="store_false", help="skip the shards' sha256 in the index (faster)"
    )
    p.add_argument("--debug", action="store_true", help="full tracebacks for errors (also RADIAL_DEBUG=1)")
    return p


def main(argv: Sequence[str] | None = None) -> PrepareSummary:
    args = build_parser().parse_args(argv)
    kwargs = vars(args)
    if kwargs["buckets"]:
        kwargs["buckets"] = [b for b in kwargs["buckets"].split(",") if b]
    debug = kwargs.pop("debug")
    # Argument values and paths are checked by PrepareConfig / prepare with ValueError / FileNotFoundError too.
    with cli_errors(debug, expected=(*USER_ERRORS, ValueError, FileNotFoundError)):
        cfg = PrepareConfig(**kwargs, distributed=int(os.environ.get("WORLD_SIZE", "1")) > 1)
        summary = prepare(cfg)
    if not cfg.progress and summary.rank == 0:  # prepare() printed it already otherwise
        print(summary.format())
    return summary


if __name__ == "__main__":
    main()
