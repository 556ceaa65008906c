"""Attention backends, one file each; `radial.attention` dispatches between them."""
