"""Nothing outside a family's own layer (its spec, its adapter file, its encoder file) branches on its name, and what
used to be such branches now reads the layer: pipeline detection, LoRA-family checks, dataset expectations."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from data.dataset import Expect
from radial.families import FAMILIES
from radial.generation.loras import _same_family
from radial.generation.pipeline import family_of_parts
from radial.models import get_adapter

ROOT = Path(__file__).resolve().parents[1]
#: the family layer: the specs, the adapter files and the encoder files
OWN = {"radial/families.py"} | {
    f"{d}/{s.module}.py" for s in FAMILIES.values() for d in ("radial/models", "data/encoders")
}
NAMES = "|".join(sorted(FAMILIES, key=len, reverse=True))
QUOTED = '"(?:' + NAMES + ")"  # a family name in quotes
BRANCH = re.compile(
    "|".join(
        (r"[=!]=\s*" + QUOTED + '"', QUOTED + r'"\s*[=!]=', r"in \(\s*" + QUOTED + '"', r"startswith\(\s*" + QUOTED)
    )
)


def test_no_code_outside_the_family_layer_branches_on_a_family_name():
    found = []
    for package in ("radial", "data", "train"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in OWN:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if BRANCH.search(line.split("#")[0]):
                    found.append(f"{rel}:{number}: {line.strip()}")
    assert not found, "family-name branches outside the family layer:\n" + "\n".join(found)


def test_the_pattern_finds_such_branches():
    assert BRANCH.search('if family == "hunyuan":') and BRANCH.search('family.startswith("wan")')
    assert BRANCH.search('model in ("wan", "wan22")') and not BRANCH.search('family: str = "wan"')


@pytest.mark.parametrize(
    "pipeline,second_expert,channels,family",
    [
        ("WanPipeline", False, 16, "wan"),
        ("WanPipeline", True, 16, "wan22"),  # Wan2.2 A14B: two experts
        ("WanPipeline", False, 48, "wan22_ti2v"),  # Wan2.2 TI2V-5B: its 48-channel VAE
        ("WanImageToVideoPipeline", True, 16, "wan22"),
        ("WanImageToVideoPipeline", False, 48, "wan22_ti2v"),
        ("WanImageToVideoPipeline", False, 16, "wan"),
        ("HunyuanVideoPipeline", False, 16, "hunyuan"),
        ("HunyuanVideo15ImageToVideoPipeline", False, 32, "hunyuan15"),
        ("MochiPipeline", False, 12, "mochi"),
        ("MochiPipeline", True, 7, "mochi"),  # no Mochi family has experts or 7 channels: the class's family
        ("MiniMaxH3ModularPipeline", False, 24, "h3"),
    ],
)
def test_pipeline_family_from_the_specs_and_adapters(pipeline, second_expert, channels, family):
    assert family_of_parts(pipeline, second_expert=second_expert, channels=channels) == family


def test_lora_families_fit_within_one_adapter_file():
    assert _same_family("wan22", "wan") and _same_family("wan22_ti2v", "wan22") and _same_family("mochi", "mochi")
    assert not _same_family("hunyuan", "hunyuan15") and not _same_family("wan", "mochi")
    assert not _same_family("minimax", "wan")  # a family this version does not know


def test_dataset_expectations_come_from_the_adapters():
    wan, i2v = get_adapter("wan").tiny_config, get_adapter("wan").tiny_config_of("i2v")
    assert Expect.from_transformer_config("wan", wan).image_channels == 0
    assert Expect.from_transformer_config("wan22", i2v).image_channels == i2v["in_channels"] - 16
    assert Expect.from_transformer_config("wan22_ti2v", get_adapter("wan22_ti2v").tiny_config).image_channels is None
    h15 = get_adapter("hunyuan15")
    t2v, h_i2v = Expect.from_transformer_config("hunyuan15", h15.tiny_config), h15.tiny_config_of("i2v")
    assert (t2v.image_channels, t2v.image_dim, t2v.text_dim_2) == (0, 0, h15.tiny_config["text_embed_2_dim"])
    assert Expect.from_transformer_config("hunyuan15", h_i2v).image_dim == h_i2v["image_embed_dim"]
    assert get_adapter("wan").fixed_text_len(i2v) == 512 and get_adapter("wan").fixed_text_len(wan) is None
    h3 = get_adapter("h3").tiny_config
    assert Expect.from_transformer_config("h3", h3).audio_channels == h3["audio_in_channels"]  # its sound track
    assert Expect.from_transformer_config("wan", wan).audio_channels is None
