"""Per-forward layout capture and the one attention call that every family's processors make.

A diffusers attention processor sees [B, S, H, D] tensors, not the latent grid that decides the radial mask. The
grid is known in the transformer's forward, so `InjectionState` captures it there (a forward pre-hook) as a
`ForwardRecord` and the processors read it at call time:

- one state per injected transformer, never a class attribute: two injected models (Wan2.2's two experts) keep
  their own layouts, and every forward call re-derives the layout, so nothing is stale between resolutions;
- gradient checkpointing: diffusers recomputes a block in backward, after the forward that ran it has returned.
  While a forward runs, its record is bound to every block call made through the transformer's
  `_gradient_checkpointing_func` (what `enable_gradient_checkpointing()` installs), and the recomputation re-enters
  the same binding, so it sees its own forward's layout even when other forwards ran in between. A checkpoint
  wrapper placed around the blocks from outside (FSDP's `apply_activation_checkpointing`, DeepSpeed) bypasses that
  function; its recomputation falls back to the newest record with the same number of video tokens.
"""

from __future__ import annotations

import contextlib
import functools
from collections import deque
from dataclasses import dataclass

import torch

from radial.attention import radial_attention
from radial.attention_settings import AttentionSettings
from radial.fused import fused_linears
from radial.plan import RadialPlan, plan_for


@dataclass(frozen=True)
class LatentGrid:
    """The latent video after patchify: frames x height x width tokens (video tokens, in this order)."""

    frames: int
    height: int
    width: int

    @property
    def tokens_per_frame(self) -> int:
        return self.height * self.width

    @property
    def video_tokens(self) -> int:
        return self.frames * self.tokens_per_frame


@dataclass(frozen=True, eq=False)
class ForwardRecord:
    """What one forward call of an injected transformer needs to know in its attention calls."""

    grid: LatentGrid
    dense: bool  # this forward runs every layer dense (a dense sampling step)
    step: int | None


class InjectionState:
    """Layouts of the in-flight forward calls of one injected transformer, and the attention call itself."""

    HISTORY = 8

    def __init__(self, config: AttentionSettings, mask_model: str, fuse_qkv: bool = False):
        self.config = config
        self.mask_model = mask_model
        self.mask_options = config.mask_options(mask_model)  # validated once; keys the plans
        self.fuse_qkv = fuse_qkv  # q, k, v projections (and their LoRA) as one matmul each (radial.fused)
        self.step: int | None = None
        self.last_plan: RadialPlan | None = None
        self.last_record: ForwardRecord | None = None
        self._stack: list[ForwardRecord] = []
        self._bound: ForwardRecord | None = None
        self._history: deque[ForwardRecord] = deque(maxlen=self.HISTORY)

    # -- forward boundaries -------------------------------------------------------------------------------------
    def begin(self, grid: LatentGrid) -> ForwardRecord:
        cfg = self.config
        if cfg.dense_timesteps and self.step is None:
            raise RuntimeError(
                f"dense_timesteps={cfg.dense_timesteps} needs the sampling step: call handle.set_step(i) before each "
                "denoising step (or pass callback_on_step_end=handle.step_callback after handle.set_step(0)), "
                "or inject with dense_timesteps=0"
            )
        dense = self.step is not None and self.step < cfg.dense_timesteps
        record = ForwardRecord(grid, dense, self.step)
        self._stack.append(record)
        if torch.is_grad_enabled():
            self._history.append(record)
        return record

    def end(self, record: ForwardRecord) -> None:
        if self._stack and self._stack[-1] is record:
            self._stack.pop()
        elif record in self._stack:  # an exception unwound an inner call first
            self._stack.remove(record)
        self.last_record = record

    @contextlib.contextmanager
    def bound(self, record: ForwardRecord):
        previous, self._bound = self._bound, record
        try:
            yield
        finally:
            self._bound = previous

    def bind_checkpoint_function(self, checkpoint_fn, record: ForwardRecord):
        """Wrap a `_gradient_checkpointing_func` so that each block runs, and re-runs in backward, under `record`."""
        return functools.partial(_checkpoint_bound, checkpoint_fn, self, record)

    # -- attention ----------------------------------------------------------------------------------------------
    def current_grid(self) -> LatentGrid:
        """The latent grid of the forward call in flight (for processors that must split rows before attending)."""
        # A checkpoint wrapper from outside recomputes after the forward returned: the newest recorded one.
        record = self._bound or (self._stack[-1] if self._stack else None) or (self._history or [None])[-1]
        if record is None:
            raise RuntimeError("a radial attention processor ran outside a forward call of its injected transformer")
        return record.grid

    def current(self, video_tokens: int) -> ForwardRecord:
        if self._bound is not None:
            record = self._bound
        elif self._stack:
            record = self._stack[-1]
        else:
            # Recomputation by a checkpoint wrapper that bypasses the transformer's checkpointing function.
            record = next((r for r in reversed(self._history) if r.grid.video_tokens == video_tokens), None)
            if record is None:
                raise RuntimeError(
                    "a radial attention processor ran outside a forward call of its injected transformer "
                    f"({video_tokens} video tokens, no recent forward with that many)"
                )
        if record.grid.video_tokens != video_tokens:
            g = record.grid
            raise RuntimeError(
                f"layout mismatch: the attention call has {video_tokens} video tokens, the forward's latent grid "
                f"{g.frames}x{g.height}x{g.width} gives {g.video_tokens}"
            )
        return record

    def attend(
        self,
        layer_index: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        *,
        video_tokens: int,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, S, H, D] attention, S = video tokens then text; radial unless the layer or the step is dense."""
        record = self.current(video_tokens)
        cfg = self.config
        plan = plan_for(
            record.grid.frames,
            record.grid.tokens_per_frame,
            self.mask_options,
            text_tokens=query.shape[1] - video_tokens,
            device=query.device,
        )
        dense = record.dense or layer_index < cfg.dense_layers or cfg.backend == "dense"
        if not dense:  # the mask that ran: a dense run reports none (its metrics carry no block density)
            self.last_plan = plan
        backend = "dense" if dense else cfg.backend
        return radial_attention(
            query, key, value, plan, backend=backend, key_padding_mask=key_padding_mask, decay=cfg.frame_decay
        )


class _BoundBlock:
    """A block that runs under a forward's record; passed to checkpoint functions in place of the block."""

    __slots__ = ("block", "record", "state")

    def __init__(self, block, state: InjectionState, record: ForwardRecord):
        self.block, self.state, self.record = block, state, record

    def __call__(self, *args, **kwargs):
        with self.state.bound(self.record):
            return self.block(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.block, name)


def _checkpoint_bound(checkpoint_fn, state: InjectionState, record: ForwardRecord, block, *args, **kwargs):
    return checkpoint_fn(_BoundBlock(block, state, record), *args, **kwargs)


class RadialProcessor:
    """Base of the family processors: holds the state, the layer index and the stock processor it replaced."""

    # Attributes diffusers sets or reads on processors (set_attention_backend, context parallel); unused here.
    _attention_backend = None
    _parallel_config = None

    def __init__(self, state: InjectionState, layer_index: int, stock):
        self.state = state
        self.layer_index = layer_index
        self.stock = stock

    # Outside any compiled graph (radial.compile): the layout lookup, the plan cache and the custom kernels run
    # eagerly, so the compiler neither guards on the per-forward record nor traces the mask code.
    @torch.compiler.disable
    def attend(self, query, key, value, *, video_tokens: int, key_padding_mask=None) -> torch.Tensor:
        return self.state.attend(
            self.layer_index, query, key, value, video_tokens=video_tokens, key_padding_mask=key_padding_mask
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer={self.layer_index}, backend={self.state.config.backend!r})"


def project_qkv(
    attn, states: torch.Tensor, added: bool = False, fuse: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query, key, value [B, S, heads, head_dim] of a diffusers Attention, QK-normed where the block has the norms.

    `added` takes the text-stream projections of joint-attention blocks (add_q_proj, ..., norm_added_q / _k);
    `fuse` computes the three projections as one (`radial.fused.fused_linears`).
    """
    if added:
        projections = (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
        norm_q, norm_k = attn.norm_added_q, attn.norm_added_k
    else:
        projections, norm_q, norm_k = (attn.to_q, attn.to_k, attn.to_v), attn.norm_q, attn.norm_k
    outs = fused_linears(projections, states) if fuse else [proj(states) for proj in projections]
    query, key, value = (out.unflatten(2, (attn.heads, -1)) for out in outs)
    if norm_q is not None:
        query = norm_q(query)
    if norm_k is not None:
        key = norm_k(key)
    return query, key, value
