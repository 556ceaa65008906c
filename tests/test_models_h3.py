"""MiniMax-H3: the injected tiny transformer against the stock one (dense parity), the radial mask over the video
rows of the packed [text | audio | video] sequence, the grid read from the layout, LoRA targets."""

import pytest
import torch
from diffusers.models.transformers.transformer_minimax_h3 import MiniMaxH3AttnProcessor

import radial
from radial.models import LatentGrid, get_adapter
from radial.models.minimax_h3 import packed_layout
from tests.test_mask_parity import token_level_mask

ADAPTER = get_adapter("h3")
BLOCK = 16


@pytest.fixture(scope="module")
def case():
    model = ADAPTER.build_tiny()
    latents = ADAPTER.make_dummy_latents(model, 2, 7, 4, 6)  # 7 latent frames of 2x3 tokens
    cond = ADAPTER.make_dummy_conditions(model, 2, 10, latent_shape=latents.shape, valid_text=[10, 7], seed=1)
    t = torch.tensor([300.0, 800.0])
    with torch.no_grad():
        stock = ADAPTER.predict_joint(model, latents, t, cond)
    return model, latents, cond, t, stock


def test_dense_parity_with_stock(case):
    """attention.backend=dense: the same video and audio velocities as the stock transformer, to fp32 rounding."""
    model, latents, cond, t, (video, extra) = case
    with radial.inject(model, family="h3", backend="dense", block_size=BLOCK) as handle, torch.no_grad():
        ours, ours_extra = ADAPTER.predict_joint(model, latents, t, cond)
    assert handle.last_grid == LatentGrid(7, 2, 3)
    torch.testing.assert_close(ours, video, rtol=0, atol=2e-6)
    torch.testing.assert_close(ours_extra["audio_latents"], extra["audio_latents"], rtol=0, atol=2e-6)
    assert video.abs().mean() > 0.1  # the comparison carries signal


class _MaskedStock:
    """The stock processor with a fixed boolean attention mask over the packed sequence."""

    _attention_backend = None
    _parallel_config = None

    def __init__(self, mask):
        self.mask, self.stock = mask, MiniMaxH3AttnProcessor()

    def __call__(self, attn, hidden_states, rotary_emb=None, attention_mask=None):
        return self.stock(attn, hidden_states, rotary_emb, self.mask)


def _packed_token_mask(block_mask: torch.Tensor, video: int, prefix: int) -> torch.Tensor:
    """The radial-order block mask ([video | prefix]) as a token mask in packed order ([prefix | video])."""
    tokens = block_mask.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[: video + prefix, : video + prefix]
    order = torch.cat([torch.arange(video, video + prefix), torch.arange(video)])  # packed row -> radial row
    return tokens[order][:, order]


def test_radial_mask_over_video_rows(case):
    """The video-video blocks are the official radial mask of the grid (brute force of the official rules), the
    prefix rows dense both ways; the reference backend equals stock attention under that mask in packed order."""
    model, latents, cond, t, _ = case
    one = {k: v[:1] for k, v in cond.items()}
    text = int(one["prompt_attention_mask"].sum())
    audio = 2 * one["audio_latents"].shape[-1]
    with radial.inject(model, family="h3", backend="reference", block_size=BLOCK) as handle, torch.no_grad():
        ours = ADAPTER.predict(model, latents[:1], t[:1], one)
        plan = handle.last_plan
    prefix, video = text + audio, 7 * 6
    assert (plan.num_frames, plan.tokens_per_frame, plan.text_tokens) == (7, 6, prefix)
    official = token_level_mask(7, 6, BLOCK, 1.0, False, False, prefix)
    assert torch.equal(plan.block_mask.cpu(), official)
    assert not plan.block_mask[: video // BLOCK, : video // BLOCK].all()  # the test needs a sparse video part
    stocks = [a.processor for a in ADAPTER.attention_layers(model)]
    mask = _packed_token_mask(plan.block_mask.cpu(), video, prefix)
    try:
        for attn in ADAPTER.attention_layers(model):
            attn.set_processor(_MaskedStock(mask))
        with torch.no_grad():
            expected = ADAPTER.predict(model, latents[:1], t[:1], one)
    finally:
        for attn, stock in zip(ADAPTER.attention_layers(model), stocks, strict=True):
            attn.set_processor(stock)
    torch.testing.assert_close(ours, expected, rtol=0, atol=2e-6)


def test_grid_from_layout_and_errors():
    grid = LatentGrid(5, 3, 4)
    layout = packed_layout(9, grid, 11, (1, 2, 2), "cpu")
    model = ADAPTER.build_tiny()
    assert ADAPTER.forward_grid(model, layout) == grid
    swapped = dict(layout, text_indices=torch.tensor([layout["position_ids"].shape[0] - 1]))
    with pytest.raises(ValueError, match="target video rows last"):
        ADAPTER.forward_grid(model, swapped)


def test_lora_targets_are_the_block_attention():
    model = ADAPTER.build_tiny()
    names = ADAPTER.lora_target_names(model)
    assert len(names) == 4 * model.config.num_layers
    assert all(n.startswith("transformer_blocks.") and ".attn." in n for n in names)  # not the token refiner


def test_comfy_keys_are_comfyui_h3_module_names():
    """ComfyUI's MiniMaxH3Model (comfy/ldm/minimax/model.py): blocks.N.attn.qkv_proj (q, k, v fused) and out_proj."""
    from radial.lora import attach_lora, lora_state_dict

    model = ADAPTER.build_tiny()
    attach_lora(model, rank=4, alpha=4, target_modules=ADAPTER.lora_target_modules())
    comfy = ADAPTER.comfy_lora_state_dict(lora_state_dict(model), model, scale=1.0)
    modules = {k.rsplit(".lora_", 1)[0] for k in comfy}
    blocks = range(model.config.num_layers)
    expected = {f"diffusion_model.blocks.{i}.attn.{m}" for i in blocks for m in ("qkv_proj", "out_proj")}
    assert modules == expected
    inner = model.config.num_attention_heads * model.config.attention_head_dim
    assert comfy["diffusion_model.blocks.0.attn.qkv_proj.lora_B.weight"].shape[0] == 3 * inner


def test_sequence_parallelism_is_refused_naming_the_key():
    from radial.parallel import context_parallel_plan

    with pytest.raises(NotImplementedError, match="parallel.sp_degree"):
        context_parallel_plan(ADAPTER.build_tiny())
