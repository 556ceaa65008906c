"""The generator: tiny pipelines of every family, prompt embeddings, LoRAs with scales, radial vs dense, sidecars."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train.generate as rgen
import train.tiny_pipeline as tgen
from radial.errors import LoraFileError
from radial.generation import (
    ClipSpec,
    LoraSpec,
    RadialSettings,
    apply_radial,
    frames_for_length,
    generate,
    load_loras,
    load_prompt_embeds,
    save_prompt_embeds,
)
from radial.generation.loras import check_lora_file
from radial.geometry import geometry
from radial.lora import attach_lora, export_diffusers
from radial.models import get_adapter

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--frames", "17", "--height", "64", "--width", "64", "--steps", "2"]  # 5 latent frames x 16 tokens


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _embeds_file(path, family="wan", n=1, length=10, dim=32, pooled=None, negative=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = {"prompt_embeds": torch.randn(n, length, dim, generator=g)}
    if pooled:
        t["pooled_prompt_embeds"] = torch.randn(n, pooled, generator=g)
    if negative:
        t["negative_prompt_embeds"] = torch.randn(1, length, dim, generator=g)
        if pooled:
            t["negative_pooled_prompt_embeds"] = torch.randn(1, pooled, generator=g)
    prompts = [f"prompt {i}" for i in range(n)]
    return save_prompt_embeds(path, t, prompts=prompts, family=family)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A saved tiny Wan base transformer and two diffusers-format LoRAs with our metadata."""
    import diffusers

    root = tmp_path_factory.mktemp("lora_run")
    adapter = get_adapter("wan")
    base = adapter.build_tiny(seed=0)
    base.save_pretrained(root / "base_transformer")
    loras = []
    for k in range(2):
        model = adapter.build_tiny(seed=0)
        config = attach_lora(model, rank=4, alpha=4, target_modules=adapter.lora_target_modules())
        g = torch.Generator().manual_seed(10 + k)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        info = {
            "format": "radial-lora/1",
            "base_model": {"family": "wan", "source": "tiny"},
            "rank": 4,
            "alpha": 4,
            "radial": {"decay_factor": 1.0, "dense_layers": 1, "block_size": 16, "sink": None},
        }
        loras.append(export_diffusers(model, diffusers.WanPipeline, root / f"lora{k}", config, info))
    return root, loras


# -- settings, lengths, embeddings ----------------------------------------------------------------------------------
def test_lora_spec_parsing():
    assert LoraSpec.parse("out/lora") == LoraSpec("out/lora")
    assert LoraSpec.parse("out/lora:0.5") == LoraSpec("out/lora", 0.5)
    assert LoraSpec.parse("out/lora:-1:style") == LoraSpec("out/lora", -1.0, "style")
    assert LoraSpec.parse("C:/loras/x.safetensors") == LoraSpec("C:/loras/x.safetensors")
    assert LoraSpec.parse("a:b:0.7") == LoraSpec("a:b", 0.7)
    assert LoraSpec("dir/my lora.safetensors").adapter_name(3) == "my_lora_3"


def test_lengths_follow_the_base_clip():
    assert frames_for_length(geometry("wan"), "1x") == 81
    assert frames_for_length(geometry("wan"), "4x") == 321
    assert geometry("wan").latent_frames(321) == 81
    assert frames_for_length(geometry("hunyuan"), "2x") == 257
    assert frames_for_length(geometry("mochi"), "4x") == 649
    assert frames_for_length(geometry("wan"), 17) == 17
    with pytest.raises(ValueError, match="k\\*4\\+1"):
        frames_for_length(geometry("wan"), 18)
    with pytest.raises(ValueError, match="1x, 2x"):
        frames_for_length(geometry("wan"), "twice")


def test_radial_settings_validate():
    with pytest.raises(ValueError, match="backend"):
        RadialSettings(backend="cuda")
    with pytest.raises(ValueError, match="dense_layers"):
        RadialSettings(dense_layers=-1)


def test_prompt_embeds_file_round_trip(tmp_path):
    path = _embeds_file(tmp_path / "e.safetensors", n=2, negative=True)
    items = load_prompt_embeds(path, text_len=16, family="wan")
    assert [e.prompt for e in items] == ["prompt 0", "prompt 1"]
    e = items[1]
    assert e.tensors["prompt_embeds"].shape == (1, 16, 32) and e.tensors["prompt_embeds"][0, 10:].abs().sum() == 0
    assert e.tensors["prompt_attention_mask"].tolist() == [[1] * 10 + [0] * 6]
    assert e.has_negative and e.tensors["negative_prompt_embeds"].shape == (1, 16, 32)  # broadcast to both prompts
    assert set(e.call_kwargs("wan")) == {"prompt_embeds", "negative_prompt_embeds"}  # Wan takes no masks
    assert "prompt_attention_mask" in e.call_kwargs("mochi")
    pt = tmp_path / "e.pt"
    torch.save({"prompt_embeds": torch.ones(4, 32), "prompt": "one"}, pt)
    (one,) = load_prompt_embeds(pt)
    assert one.prompt == "one" and one.tensors["prompt_embeds"].shape == (1, 4, 32)


def test_prompt_embeds_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_prompt_embeds(tmp_path / "missing.safetensors")
    path = _embeds_file(tmp_path / "e.safetensors", length=20)
    with pytest.raises(ValueError, match="more than the pipeline's text length 8"):
        load_prompt_embeds(path, text_len=8)
    with pytest.raises(ValueError, match="made for family 'wan'"):
        load_prompt_embeds(path, family="mochi")
    save_prompt_embeds(tmp_path / "bad.safetensors", {"prompt_embeds": torch.ones(3)})
    with pytest.raises(ValueError, match=r"\[L, D\] or \[N, L, D\]"):
        load_prompt_embeds(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="unknown prompt-embedding keys"):
        save_prompt_embeds(tmp_path / "x.safetensors", {"text": torch.ones(1)})


# -- the CLI on tiny pipelines --------------------------------------------------------------------------------------
def test_tiny_wan_from_embeddings_with_loras(tmp_path, lora_run):
    """No text encoder; two LoRAs with scales; radial settings taken from the LoRA header; mp4 + sidecar."""
    root, loras = lora_run
    embeds = _embeds_file(tmp_path / "p.safetensors")
    out = tmp_path / "out"
    result = rgen.main(
        ["--tiny", "wan", "--transformer", str(root / "base_transformer"), "--prompt-embeds", str(embeds),
         "--lora", f"{root / 'lora0'}:0.8", "--lora", f"{loras[1]}:0.5:second", "--seed", "1", "--out", str(out),
         "--frames", "17", "--height", "64", "--width", "64", "--steps", "2"]
    )  # fmt: skip
    (record,) = result["generated"]
    side = json.loads(Path(record["files"]["sidecar"]).read_text())
    assert side["prompt"] == "prompt 0" and side["seed"] == 1 and side["family"] == "wan"
    assert (side["height"], side["width"], side["frames"], side["num_inference_steps"]) == (64, 64, 17, 2)
    assert side["latent_shape"] == [1, 16, 5, 8, 8]
    assert [(x["name"], x["scale"]) for x in side["loras"]] == [("lora0_0", 0.8), ("second", 0.5)]
    assert side["loras"][0]["radial_lora"]["rank"] == 4
    assert side["radial"]["block_size"] == 16 and side["radial"]["dense_layers"] == 1
    assert side["radial_settings_from"].startswith("LoRA")
    assert 0 < side["attention"]["mask_token_density"] < 1 and side["attention"]["latent_grid"] == [5, 4, 4]
    assert len(side["time"]["per_step_s"]) == 2 and side["time"]["wall_s"] > 0
    assert side["peak_memory"]["process_peak_rss_gb"] > 0 and "torch" in side["versions"]
    assert Path(record["files"]["video"]).stat().st_size > 0
    from train.eval.metrics import load_frames

    assert load_frames(record["files"]["video"]).shape == (17, 64, 64, 3)


def test_lora_scales_change_the_output(lora_run):
    root, loras = lora_run
    embeds = load_prompt_embeds(_embeds_file(Path(root) / "p.safetensors"), text_len=128)[0]
    clip = ClipSpec(frames=9, height=32, width=32, num_inference_steps=2, guidance_scale=1.0, seed=0)
    latents = {}
    for scale in (None, 0.0, 1.0):
        pipe = tgen.build_tiny_pipeline("wan", transformer=root / "base_transformer", text_encoder=False)
        handles = apply_radial(pipe, RadialSettings(backend="reference", block_size=16))
        if scale is not None:
            load_loras(pipe, [LoraSpec(str(loras[0]), scale)])
        latents[scale] = generate(pipe, clip, embeds=embeds, handles=handles, decode=False).latents
        handles.remove()
    torch.testing.assert_close(latents[0.0], latents[None])
    assert (latents[1.0] - latents[None]).abs().max() > 1e-3


def test_a_plain_diffusers_lora_loads_too(tmp_path, lora_run):
    """A diffusers-format LoRA without our header (another trainer's): loaded with its scale, recorded as such."""
    from safetensors.torch import save_file

    root, loras = lora_run
    plain = tmp_path / "plain.safetensors"
    save_file(load_file(str(loras[0])), str(plain))  # same tensors, no metadata
    pipe = tgen.build_tiny_pipeline("wan", transformer=root / "base_transformer", text_encoder=False)
    (record,) = load_loras(pipe, [LoraSpec(str(plain), 0.7)])
    assert record["radial_lora"] == {} and record["scale"] == 0.7 and record["name"] == "plain_0"
    ours = tgen.build_tiny_pipeline("wan", transformer=root / "base_transformer", text_encoder=False)
    load_loras(ours, [LoraSpec(str(loras[0]), 0.7)])
    embeds = load_prompt_embeds(_embeds_file(tmp_path / "p.safetensors"), text_len=128)[0]
    clip = ClipSpec(frames=17, height=64, width=64, num_inference_steps=2, guidance_scale=1.0)
    a = generate(pipe, clip, embeds=embeds, decode=False).latents
    b = generate(ours, clip, embeds=embeds, decode=False).latents
    torch.testing.assert_close(a, b)


def test_lora_errors(tmp_path, lora_run):
    root, _ = lora_run
    pipe = tgen.build_tiny_pipeline("wan", text_encoder=False)
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_loras(pipe, [LoraSpec(str(tmp_path / "nope"))])
    with pytest.raises(FileNotFoundError, match="no pytorch_lora_weights.safetensors"):
        load_loras(pipe, [LoraSpec(str(tmp_path))])
    hunyuan = tgen.build_tiny_pipeline("hunyuan", text_encoder=False)
    with pytest.raises(ValueError, match="trained for family 'wan'"):
        load_loras(hunyuan, [LoraSpec(str(root / "lora0"))])


def test_radial_vs_dense_same_seed_and_compare_report(tmp_path, lora_run):
    out = tmp_path / "cmp"
    root, _ = lora_run
    lora = ["--transformer", str(root / "base_transformer"), "--lora", f"{root / 'lora0'}:0.5"]
    with pytest.warns(UserWarning, match="generating with dense attention"):
        result = rgen.main(
            ["--tiny", "wan", "--prompt", "a red ball", "--compare-dense", "--out", str(out), *SMALL, *lora]
        )
    (radial,), (dense,) = result["generated"], result["dense"]
    assert radial["attention"]["radial"] and not dense["attention"]["radial"] and dense["radial"]["enabled"] is False
    assert radial["loras"] == dense["loras"] and radial["loras"][0]["scale"] == 0.5  # loaded once, used twice
    (report,) = result["comparisons"]
    s = report["summary"]
    assert radial["attention"]["mask_token_density"] < 0.5
    assert s["frames"] == 17 and 1e-4 < s["latent_rel_error"] < 0.5 and 0 < s["ssim_mean"] < 1 and s["psnr_mean"] > 10
    assert len(report["per_frame"]["psnr"]) == 17 and len(report["per_frame"]["latent_rel_error"]) == 5
    assert Path(report["files"]["json"]).is_file() and Path(report["files"]["png"]).is_file()
    # The same seed gives the same noise: a second dense run is bitwise the first.
    again = rgen.main(
        ["--tiny", "wan", "--prompt", "a red ball", "--attention", "dense", "--out", str(out), *SMALL, *lora]
    )
    a = load_file(dense["files"]["latents"])["latents"]
    b = load_file(again["generated"][0]["files"]["latents"])["latents"]
    assert torch.equal(a, b)


def test_dense_timesteps_follow_the_pipeline_steps(lora_run):
    """With every step dense the radial pipeline equals stock attention; with none it does not."""
    root, _ = lora_run
    embeds = load_prompt_embeds(_embeds_file(Path(root) / "q.safetensors"), text_len=128)[0]
    clip = ClipSpec(frames=17, height=64, width=64, num_inference_steps=3, guidance_scale=1.0, seed=2)
    pipe = tgen.build_tiny_pipeline("wan", text_encoder=False)
    stock = generate(pipe, clip, embeds=embeds, decode=False)
    out = {}
    for t in (0, 3):
        handles = apply_radial(pipe, RadialSettings(backend="reference", block_size=16, dense_timesteps=t))
        out[t] = generate(pipe, clip, embeds=embeds, handles=handles, decode=False)
        handles.remove()
    torch.testing.assert_close(out[3].latents, stock.latents, atol=1e-5, rtol=1e-5)
    assert (out[0].latents - stock.latents).abs().max() > 1e-4
    assert out[3].attention["effective_density"] == 1.0 and out[0].attention["effective_density"] < 1.0


@pytest.mark.parametrize(
    "family,extra",
    [("hunyuan", {"pooled": 16}), ("mochi", {})],
)
def test_other_families_from_embeddings(tmp_path, family, extra):
    embeds = _embeds_file(tmp_path / "p.safetensors", family=family, negative=True, **extra)
    frames = "13" if family == "mochi" else "17"
    out = tmp_path / "out"
    args = ["--tiny", family, "--prompt-embeds", str(embeds), "--out", str(out), "--frames", frames]
    args += ["--height", "64", "--width", "64", "--steps", "2", "--guidance-scale", "2.0"]
    if family == "hunyuan":
        args += ["--true-cfg-scale", "2.0"]
    (record,) = rgen.main(args)["generated"]
    assert record["family"] == family and record["attention"]["mask_token_density"] < 1 and record["finite"]
    assert Path(record["files"]["video"]).is_file()


def test_cfg_without_negatives_or_text_encoder_is_a_clear_error(tmp_path, capsys):
    embeds = _embeds_file(tmp_path / "p.safetensors")
    with pytest.raises(SystemExit):
        rgen.main(
            [
                "--tiny",
                "wan",
                "--prompt-embeds",
                str(embeds),
                "--guidance-scale",
                "5",
                "--out",
                str(tmp_path),
                *SMALL[:-2],
            ]
        )
    assert "needs negative_prompt_embeds" in capsys.readouterr().err


def test_saved_tiny_folder_through_radial_generate(tmp_path):
    """`train.generate --model DIR` on a saved tiny HunyuanVideo folder: text encoders, template from the folder."""
    folder = tgen.save_tiny_pipeline(tmp_path / "tiny_hunyuan", "hunyuan")
    assert (folder / "model_index.json").is_file() and (folder / "radial_text_settings.json").is_file()
    out = tmp_path / "out"
    records = rgen.main(
        ["--model", str(folder), "--prompt", "a cat", "--prompt", "a dog", "--dtype", "fp32", "--device", "cpu",
         "--block-size", "16", "--guidance-scale", "6", "--out", str(out), *SMALL]
    )["generated"]  # fmt: skip
    assert [r["name"] for r in records] == ["hunyuan_17f_p0_s0_radial", "hunyuan_17f_p1_s0_radial"]
    assert records[0]["prompt"] == "a cat" and records[0]["pipeline"] == str(folder)
    assert all(r["finite"] for r in records)  # the template's crop keeps the caption tokens (no empty text mask)
    assert torch.isfinite(load_file(records[0]["files"]["latents"])["latents"]).all()
    assert json.loads((out / "generate_summary.json").read_text())["generated"][1]["prompt"] == "a dog"


def test_the_generation_library_needs_nothing_but_radial():
    """The functions train.generate calls load without data/ or train/ (the CLI itself is an application)."""
    code = (
        "import sys, radial, radial.generation, radial.generation.pipeline, radial.generation.embeds, "
        "radial.lora, radial.lora_info, radial.models, radial.hub; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('data', 'train')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_bad_model_folders_are_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        rgen.main(["--model", str(tmp_path / "missing"), "--prompt", "x", "--out", str(tmp_path)])
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "flux").mkdir()
    with pytest.raises(SystemExit):
        rgen.main(["--model", str(tmp_path / "flux"), "--prompt", "x", "--out", str(tmp_path)])
    assert "no model_index.json" in capsys.readouterr().err
    (tmp_path / "flux" / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(SystemExit):
        rgen.main(["--model", str(tmp_path / "flux"), "--prompt", "x", "--out", str(tmp_path)])
    assert "FluxPipeline is not supported" in capsys.readouterr().err


def test_an_expert_lora_goes_into_its_expert(tmp_path):
    """Wan2.2 A14B: a LoRA whose header names transformer_2 (the low-noise expert) is loaded there, and that expert
    then computes what the trained one did; the high-noise expert is left alone."""
    import diffusers

    adapter = get_adapter("wan22")
    trained = adapter.build_tiny(seed=1)
    config = attach_lora(trained, rank=4, alpha=4, target_modules=adapter.lora_target_modules())
    with torch.no_grad():
        for name, param in trained.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero: make the LoRA change the output
                param.normal_(0.0, 0.1)
    info = {"format": "radial-lora/1", "base_model": {"family": "wan22", "expert": "transformer_2"}}
    file = export_diffusers(trained, diffusers.WanPipeline, tmp_path / "lora", config, info)
    base = tgen.build_tiny_pipeline("wan", text_encoder=False)
    components = {**base.components, "transformer_2": adapter.build_tiny(seed=1)}
    pipe = diffusers.WanPipeline(**components, boundary_ratio=0.875)
    (record,) = load_loras(pipe, [LoraSpec(str(file), 1.0)])
    assert record["radial_lora"]["base_model"]["expert"] == "transformer_2"
    assert getattr(pipe.transformer_2, "peft_config", None) and not getattr(pipe.transformer, "peft_config", None)
    latents = torch.randn(1, 16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    conds = adapter.make_dummy_conditions(trained, 1)
    t = torch.tensor([300.0])
    with torch.no_grad():
        want = adapter.predict(trained, latents, t, conds)
        got = adapter.predict(pipe.transformer_2, latents, t, conds)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="trained for the expert 'transformer_2'"):
        load_loras(tgen.build_tiny_pipeline("wan", text_encoder=False), [LoraSpec(str(file), 1.0)])


# -- failure paths: LoRA files and folders are checked before anything loads ----------------------------------------
def _one_line_error(capsys, argv, module=None):
    import train.generate as rgen

    capsys.readouterr()  # what came before (progress bars of saving the tiny folder)
    with pytest.raises(SystemExit) as exit_:
        (module or rgen).main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


def test_damaged_lora_files_are_one_line_errors_naming_the_file(tmp_path, lora_run, capsys):
    folder = tgen.save_tiny_pipeline(tmp_path / "tiny_wan", "wan")
    good = lora_run[1][0].read_bytes()
    cases = {
        "truncated.safetensors": good[: len(good) // 2],
        "random.safetensors": bytes(
            torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist()
        ),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        argv = ["--model", str(folder), "--lora", str(tmp_path / name), "--prompt", "x", "--out", str(tmp_path)]
        err = _one_line_error(capsys, argv)
        assert f"{tmp_path / name} is not a readable safetensors file, corrupt or truncated" in err
        with pytest.raises(LoraFileError, match=name):  # train.generate --tiny: the same check at load time
            load_loras(tgen.build_tiny_pipeline("wan", text_encoder=False), [LoraSpec(str(tmp_path / name))])


def test_lora_family_and_rank_are_checked_against_the_header(tmp_path, lora_run, capsys):
    from safetensors.torch import save_file

    from radial.lora import read_metadata

    root, loras = lora_run
    folder = tgen.save_tiny_pipeline(tmp_path / "tiny_hunyuan", "hunyuan")
    argv = ["--model", str(folder), "--lora", str(loras[0]), "--prompt", "x", "--out", str(tmp_path)]
    err = _one_line_error(capsys, argv)
    assert f"{loras[0]} was trained for family 'wan', the pipeline is 'hunyuan'" in err
    # Rank: the header says 4, the tensors say otherwise (the file was edited after export).
    tensors = {k: (v[:2] if "lora_A" in k else v[:, :2]).contiguous() for k, v in load_file(str(loras[0])).items()}
    meta = {"radial_lora": json.dumps(read_metadata(loras[0]))}
    save_file(tensors, str(tmp_path / "rank.safetensors"), metadata=meta)
    with pytest.raises(LoraFileError, match=r"rank\.safetensors: its header says rank 4, but \d+ of \d+ .*rank 2"):
        check_lora_file(tmp_path / "rank.safetensors", "--lora rank.safetensors", "wan")
    # A foreign LoRA (no header of ours) whose layers are not in this family's transformer.
    foreign = {"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 32)}
    foreign["transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight"] = torch.zeros(32, 4)
    save_file(foreign, str(tmp_path / "foreign.safetensors"))
    pipe = tgen.build_tiny_pipeline("wan", transformer=root / "base_transformer", text_encoder=False)
    with pytest.raises(LoraFileError, match=r"foreign\.safetensors does not fit the wan transformer"):
        load_loras(pipe, [LoraSpec(str(tmp_path / "foreign.safetensors"))])


def test_missing_transformer_folder_is_a_local_path_error(tmp_path, capsys):
    folder = tgen.save_tiny_pipeline(tmp_path / "tiny_wan", "wan")
    argv = ["--model", str(folder), "--transformer", "/missing/folder", "--prompt", "x", "--out", str(tmp_path)]
    assert "error: --transformer /missing/folder: no such folder" in _one_line_error(capsys, argv)
    argv = ["--tiny", "wan", "--transformer", "./missing", "--prompt", "x", "--out", str(tmp_path)]
    assert "error: --transformer ./missing: no such folder" in _one_line_error(capsys, argv)


def test_model_may_be_a_hub_id_in_the_cache(tmp_path, monkeypatch, capsys):
    """A Hub id resolves offline to its cached snapshot (the cache layout huggingface_hub writes); one not in the
    cache is a one-line error saying what to download."""
    cache = tmp_path / "hf" / "hub"
    repo = cache / "models--someone--tiny-hunyuan"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    tgen.save_tiny_pipeline(repo / "snapshots" / ("0" * 40), "hunyuan")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    args = ["--prompt", "a cat", "--dtype", "fp32", "--device", "cpu", "--block-size", "16", "--no-decode"]
    (record,) = rgen.main(["--model", "someone/tiny-hunyuan", *args, "--out", str(out), *SMALL])["generated"]
    assert record["pipeline"].endswith("snapshots/" + "0" * 40) and record["finite"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        rgen.main(["--model", "someone/missing", *args, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert "not in the Hugging Face cache" in err and "hf download" in err and "\n" not in err


def test_attention_summary_counts_the_dense_backend_as_dense():
    """Generating through the dense backend (e.g. flash-attn-4's dense kernel) must not report the plan's density."""
    from types import SimpleNamespace

    import radial
    from radial.generation.run import attention_summary

    plan = radial.make_plan(num_frames=8, tokens_per_frame=64, model="wan", block_size=16)
    clip = ClipSpec(frames=29, height=64, width=64, num_inference_steps=4)

    def handle(backend):
        config = SimpleNamespace(backend=backend, dense_layers=0, dense_timesteps=0)
        return SimpleNamespace(last_plan=plan, last_grid=None, config=config, num_layers=2)

    assert attention_summary(handle("reference"), clip)["effective_density"] < 1.0
    assert attention_summary(handle("dense"), clip)["effective_density"] == 1.0
