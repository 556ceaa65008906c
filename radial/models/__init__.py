"""Model adapters, one file per family, behind the protocol in `radial.models.base`.

The family modules import diffusers; they load (and register) on the first registry lookup, so `import radial`
stays light.
"""

from radial.models.base import (
    ModelAdapter,
    ModelPathError,
    available_adapters,
    detect_adapter,
    get_adapter,
    register,
)
from radial.models.context import LatentGrid

__all__ = [
    "LatentGrid",
    "ModelAdapter",
    "ModelPathError",
    "available_adapters",
    "detect_adapter",
    "get_adapter",
    "register",
]
