"""Ulysses sequence parallelism for radial attention: the tokens of one sample split over the ranks of a group.

    sp = radial.parallel.init_sequence_parallel(2, device)   # after torch.distributed is initialised
    handle = radial.inject(transformer, ...)
    sp_handle = radial.parallel.enable(handle, sp)            # every rank of a group runs the same full sample
    ...
    sp_handle.remove()

A forward on the P ranks of a group (each holds the same full sample):

1. radial.inject's forward pre-hook records the latent grid of the full latents, so every plan is built for the
   full sequence (the key padding mask is also gathered to full length).
2. diffusers' context-parallel hooks, driven by a context-parallel plan (`_cp_plan` format; the adapter's
   `context_parallel_plan`: the class's own for Wan, ours for HunyuanVideo 1.0/1.5 and Mochi), split the sequence:
   the video tokens (Wan and Mochi: the hidden states entering the first block; HunyuanVideo: the patch embedding's
   output) are cut into P equal contiguous chunks (rank r holds tokens [r*n/P, (r+1)*n/P)), the rotary tables are cut the same way (every
   token keeps its global position), per-token timesteps too (Wan2.2 TI2V), and the output of `proj_out` is
   all-gathered, so every rank gets the full prediction.
3. Each radial attention call: one all-to-all turns q, k, v [B, S/P, H, D] (split over the sequence) into
   [B, S, H/P, D] (split over heads); the local heads attend over the full sequence with the full-sequence plan
   (the radial mask is the same for every head); a second all-to-all turns the output back. Joint attention
   (text tokens in the same call, after the video tokens) comes in two layouts, the adapter's `sp_text`:
   - "split": each rank's chunk is its video share then its text share, and the exchange re-orders the gathered
     sequence to all video tokens, then all text tokens, as the plan expects;
   - "replicated" (HunyuanVideo 1.0 and 1.5, Mochi): every rank holds the whole text stream (HunyuanVideo's
     double-stream `encoder_hidden_states` and the text part of its single-stream blocks; the others' text stream)
     and only the video is split. Each rank appends its own heads of the text q, k, v (a slice, no communication)
     after the gathered video; the text output of its heads rides along in the return all-to-all to every rank, so
     each gets the whole text output for all heads. Backward, the
     copies' gradients are summed back on the rank that owns the heads (a reduce-scatter inside the all-to-all).
   The key padding mask (text padding) is rebuilt for the full sequence.
4. Everything else (norms, MLPs, Wan's cross-attention: local queries over the full, unsplit text) is per token.

Gradients: every rank of a group computes the same loss on the gathered prediction; the gather's backward keeps
each rank's own chunk, and the all-to-alls route gradients back to the rank that owns each token, so the LoRA
gradients of the P ranks of a group sum to the full-sample gradient. A replicated text stream runs the same forward
on every rank and its gradient is spread over them (each rank's holds the part that flows from its heads and its
video tokens), so its LoRA gradients also sum to the full-sample gradient. Data-parallel wrappers (DDP, DeepSpeed, FSDP)
average gradients over all world ranks, not over groups; scaling the loss by `SequenceParallel.loss_scale` (= P)
before backward makes that average the mean over data-parallel groups, the gradient that sp=1 training on the same
samples gives. Ranks of a group must draw the same noise and timesteps (seed them by data-parallel rank).

Why this implementation. The split and gather are diffusers' own context-parallel machinery (the `_cp_plan` each
supported model class declares, applied with `apply_context_parallel`): it knows where the sequence exists in the
model and how to cut the rotary embedding. The attention exchange is ours (the few functions below over
`torch.distributed.all_to_all_single`), because neither existing Ulysses attention fits radial attention:
- diffusers' `TemplatedUlyssesAttention` only runs backends of its attention registry through explicit
  forward/backward op pairs; it cannot wrap `radial_attention`, whose backends carry their own autograd, and it
  gathers joint text tokens interleaved with video ([v0 t0 v1 t1 ...]);
- DeepSpeed's `DistributedAttention` (`_SeqAllToAll`) wraps any callable but communicates through `deepspeed.comm`
  (initialised only under the DeepSpeed engine, not under DDP / FSDP), and also gathers in rank order, so joint
  text would need an extra re-ordering copy of q, k and v.
One all-to-all carries q, k and v together (one launch instead of three).

Supported families: Wan2.1, Wan2.2 A14B and TI2V-5B (diffusers' `_cp_plan`), HunyuanVideo T2V, HunyuanVideo-1.5 and
Mochi-1 (our plans in radial.models.hunyuan and radial.models.mochi; their attention builds the key mask from the
local video count and the whole text, which is the local layout of the replicated-text exchange). A class without a
plan is refused clearly by `enable`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from radial.errors import ConfigError

SP_KEY = "parallel.sp_degree"


@dataclass
class SequenceParallel:
    """One rank's view of its sequence-parallel group (consecutive global ranks form a group)."""

    degree: int  # P, ranks per group
    rank: int  # this rank's index in its group
    group: Any  # torch.distributed ProcessGroup of the group
    cp_config: Any  # diffusers ContextParallelConfig (ulysses_degree = P) set up on the group's mesh

    @property
    def loss_scale(self) -> float:
        """Multiply the loss by this before backward when gradients are averaged over all world ranks."""
        return float(self.degree)


def sequence_parallel_groups(world_size: int, degree: int) -> list[list[int]]:
    """The global ranks of each group: consecutive blocks of `degree` (as `data.data_parallel_rank` assumes)."""
    if degree < 1 or world_size % degree:
        raise ConfigError(
            f"{SP_KEY}={degree} must divide the number of processes ({world_size}): launch a multiple of {degree} "
            f"processes (accelerate launch --num_processes N) or set {SP_KEY} to a divisor of {world_size}"
        )
    return [list(range(start, start + degree)) for start in range(0, world_size, degree)]


def init_sequence_parallel(degree: int, device: torch.device | str) -> SequenceParallel | None:
    """Create the sequence-parallel groups of `degree` consecutive ranks (collective: call on every rank).

    None for degree 1. torch.distributed must be initialised (accelerate / torchrun do it).
    """
    if not isinstance(degree, int) or isinstance(degree, bool) or degree < 1:
        raise ValueError(f"{SP_KEY} must be an integer >= 1, got {degree!r}")
    if degree == 1:
        return None
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"{SP_KEY}={degree} needs torch.distributed: launch with `accelerate launch` or `torchrun` "
            f"with a multiple of {degree} processes"
        )
    world = dist.get_world_size()
    sequence_parallel_groups(world, degree)  # validates
    from diffusers.models._modeling_parallel import ContextParallelConfig
    from torch.distributed.device_mesh import init_device_mesh

    device = torch.device(device)
    # diffusers' hooks read a (ring, ulysses) mesh; row-major, so ulysses groups are consecutive ranks.
    mesh = init_device_mesh(device.type, (world // degree, 1, degree), mesh_dim_names=("sp_dp", "ring", "ulysses"))
    cp_config = ContextParallelConfig(ulysses_degree=degree)
    cp_config.setup(dist.get_rank(), world, device, mesh)
    group = mesh["ulysses"].get_group()
    return SequenceParallel(degree, dist.get_rank(group), group, cp_config)


# -- the exchange -----------------------------------------------------------------------------------------------
class _AllToAll(torch.autograd.Function):
    """all_to_all_single over dim 0 (P equal chunks); its own adjoint, so backward is the same exchange."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        x = x.contiguous()
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _AllToAll.apply(grad, ctx.group), None


@torch.compiler.disable
def all_to_all(x: torch.Tensor, group) -> torch.Tensor:
    """Differentiable all-to-all of P equal chunks along dim 0 (never traced by torch.compile: it would inline it)."""
    return _AllToAll.apply(x, group)


def to_global_order(chunks: torch.Tensor, video_local: int) -> torch.Tensor:
    """[P, B, s, ...] chunks (rank p's tokens: video share, then text share) -> [B, P*s, ...] as video, then text."""
    p, b, s = chunks.shape[:3]
    rest = chunks.shape[3:]
    video = chunks[:, :, :video_local].transpose(0, 1).reshape(b, p * video_local, *rest)
    if video_local == s:
        return video
    text = chunks[:, :, video_local:].transpose(0, 1).reshape(b, p * (s - video_local), *rest)
    return torch.cat([video, text], dim=1)


def to_rank_chunks(x: torch.Tensor, video_tokens: int, degree: int) -> torch.Tensor:
    """Inverse of `to_global_order`: [B, S, ...] (video, then text) -> [P, B, S/P, ...] (rank p's share first)."""
    b = x.shape[0]
    rest = x.shape[2:]
    video = x[:, :video_tokens].reshape(b, degree, video_tokens // degree, *rest)
    if video_tokens < x.shape[1]:
        text = x[:, video_tokens:].reshape(b, degree, (x.shape[1] - video_tokens) // degree, *rest)
        video = torch.cat([video, text], dim=2)
    return video.transpose(0, 1)


def sequence_to_heads(
    tensors: tuple[torch.Tensor, ...], video_local: int, sp: SequenceParallel
) -> tuple[torch.Tensor, ...]:
    """[B, S/P, H, D] tensors (this rank's tokens, all heads) -> [B, S, H/P, D] (all tokens, this rank's heads).

    One all-to-all for all of them; rank p gets heads [p*H/P, (p+1)*H/P).
    """
    p = sp.degree
    b, s, h, d = tensors[0].shape
    if h % p:
        raise ConfigError(f"{SP_KEY}={p} must divide the number of attention heads ({h})")
    send = torch.stack([t.reshape(b, s, p, h // p, d).permute(2, 0, 1, 3, 4) for t in tensors], dim=1)
    recv = all_to_all(send, sp.group)  # [P, n, B, s, H/P, D]: chunk p = rank p's tokens, our heads
    return tuple(to_global_order(recv[:, i], video_local) for i in range(len(tensors)))


def heads_to_sequence(out: torch.Tensor, video_tokens: int, sp: SequenceParallel) -> torch.Tensor:
    """[B, S, H/P, D] (all tokens, this rank's heads) -> [B, S/P, H, D] (this rank's tokens, all heads)."""
    p = sp.degree
    chunks = to_rank_chunks(out, video_tokens, p)  # [P, B, s, H/P, D]: chunk p goes to rank p
    recv = all_to_all(chunks, sp.group)  # chunk p = our tokens, heads of rank p
    _, b, s, h, d = recv.shape
    return recv.permute(1, 2, 0, 3, 4).reshape(b, s, p * h, d)


def heads_to_sequence_replicated_text(out: torch.Tensor, video_tokens: int, sp: SequenceParallel) -> torch.Tensor:
    """[B, V + T, H/P, D] (all tokens, this rank's heads) -> [B, V/P + T, H, D] (this rank's video, all the text).

    Every rank is sent the whole text for our heads (the same copy P times, so backward sums the P gradients).
    """
    p = sp.degree
    b, s, h, d = out.shape
    video_local = video_tokens // p
    video = out[:, :video_tokens].reshape(b, p, video_local, h, d).transpose(0, 1)
    text = out[:, video_tokens:].unsqueeze(0).expand(p, -1, -1, -1, -1)
    recv = all_to_all(torch.cat([video, text], dim=2), sp.group)  # chunk p = our video + all text, rank p's heads
    return recv.permute(1, 2, 0, 3, 4).reshape(b, video_local + s - video_tokens, p * h, d)


def gather_key_padding(mask: torch.Tensor, video_local: int, sp: SequenceParallel) -> torch.Tensor:
    """This rank's [B, S/P] key padding mask -> the full [B, S] mask in the gathered order (video, then text)."""
    local = mask.to(torch.uint8).contiguous()
    parts = [torch.empty_like(local) for _ in range(sp.degree)]
    dist.all_gather(parts, local, group=sp.group)
    return to_global_order(torch.stack(parts), video_local).bool()


class UlyssesAttention:
    """Wraps an `InjectionState.attend`: exchange to full sequence / local heads, attend, exchange back.

    `replicated_text`: the tokens after `video_tokens` are the whole text on every rank (not this rank's share).
    """

    def __init__(self, inner: Callable[..., torch.Tensor], sp: SequenceParallel, replicated_text: bool = False):
        self.inner = inner
        self.sp = sp
        self.replicated_text = replicated_text

    def __call__(self, layer_index, query, key, value, *, video_tokens: int, key_padding_mask=None) -> torch.Tensor:
        if self.replicated_text:
            return self._replicated_text(layer_index, query, key, value, video_tokens, key_padding_mask)
        p = self.sp.degree
        q, k, v = sequence_to_heads((query, key, value), video_tokens, self.sp)
        if key_padding_mask is not None:
            key_padding_mask = gather_key_padding(key_padding_mask, video_tokens, self.sp)
        out = self.inner(layer_index, q, k, v, video_tokens=video_tokens * p, key_padding_mask=key_padding_mask)
        return heads_to_sequence(out, video_tokens * p, self.sp)

    def _replicated_text(self, layer_index, query, key, value, video_tokens: int, key_padding_mask) -> torch.Tensor:
        p, vl = self.sp.degree, video_tokens
        qkv = (query, key, value)
        video = sequence_to_heads(tuple(t[:, :vl] for t in qkv), vl, self.sp)  # checks that P divides the heads
        local = query.shape[2] // p
        heads = slice(self.sp.rank * local, (self.sp.rank + 1) * local)
        q, k, v = (torch.cat([t, full[:, vl:, heads]], dim=1) for t, full in zip(video, qkv, strict=True))
        if key_padding_mask is not None:
            gathered = gather_key_padding(key_padding_mask[:, :vl], vl, self.sp)
            key_padding_mask = torch.cat([gathered, key_padding_mask[:, vl:].bool()], dim=1)
        out = self.inner(layer_index, q, k, v, video_tokens=vl * p, key_padding_mask=key_padding_mask)
        return heads_to_sequence_replicated_text(out, vl * p, self.sp)


# -- enabling it on an injected transformer --------------------------------------------------------------------
def context_parallel_plan(transformer: torch.nn.Module, adapter=None) -> dict:
    """The context-parallel plan of the transformer's family adapter (default: detected from the class);
    NotImplementedError naming the key when it has none."""
    if adapter is None:
        from radial.models import detect_adapter

        adapter = detect_adapter(transformer)
    plan = adapter.context_parallel_plan(transformer)
    if not plan:
        raise NotImplementedError(
            f"{SP_KEY} > 1 needs a context-parallel plan for {type(transformer).__name__}; there is one for "
            "WanTransformer3DModel (families wan, wan22, wan22_ti2v: diffusers' own), "
            "HunyuanVideoTransformer3DModel (hunyuan), HunyuanVideo15Transformer3DModel (hunyuan15) and "
            "MochiTransformer3DModel (mochi), not for this class. Train it "
            f"with {SP_KEY}=1 (data parallel, DeepSpeed ZeRO or FSDP shard the rest)"
        )
    return plan


class SequenceParallelHandle:
    """Sequence parallelism on one injected transformer; `remove()` undoes it."""

    def __init__(self, handle, sp: SequenceParallel, plan: dict):
        from diffusers.hooks.context_parallel import apply_context_parallel

        self.handle, self.sp, self.plan = handle, sp, plan
        transformer, state = handle.transformer, handle.state
        self._check = transformer.register_forward_pre_hook(self._check_tokens, with_kwargs=True)
        apply_context_parallel(transformer, sp.cp_config, plan)
        self._attend = UlyssesAttention(state.attend, sp, replicated_text=handle.adapter.sp_text == "replicated")
        state.attend = self._attend  # instance attribute: the processors call state.attend
        self.active = True

    def _check_tokens(self, module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if isinstance(hidden, torch.Tensor) and hidden.dim() == 5:
            grid = self.handle.adapter.latent_grid(module, hidden)
            if grid.video_tokens % self.sp.degree:
                raise ValueError(
                    f"sequence parallelism splits the {grid.video_tokens} video tokens of the latent grid "
                    f"{grid.frames}x{grid.height}x{grid.width} into {SP_KEY}={self.sp.degree} equal parts; "
                    "choose a frame count or resolution whose token count it divides"
                )
        return None

    def remove(self) -> None:
        if not self.active:
            return
        from diffusers.hooks.context_parallel import remove_context_parallel

        remove_context_parallel(self.handle.transformer, self.plan)
        self._check.remove()
        state = self.handle.state
        if state.__dict__.get("attend") is self._attend:
            del state.attend
        self.active = False


def enable(handle, sp: SequenceParallel, plan: dict | None = None) -> SequenceParallelHandle:
    """Ulysses sequence parallelism on the transformer of a `radial.inject` handle (before any DDP/FSDP wrap).

    `plan` defaults to the adapter's context-parallel plan. Checks that the group size divides the heads.
    """
    transformer = handle.transformer
    plan = context_parallel_plan(transformer, handle.adapter) if plan is None else plan
    for attn in handle.adapter.attention_layers(transformer):
        if attn.heads % sp.degree:
            raise ValueError(
                f"{SP_KEY}={sp.degree} must divide the number of attention heads ({attn.heads}) of "
                f"{type(transformer).__name__}: each rank of a group attends over whole heads"
            )
    return SequenceParallelHandle(handle, sp, plan)
