"""Radial Attention: O(n log n) static block-sparse attention for video diffusion transformers, trainable."""

from radial.attention import radial_attention
from radial.attention_settings import AttentionSettings
from radial.inject import RadialHandle, inject, inject_pipeline
from radial.mask import MaskOptions, mask_stats, radial_block_mask
from radial.plan import RadialPlan, dense_plan, make_plan, plan_from_mask

__all__ = [
    "AttentionSettings",
    "MaskOptions",
    "RadialHandle",
    "RadialPlan",
    "dense_plan",
    "inject",
    "inject_pipeline",
    "make_plan",
    "mask_stats",
    "plan_from_mask",
    "radial_attention",
    "radial_block_mask",
]
__version__ = "0.1.0"
