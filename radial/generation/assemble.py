"""A family's diffusers pipeline assembled from parts already loaded, in one place: validation samples (the training
transformer, the data's VAEs) and the tiny random pipelines (tests, the demo, `train.generate --tiny`) build theirs
here; a pipeline folder on disk loads whole instead (radial.generation.pipeline.load_pipeline)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from radial.generation.pipeline import TEXT_COMPONENTS


def pipeline_name(adapter, image: bool) -> str:
    """The family's image-to-video (`image`) or text-to-video diffusers pipeline class name."""
    name = adapter.image_pipeline_class_name if image else adapter.pipeline_class_name
    if name is None:
        raise ValueError(f"no image-to-video pipeline is known for {adapter.family} (image_pipeline_class_name)")
    return name


def pipeline_parameters(name: str) -> set[str]:
    """The names the diffusers pipeline class `name` takes (its components and config)."""
    import diffusers

    return set(inspect.signature(getattr(diffusers, name).__init__).parameters)


def assemble_pipeline(
    adapter,
    name: str,
    transformer,
    scheduler,
    components: Mapping[str, Any],
    *,
    guidance_scale: float,
    text_encoders: bool = True,
    family_config: bool = True,
    guider=None,
):
    """The pipeline `name` of `adapter`'s family from `transformer`, `scheduler` and `components` (VAEs, encoders),
    its progress bar off. `text_encoders=False`: the text components it takes are None (prompts come as
    embeddings); `family_config`: the family's pipeline config (adapter.pipeline_config) is set; a pipeline that
    takes a guider (HunyuanVideo-1.5) gets `guider`, else a classifier-free one at `guidance_scale`."""
    import diffusers

    takes = pipeline_parameters(name)
    parts = dict(components)
    if not text_encoders:
        parts.update({k: None for k in TEXT_COMPONENTS if k in takes})
    if family_config:
        parts.update(adapter.pipeline_config)
    parts.update(adapter.pipeline_components(guidance_scale))
    if "guider" in takes:  # guidance is a component; radial.generation sets its scale per clip
        parts["guider"] = (
            guider or parts.get("guider") or diffusers.ClassifierFreeGuidance(guidance_scale=guidance_scale)
        )
    pipe = adapter.build_pipeline(name, transformer, scheduler, parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe
