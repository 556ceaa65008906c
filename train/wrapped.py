"""The transformer under Accelerate's wrappers: unwrapped for its config and state dict, and its LoRA parameters
made whole on every rank where ZeRO-3 or FSDP shards them (saving, loading, exporting)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from train.setup import zero3


def unwrap(acc: Accelerator, model: torch.nn.Module, deepspeed: bool) -> torch.nn.Module:
    """The transformer inside `model` (DDP, FSDP, a whole-model compile, DeepSpeed's engine)."""
    if deepspeed:
        return acc.unwrap_model(model)
    # Accelerate's unwrap imports DeepSpeed whenever it is installed, and that import logs an accelerator
    # warning on every run; without DeepSpeed the wrappers are torch's (DDP, FSDP1, a whole-model compile).
    from torch._dynamo.eval_frame import OptimizedModule
    from torch.distributed.fsdp import FullyShardedDataParallel

    while isinstance(model, (torch.nn.parallel.DistributedDataParallel, FullyShardedDataParallel, OptimizedModule)):
        model = model._orig_mod if isinstance(model, OptimizedModule) else model.module
    return model


def sharded_lora(acc: Accelerator) -> bool:
    """Whether the LoRA parameters are sharded across ranks (DeepSpeed ZeRO-3, FSDP)."""
    return zero3(acc) or acc.distributed_type == DistributedType.FSDP


@contextlib.contextmanager
def full_lora(acc: Accelerator, transformer: torch.nn.Module, modifier_rank: int | None = None) -> Iterator[None]:
    """The LoRA parameters of `transformer` (unwrapped) whole on every rank for the block (collective: every rank
    enters); a no-op unless they are sharded. ZeRO-3: DeepSpeed's GatheredParameters (`modifier_rank`: the rank whose
    in-place changes are kept). FSDP2: the sharded (DTensor) LoRA parameters are swapped for whole copies and put back
    afterwards; changes made inside are not kept."""
    if zero3(acc):
        import deepspeed

        params = [p for p in transformer.parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
            yield
        return
    if acc.distributed_type != DistributedType.FSDP:
        yield
        return
    swapped = []
    for module in transformer.modules():
        for name, param in list(module._parameters.items()):
            if param is not None and param.requires_grad and hasattr(param, "full_tensor"):
                swapped.append((module, name, param))
                module._parameters[name] = torch.nn.Parameter(param.full_tensor(), requires_grad=False)
    try:
        yield
    finally:
        for module, name, param in swapped:
            module._parameters[name] = param
