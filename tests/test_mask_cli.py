"""`python -m radial.mask`: pixel sizes to latent layout, printed numbers, written files, clear errors."""

import subprocess
import sys

import numpy as np
import pytest

from radial import radial_block_mask
from radial.mask.__main__ import main


def test_cli_from_pixels_writes_png_and_npy(tmp_path, capsys):
    assert (
        main(
            [
                "--model",
                "wan",
                "--height",
                "480",
                "--width",
                "832",
                "--frames",
                "81",
                "--out",
                str(tmp_path / "m"),
                "--npy",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "latent frames    21" in out and "tokens/frame     1560" in out and "ideal speed-up" in out
    assert (tmp_path / "m.png").stat().st_size > 1000
    assert np.array_equal(np.load(tmp_path / "m.npy"), radial_block_mask(21, 1560).numpy())


def test_cli_latent_layout_and_text(tmp_path, capsys):
    args = ["--model", "hunyuan", "--latent-frames", "9", "--tokens-per-frame", "900", "--text-tokens", "77"]
    assert main([*args, "--out", str(tmp_path / "h"), "--no-png"]) == 0
    assert "8177 (8100 video + 77 text)" in capsys.readouterr().out
    assert not (tmp_path / "h.png").exists()


def test_cli_bad_input_is_an_error(capsys):
    for args, words in ((["--frames", "80"], "k*4+1"), (["--model", "mochi", "--height", "479"], "multiples of 16")):
        with pytest.raises(SystemExit) as exit_:
            main([*args, "--no-png"])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith("error: ") and words in err and len(err.splitlines()) == 1


def test_module_entry_point(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "radial.mask",
        "--model",
        "mochi",
        "--frames",
        "31",
        "--out",
        str(tmp_path / "x"),
        "--no-png",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "latent frames    6" in res.stdout and not res.stderr
