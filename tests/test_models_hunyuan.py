"""HunyuanVideo specifics: joint attention in both block kinds, the key padding mask, the image-conditioned
(token-replace) blocks, the text refiner left stock."""

from __future__ import annotations

import pytest
import torch

import radial
from radial.mask import radial_block_mask
from radial.models import get_adapter
from radial.models.context import RadialProcessor
from radial.models.hunyuan import key_padding_from_attention_mask
from tests.test_models_parity import BLOCK, oracle_sdpa


def test_key_padding_mask_shapes():
    mask = torch.tensor([[True, True, False]])
    assert torch.equal(key_padding_from_attention_mask(mask[:, None, None], 1, 3), mask)
    assert torch.equal(key_padding_from_attention_mask(mask, 1, 3), mask)
    assert key_padding_from_attention_mask(None, 1, 3) is None
    with pytest.raises(ValueError, match="key padding"):
        key_padding_from_attention_mask(torch.ones(1, 1, 3, 3, dtype=torch.bool), 1, 3)
    with pytest.raises(ValueError, match="boolean"):
        key_padding_from_attention_mask(torch.ones(1, 3), 1, 3)


@pytest.mark.parametrize("image_condition_type", [None, "token_replace"])
def test_double_and_single_stream_blocks_with_padded_text(image_condition_type):
    hunyuan = get_adapter("hunyuan")
    model = hunyuan.build_tiny(num_layers=2, num_single_layers=2, image_condition_type=image_condition_type)
    refiner = model.context_embedder.token_refiner.refiner_blocks[0].attn
    latents = hunyuan.make_dummy_latents(model, 2, 8, 8, 8)
    cond = hunyuan.make_dummy_conditions(model, 2, 8, valid_text=[2, 7])
    cond["guidance"] = 6.0
    with torch.no_grad():
        stock = hunyuan.predict(model, latents, 600.0, cond)
        with radial.inject(model, backend="dense", block_size=BLOCK):
            dense = hunyuan.predict(model, latents, 600.0, cond)
        with radial.inject(model, backend="reference", block_size=BLOCK) as handle:
            assert not isinstance(refiner.processor, RadialProcessor)
            ours = hunyuan.predict(model, latents, 600.0, cond)
        seq = 128 + 8
        mask = radial_block_mask(8, 16, block_size=BLOCK, model="hunyuan", text_tokens=8)
        mask = mask.repeat_interleave(BLOCK, 0)[:seq].repeat_interleave(BLOCK, 1)[:, :seq]
        with oracle_sdpa(mask, 128, 8) as hits:
            expected = hunyuan.predict(model, latents, 600.0, cond)
    assert len(hits) == 4  # 2 double + 2 single stream blocks
    assert (dense - stock).abs().max() < 1e-5
    assert (ours - expected).abs().max() < 1e-5
    assert handle.last_plan.text_tokens == 8 and not handle.last_plan.options.sink
