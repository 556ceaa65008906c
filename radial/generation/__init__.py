"""Generation with radial attention and LoRAs through diffusers pipelines (the library side of `train.generate`).

    from radial.generation import ClipSpec, RadialSettings, LoraSpec, load_pipeline, apply_radial, load_loras
    from radial.generation import generate, build_sidecar, save_result, load_prompt_embeds

Modules: settings (options, lengths), embeds (precomputed prompt embeddings), pipeline (load, family, radial,
LoRAs, shift), run (generate + measure, sidecar, save), video (frames, mp4).
"""

from radial.generation.embeds import PromptEmbeds, load_prompt_embeds, save_prompt_embeds
from radial.generation.loras import load_loras
from radial.generation.pipeline import (
    apply_radial,
    load_pipeline,
    pipeline_family,
    read_text_settings,
)
from radial.generation.run import GenerationResult, build_sidecar, generate, save_result
from radial.generation.settings import ClipSpec, LoraSpec, RadialSettings, frames_for_length
from radial.generation.video import frame_strip, to_uint8_frames, write_mp4

__all__ = [
    "ClipSpec",
    "GenerationResult",
    "LoraSpec",
    "PromptEmbeds",
    "RadialSettings",
    "apply_radial",
    "build_sidecar",
    "frame_strip",
    "frames_for_length",
    "generate",
    "load_loras",
    "load_pipeline",
    "load_prompt_embeds",
    "pipeline_family",
    "read_text_settings",
    "save_prompt_embeds",
    "save_result",
    "to_uint8_frames",
    "write_mp4",
]
