"""Attention backends, one file each; each registers itself in `radial.kernels.registry`, which `radial.attention`
dispatches through. Importing this package registers them all (in this order: `auto` tries fa4, triton, reference)."""

from radial.kernels import fa4, triton, flex, flashinfer, reference, dense  # noqa: F401, I001 - the order is the registry's
