"""The radial block mask equals the official generator's output, and a token-level construction, bit for bit."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from radial import radial_block_mask

DATA = Path(__file__).parent / "data"
CONFIGS = json.loads((DATA / "official_radial_masks.json").read_text())


def _key(c: dict) -> str:
    return f"{c['model']}_f{c['frames']}_t{c['tpf']}_b{c['block']}_d{c['decay']}_x{c['text']}"


@pytest.mark.parametrize("config", CONFIGS, ids=_key)
def test_official_masks(config):
    ref = np.load(DATA / "official_radial_masks.npz")
    key = _key(config)
    nb = tuple(ref[key + "__shape"])
    expected = np.unpackbits(ref[key])[: nb[0] * nb[1]].reshape(nb).astype(bool)
    mask = radial_block_mask(
        config["frames"],
        config["tpf"],
        block_size=config["block"],
        decay_factor=config["decay"],
        model=config["model"],
        text_tokens=config["text"],
    )
    assert mask.dtype == torch.bool and tuple(mask.shape) == nb
    assert np.array_equal(mask.numpy(), expected), f"{(mask.numpy() != expected).sum()} blocks differ"


def token_level_mask(frames, tpf, block, decay, sink, decay_adjacent, text):
    """Our own brute force: the token mask of every frame pair, reduced to blocks with torch's float32 rules."""
    video = frames * tpf
    nb = -(-(video + text) // block)
    out = torch.zeros(nb, nb, dtype=torch.bool)
    k = -(-tpf // block)
    idx = torch.arange(tpf)
    offset = (idx[None, :] - idx[:, None]).abs()
    for i in range(frames):
        for j in range(frames):
            d = abs(i - j)
            if sink and j == 0:
                local = torch.ones(tpf, tpf, dtype=torch.bool)
            else:
                band = d.bit_length()
                if d <= 1 and not (decay_adjacent and d == 1):
                    width = tpf
                else:
                    width = 2 ** tpf.bit_length() / 2**band * decay
                    width = width if width >= block else block
                local = offset <= width  # int64 vs Python float: compared in float32, as the official code does
                every = 2 ** tpf.bit_length() / 2**band
                if every < 128 and d % int(128 / every) != 0:
                    local = torch.zeros_like(local)
            r0, c0 = (i * tpf) % block, (j * tpf) % block
            padded = torch.zeros(r0 + k * block, c0 + k * block, dtype=torch.bool)
            padded[r0 : r0 + tpf, c0 : c0 + tpf] = local
            tiles = padded[: k * block, : k * block].reshape(k, block, k, block)
            col_density = tiles.sum(dim=1) / block  # [row block, col block, column]
            nonzero = (col_density > 0).sum(-1)
            high = (col_density > 1 / 3).sum(-1)
            blocks = high / (nonzero + 1e-9) > 0.6
            rb, cb = (i * tpf) // block, (j * tpf) // block
            out[rb : rb + k, cb : cb + k] |= blocks
    border = video // block
    out[border:] = True
    out[:, border:] = True
    return out


def _random_configs(n: int, seed: int = 0):
    rng = random.Random(seed)
    for _ in range(n):
        block = rng.choice([16, 32, 64, 128])
        yield dict(
            frames=rng.randint(1, 11),
            tpf=rng.choice([rng.randint(1, 64), rng.randint(65, 330), 3 * block + rng.randint(-3, 3)]),
            block=block,
            decay=rng.choice([1.0, 0.5, 0.25, 0.7, 1.3]),
            sink=rng.random() < 0.5,
            decay_adjacent=rng.random() < 0.3,
            text=rng.choice([0, 0, rng.randint(1, 300)]),
        )


# Layouts that told apart mutants the random ones above did not (tests/MUTATION.md, mask group):
TARGETED = [
    # the last row block's rows reach span - 1 (a_hi clamped one row short changes a block)
    dict(frames=27, tpf=13, block=16, decay=2.0, sink=True, decay_adjacent=False, text=0),
]


@pytest.mark.parametrize(
    "config", list(_random_configs(120)) + TARGETED, ids=lambda c: "-".join(f"{v}" for v in c.values())
)
def test_token_level_brute_force(config):
    c = config
    expected = token_level_mask(
        c["frames"], c["tpf"], c["block"], c["decay"], c["sink"], c["decay_adjacent"], c["text"]
    )
    mask = radial_block_mask(
        c["frames"],
        c["tpf"],
        block_size=c["block"],
        decay_factor=c["decay"],
        sink=c["sink"],
        decay_adjacent=c["decay_adjacent"],
        text_tokens=c["text"],
    )
    assert torch.equal(mask, expected), f"{(mask != expected).sum()} blocks differ"
