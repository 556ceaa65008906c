"""Image-to-video training under Ulysses sequence parallelism (parallel=sp2, torchrun, gloo on CPU): the per-step
losses and the final LoRA equal the one-process run of the same config, from shards that data.prepare --i2v wrote.

What sp=2 does to each family's image conditioning (radial.parallel splits the video tokens only):
- Wan2.1 I2V: the mask + first-frame latent channels are concatenated before the patch embedding, so they are split
  with the video tokens; the CLIP image states join the cross-attention context, which is whole on every rank.
- Wan2.2 TI2V-5B: the clean first frame is mixed into the latents before the patch embedding; the per-token
  timesteps (0 on that frame) are split like the video tokens (diffusers' plan for the class), and the loss mask
  applies to the gathered full prediction.
- HunyuanVideo-1.5 I2V: the 33 conditioning channels are split with the video; the SigLIP image tokens lead the
  text part of the joint sequence ([image, ByT5, Qwen]), which is replicated on every rank like the text.
"""

from __future__ import annotations

import pytest

from data.synthetic import make_synthetic_videos
from tests.test_hunyuan15 import _run_overrides as hunyuan15_overrides
from tests.test_hunyuan15 import datasets as hunyuan15_datasets  # noqa: F401 (fixture)
from tests.test_i2v import datasets as wan_datasets  # noqa: F401 (fixture)
from tests.test_i2v import prepare_tiny
from tests.test_parallel_trainer import check_sp2_matches_one_process
from tests.trainer_helpers import prepared_overrides

pytestmark = pytest.mark.slow

STEPS = 2


@pytest.fixture(scope="module")
def ti2v_data(tmp_path_factory):
    """Two synthetic videos prepared for Wan2.2 TI2V-5B image-to-video (clean first latent frame and its mask)."""
    root = tmp_path_factory.mktemp("ti2v_data")
    make_synthetic_videos(root / "videos", num=2, frames=17, fps=16, sizes=((64, 64),), seed=0)
    return prepare_tiny(root / "videos", root / "lat", True, "wan22_ti2v")


def test_wan21_i2v_sp2_matches_one_process(tmp_path, wan_datasets):  # noqa: F811
    """80 video tokens split in two; 17 CLIP states + 512 text tokens of cross-attention context on both ranks."""
    i2v = wan_datasets[0]
    check_sp2_matches_one_process(
        tmp_path, lambda out, *extra: [*prepared_overrides(out, i2v, steps=STEPS), "model.variant=i2v", *extra]
    )


def test_wan22_ti2v_sp2_matches_one_process(tmp_path, ti2v_data):
    """20 video tokens split in two, with their per-token timesteps (0 on the 4 tokens of the clean first frame)."""
    check_sp2_matches_one_process(
        tmp_path,
        lambda out, *extra: [*prepared_overrides(out, ti2v_data, steps=STEPS), "model.family=wan22_ti2v", *extra],
    )


def test_hunyuan15_i2v_sp2_matches_one_process(tmp_path, hunyuan15_datasets):  # noqa: F811
    """80 video tokens split in two; 16 valid SigLIP tokens, the ByT5 glyph and the Qwen tokens whole on both ranks
    (with LoRA on the text stream's projections too)."""
    check_sp2_matches_one_process(
        tmp_path, lambda out, *extra: hunyuan15_overrides(hunyuan15_datasets, "i2v", out, "lora.text=true", *extra)
    )
