"""One generation through a diffusers pipeline, measured: step times, wall time, peak memory, final latents.

    result = generate(pipe, ClipSpec(frames=321, height=480, width=832, num_inference_steps=50, seed=0),
                      embeds=embeds, handles=handles)
    paths = save_result(result, "outputs/gen", "wan_4x_seed0", sidecar=build_sidecar(result, ...))

Dense sampling steps: `handles` (from `apply_radial` / `radial.inject_pipeline`) are set to step 0 before the call
and advanced through `callback_on_step_end`, so `dense_timesteps` applies; the same callback times each step and
keeps the latents of the last one (the video's latents even when the pipeline decodes them).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
import itertools
import platform
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from radial.attention import resolve_backend
from radial.errors import ConfigError, MissingPathError
from radial.families import FamilySpec
from radial.files import share_like_umask
from radial.generation.embeds import PromptEmbeds
from radial.generation.pipeline import image_pipeline_names, pipeline_family, set_scheduler_shift
from radial.generation.settings import ClipSpec
from radial.generation.video import to_uint8_frames, write_mp4, write_wav
from radial.mask.stats import model_density
from radial.models import get_adapter


@dataclass
class GenerationResult:
    """What one generation produced and cost."""

    frames: np.ndarray | None  # uint8 [F, H, W, 3]; None with decode=False
    latents: torch.Tensor  # [1, C, f, h, w] final latents as the scheduler left them (CPU, float32)
    step_times_s: list[float]
    wall_time_s: float
    decode_time_s: float
    peak_memory: dict[str, float]
    family: str
    clip: ClipSpec
    prompt: str | None
    negative_prompt: str | None
    embeds_source: str | None
    attention: dict[str, Any] = field(default_factory=dict)
    audio: np.ndarray | None = None  # float32 [channels, samples] of a joint audio-video model (MiniMax-H3)
    audio_rate: int | None = None  # its sample rate

    @property
    def denoise_time_s(self) -> float:
        return float(sum(self.step_times_s))


class _StepClock:
    """callback_on_step_end: advances the radial handles, times steps, keeps the newest latents."""

    def __init__(self, handles, sync: bool, user_callback=None):
        self.handles, self.sync, self.user_callback = handles, sync, user_callback
        self.times: list[float] = []
        self.latents: torch.Tensor | None = None
        self.last = 0.0

    def start(self) -> None:
        if self.handles is not None:
            self.handles.set_step(0)
        self._sync()
        self.last = time.perf_counter()

    def _sync(self) -> None:
        if self.sync:
            torch.cuda.synchronize()

    def __call__(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        if self.handles is not None:
            callback_kwargs = self.handles.step_callback(pipe, step, timestep, callback_kwargs)
        if self.user_callback is not None:
            callback_kwargs = self.user_callback(pipe, step, timestep, callback_kwargs) or callback_kwargs
        self.latents = callback_kwargs.get("latents", self.latents)
        self._sync()
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now
        return callback_kwargs


@contextlib.contextmanager
def _scheduler_clock(pipe, clock: _StepClock):
    """For pipelines without callback_on_step_end (HunyuanVideo-1.5): the clock runs after each scheduler step, the
    same point of the loop (radial step counter, step times, newest latents)."""
    scheduler, steps = pipe.scheduler, itertools.count()
    stock = scheduler.step

    def step(model_output, timestep, sample, *args, **kwargs):
        out = stock(model_output, timestep, sample, *args, **kwargs)
        clock(pipe, next(steps), timestep, {"latents": out[0] if isinstance(out, tuple) else out.prev_sample})
        return out

    scheduler.step = step
    try:
        yield
    finally:
        del scheduler.step  # the class's method again


def _handle_list(handles) -> list:
    if handles is None:
        return []
    return list(handles) if hasattr(handles, "__iter__") else [handles]


def attention_summary(handles, clip: ClipSpec) -> dict[str, Any]:
    """The sparse layers' mask density (blocks, token pairs) and the whole model's (dense layers and steps count 1):
    `model_block_density`, and `effective_density` of token pairs."""
    hs = _handle_list(handles)
    if not hs:
        return {"radial": False, "effective_density": 1.0}
    h = hs[0]
    plan, grid, cfg = h.last_plan, h.last_grid, h.config
    backend = cfg.backend if plan is None else resolve_backend(cfg.backend, plan.device, plan.block_size)
    out: dict[str, Any] = {"radial": True, "backend": backend, "layers": h.num_layers}
    if grid is not None:
        out["latent_grid"] = [grid.frames, grid.height, grid.width]
        out["video_tokens"] = grid.video_tokens
    if plan is None or backend == "dense":  # every layer and step ran dense (the dense backend ignores the plan)
        out["effective_density"] = 1.0
        return out
    out.update(
        mask_block_density=plan.stats.block_density,
        mask_token_density=plan.stats.token_density,
        ideal_speedup=plan.stats.ideal_speedup,
        text_tokens=plan.text_tokens,
    )
    # dense layers and steps count 1: the whole model's density, of blocks, and of token pairs (the FLOPs)
    counted = dict(layers=h.num_layers, dense_layers=cfg.dense_layers, steps=clip.num_inference_steps)
    counted["dense_steps"] = cfg.dense_timesteps
    out["model_block_density"] = model_density(plan.stats.block_density, **counted)
    out["effective_density"] = model_density(plan.stats.token_density, **counted)
    return out


def _memory(device: torch.device) -> dict[str, float]:
    out = {"process_peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if device.type == "cuda":
        out["cuda_peak_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["cuda_peak_reserved_gb"] = torch.cuda.max_memory_reserved(device) / 2**30
    return out


def _uses_cfg(spec: FamilySpec, clip: ClipSpec) -> bool:
    if spec.true_cfg:
        return (clip.true_cfg_scale or 1.0) > 1.0
    return clip.guidance_scale > 1.0


def _image_kwargs(pipe, clip: ClipSpec) -> dict[str, Any]:
    """{"image": the first frame} for an image-to-video pipeline ({} for text-to-video), each refusing the other's
    input in one line."""
    image_pipeline = type(pipe).__name__ in image_pipeline_names()
    if image_pipeline and clip.image is None:
        raise ValueError(f"{type(pipe).__name__} generates from a first frame: give --image FILE")
    if clip.image is not None and not image_pipeline:
        raise ValueError(f"--image {clip.image}: {type(pipe).__name__} is text-to-video; use an image-to-video model")
    return {"image": load_image(clip.image)} if image_pipeline else {}


def call_kwargs(pipe, clip: ClipSpec, embeds: PromptEmbeds | None, family: str) -> dict[str, Any]:
    """The pipeline call arguments for a clip (prompt text or embeddings), checked for what the pipeline lacks: the
    family adapter's own call where it has one, else diffusers' common arguments as the family spec qualifies them."""
    adapter = get_adapter(family)
    spec = adapter.spec
    image = _image_kwargs(pipe, clip)
    own = adapter.pipeline_call_kwargs(pipe, clip, embeds, image)
    if own is not None:
        return own
    kw: dict[str, Any] = dict(
        height=clip.height,
        width=clip.width,
        num_frames=clip.frames,
        num_inference_steps=clip.num_inference_steps,
        guidance_scale=clip.guidance_scale,
    )
    if clip.max_sequence_length is not None:
        kw["max_sequence_length"] = clip.max_sequence_length
    if spec.true_cfg and clip.true_cfg_scale is not None:
        kw["true_cfg_scale"] = clip.true_cfg_scale
    if clip.guidance_scale_2 is not None:
        kw["guidance_scale_2"] = clip.guidance_scale_2
    has_text_encoder = getattr(pipe, "text_encoder", None) is not None
    cfg = _uses_cfg(spec, clip)
    if embeds is not None:
        if clip.prompt is not None:
            raise ValueError("give a prompt or prompt embeddings, not both")
        dtype = getattr(pipe.transformer, "dtype", None)
        kw.update(embeds.call_kwargs(family, pipe.transformer.device, dtype))
        if "pooled_prompt_embeds" in spec.text_fields and "pooled_prompt_embeds" not in kw:
            raise ValueError(f"{embeds.source}: {spec.title} needs pooled_prompt_embeds (its CLIP state)")
        if cfg and not embeds.has_negative:
            if not has_text_encoder:
                raise ValueError(
                    f"classifier-free guidance (guidance {clip.true_cfg_scale or clip.guidance_scale}) needs "
                    f"negative_prompt_embeds in {embeds.source} or a text encoder for the negative prompt; add them, "
                    "or pass --guidance-scale 1 (Wan, Mochi) / leave --true-cfg-scale unset (HunyuanVideo)"
                )
            kw["negative_prompt"] = clip.negative_prompt
        if not cfg:  # the negative states of the stored embeddings are not used
            for key in [k for k in kw if k.startswith("negative_") and k != "negative_prompt"]:
                kw.pop(key)
    else:
        if clip.prompt is None:
            raise ValueError("nothing to generate from: give a prompt or prompt embeddings (--prompt-embeds)")
        if not has_text_encoder:
            raise ValueError("a text prompt needs the pipeline's text encoder; load it or pass --prompt-embeds")
        kw["prompt"] = clip.prompt
        if cfg or spec.true_cfg:
            kw["negative_prompt"] = clip.negative_prompt
    kw.update(image)
    if "image" in kw and "prompt" in kw:
        _ftfy_fallback(pipe)
    kw.update(clip.extra)
    return kw


def _ftfy_fallback(pipe) -> None:
    """diffusers' WanImageToVideoPipeline calls ftfy.fix_text unconditionally (WanPipeline only when ftfy is
    installed); without ftfy, give its module the no-op WanPipeline then uses, so text prompts work the same."""
    import sys
    from types import SimpleNamespace

    module = sys.modules.get(type(pipe).__module__)
    if module is not None and not hasattr(module, "ftfy"):
        module.ftfy = SimpleNamespace(fix_text=lambda text: text)


def load_image(path: str | Path, option: str = "--image"):
    """The RGB image of a file for an image-to-video pipeline (its first frame); one-line errors for bad files,
    naming `option` (the option or config key that gave it)."""
    from PIL import Image, UnidentifiedImageError

    file = Path(path).expanduser()
    if not file.is_file():
        raise MissingPathError(f"{option} {path}: no such file (an image: png, jpg, ...)")
    try:
        with Image.open(file) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ConfigError(f"{option} {path}: not a readable image ({e})") from None


def generate(
    pipe,
    clip: ClipSpec,
    *,
    embeds: PromptEmbeds | None = None,
    handles=None,
    decode: bool = True,
    family: str | None = None,
    callback=None,
) -> GenerationResult:
    """Run the pipeline once for `clip` (seeded on the CPU: the same noise on every device) and measure it."""
    family = family or pipeline_family(pipe)
    adapter = get_adapter(family)
    set_scheduler_shift(pipe, clip.shift)
    kw = call_kwargs(pipe, clip, embeds, family)
    device = torch.device(getattr(pipe, "_execution_device", None) or pipe.transformer.device)
    cuda = device.type == "cuda"
    clock = _StepClock(handles, sync=cuda, user_callback=callback)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    generator = torch.Generator("cpu").manual_seed(int(clip.seed))
    clock.start()
    started = clock.last
    if "callback_on_step_end" in inspect.signature(pipe.__call__).parameters:
        kw.update(callback_on_step_end=clock, callback_on_step_end_tensor_inputs=["latents"])
        stepping = contextlib.nullcontext()
    else:
        stepping = _scheduler_clock(pipe, clock)
    with stepping:
        out = adapter.run_pipeline(pipe, kw, generator=generator, decode=decode)
    if cuda:
        torch.cuda.synchronize(device)
    ended = time.perf_counter()
    if decode:
        frames = to_uint8_frames(out.video[0] if isinstance(out.video, (list, tuple)) else out.video)
        latents = clock.latents if out.latents is None else out.latents
    else:
        frames, latents = None, out.video
    if latents is None:
        raise RuntimeError("the pipeline ran no denoising step (num_inference_steps=0?)")
    return GenerationResult(
        frames=frames,
        latents=latents.detach().float().cpu(),
        step_times_s=clock.times,
        wall_time_s=ended - started,
        decode_time_s=max(0.0, ended - clock.last) if decode else 0.0,
        peak_memory=_memory(device),
        family=family,
        clip=clip,
        prompt=clip.prompt if embeds is None else embeds.prompt,
        negative_prompt=clip.negative_prompt if embeds is None else embeds.negative_prompt,
        embeds_source=None if embeds is None else embeds.source,
        attention=attention_summary(handles, clip),
        audio=out.audio if decode else None,
        audio_rate=out.audio_rate,
    )


def versions() -> dict[str, str]:
    import diffusers

    import radial

    out = {"radial": radial.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__}
    out["python"] = platform.python_version()
    for dist in ("peft", "transformers", "accelerate", "triton", "flashinfer-python"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
        out["cuda"] = str(torch.version.cuda)
    return out


def build_sidecar(result: GenerationResult, *, radial=None, loras=None, pipeline: str | None = None, **extra) -> dict:
    """The JSON record of a generation: what was asked, how attention ran, LoRAs, cost, versions."""
    c = result.clip
    steps = result.step_times_s
    record = {
        "prompt": result.prompt,
        "negative_prompt": result.negative_prompt,
        "prompt_embeds": result.embeds_source,
        "seed": c.seed,
        "image": c.image,
        "family": result.family,
        "pipeline": pipeline,
        "height": c.height,
        "width": c.width,
        "frames": c.frames,
        "fps": c.fps,
        "latent_shape": list(result.latents.shape),
        "finite": bool(torch.isfinite(result.latents).all()),
        "num_inference_steps": c.num_inference_steps,
        "guidance_scale": c.guidance_scale,
        "true_cfg_scale": c.true_cfg_scale,
        "guidance_scale_2": c.guidance_scale_2,
        "shift": c.shift,
        "radial": None if radial is None else radial.as_dict(),
        "attention": result.attention,
        "loras": list(loras or []),
        "time": {
            "wall_s": result.wall_time_s,
            "denoise_s": result.denoise_time_s,
            "decode_s": result.decode_time_s,
            "per_step_s": steps,
            "mean_step_s": float(np.mean(steps[1:] if len(steps) > 1 else steps)) if steps else None,
        },
        "peak_memory": result.peak_memory,
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    record.update(extra)
    return record


def save_result(result: GenerationResult, out_dir: str | Path, name: str, sidecar: dict, *, save_latents=True) -> dict:
    """Write NAME.mp4 (when decoded), NAME.latents.safetensors and the NAME.json sidecar; returns their paths."""
    import json

    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    if result.frames is not None:
        files["video"] = str(write_mp4(out_dir / f"{name}.mp4", result.frames, result.clip.fps))
    if result.audio is not None:  # the sound track beside the video (the mp4 writer writes video only)
        files["audio"] = str(write_wav(out_dir / f"{name}.wav", result.audio, result.audio_rate))
    if save_latents:
        path = out_dir / f"{name}.latents.safetensors"
        save_file({"latents": result.latents.contiguous()}, str(path))
        share_like_umask(path)  # safetensors writes 0600
        files["latents"] = str(path)
    sidecar = {**sidecar, "files": {**files, "sidecar": str(out_dir / f"{name}.json")}}
    tmp = out_dir / f"{name}.json.part"
    tmp.write_text(json.dumps(sidecar, indent=1, default=str))
    tmp.replace(out_dir / f"{name}.json")
    return sidecar["files"]
