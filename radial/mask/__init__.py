"""The radial block mask: official parity, options beyond it, statistics."""

from radial.mask.build import radial_block_mask, radial_block_mask_numpy
from radial.mask.options import MODEL_SINK, MaskOptions
from radial.mask.stats import MaskStats, mask_stats

__all__ = ["MODEL_SINK", "MaskOptions", "MaskStats", "mask_stats", "radial_block_mask", "radial_block_mask_numpy"]
