"""Deprecated location of the latent geometry (kept for one release): it lives in `radial.families` now."""

from radial.families import GEOMETRY, LatentGeometry, geometry

__all__ = ["GEOMETRY", "LatentGeometry", "geometry"]
