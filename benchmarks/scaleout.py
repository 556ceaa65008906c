"""Scale-out verification on one machine with 2 GPUs: DDP, DeepSpeed ZeRO-2 / ZeRO-3 and Ulysses sequence parallelism
through the real trainer (`accelerate launch --config_file launch/... train/lora.py`), on the full-size Wan2.1-1.3B
architecture (random weights, radial attention with the triton backend, LoRA rank 128 on q/k/v/o, bf16,
gradient checkpointing), plus an sp=2 vs sp=1 equality check of loss and LoRA gradients on one batch.

    python benchmarks/scaleout.py --out $OUT                       # everything (about 6 minutes on 2 H100)
    python benchmarks/scaleout.py --out $OUT --parts ddp zero2 zero3
    python benchmarks/scaleout.py --out $OUT --parts equal sp1 sp2
    python benchmarks/scaleout.py --out $OUT --smoke               # CPU check of this script (tiny model, gloo)
    python benchmarks/scaleout.py --out $OUT --parts ddp zero2 zero3 sp2 --set train.compile=true   # compiled blocks
    python benchmarks/scaleout.py --out $OUT --wheels .whl/scaleout ...   # first pip-install what is missing

Parts (each a separate launch; a failure is recorded and the others still run):
    ddp    launch/multi_gpu.yaml, 2 processes, 1x length (21 latent frames at 480x832: 32,760 tokens), 4 steps
    zero2  launch/deepspeed_zero2.yaml, same run
    zero3  launch/deepspeed_zero3.yaml, same run
    equal  torchrun, 2 processes: one batch at 1x, loss and summed LoRA gradients with sp=2 against sp=1 (and a
           repeat of sp=1, the run-to-run noise floor of bf16 kernels)
    sp1    launch/single_gpu.yaml, 1 process, 4x length (81 latent frames: 126,360 tokens), 3 steps
    sp2    launch/multi_gpu.yaml + parallel=sp2, 2 processes sharing each sample, 4x length, 3 steps
    fsdp2  (only when named) launch/fsdp2.yaml, as ddp
Writes $OUT/scaleout.json and $OUT/scaleout.md (the table printed at the end); per-run logs under $OUT/runs/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARTS = ("ddp", "zero2", "zero3", "equal", "sp1", "sp2")
OPTIONAL = ("fsdp2",)  # run only when named
# name: (accelerate config, processes, dataset, steps, extra overrides)
RUNS = {
    "ddp": ("multi_gpu.yaml", 2, "1x", 4, []),
    "zero2": ("deepspeed_zero2.yaml", 2, "1x", 4, []),
    "zero3": ("deepspeed_zero3.yaml", 2, "1x", 4, []),
    "fsdp2": ("fsdp2.yaml", 2, "1x", 4, []),
    "sp1": ("single_gpu.yaml", 1, "4x", 3, []),
    "sp2": ("multi_gpu.yaml", 2, "4x", 3, ["parallel=sp2"]),
}
# dataset: (pixel frames, height, width); Wan VAE 4x temporal, 8x spatial; patch 1x2x2
LENGTHS = {"1x": (81, 480, 832), "4x": (321, 480, 832)}
SMOKE_LENGTHS = {"1x": (17, 64, 64), "4x": (33, 64, 64)}
SP_TARGET = 1.8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NEEDED = {"deepspeed": "deepspeed", "diffusers": "diffusers", "hydra": "hydra-core", "omegaconf": "omegaconf",
          "matplotlib": "matplotlib", "einops": "einops"}  # fmt: skip


def install_missing(wheels: Path) -> None:
    """pip-install, from a local wheel folder only, the packages of NEEDED that cannot be imported."""
    import importlib.util

    missing = [pkg for module, pkg in NEEDED.items() if importlib.util.find_spec(module) is None]
    if not missing:
        return
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(wheels), *missing]
    for attempt in (cmd, [*cmd, "--break-system-packages"]):  # an externally managed Python wants the flag
        print("+", " ".join(attempt), flush=True)
        if subprocess.run(attempt).returncode == 0:
            return
    # The resolver could not satisfy some requirement from the folder: install every wheel whose distribution is
    # absent, without dependency checks.
    import importlib.metadata as md

    def installed(wheel: Path) -> bool:
        try:
            md.version(wheel.name.split("-")[0])
            return True
        except md.PackageNotFoundError:
            return False

    absent = [str(w) for w in sorted(wheels.glob("*.whl")) if not installed(w)]
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                    "--break-system-packages", *absent], check=True)  # fmt: skip


# -- data -------------------------------------------------------------------------------------------------------
def write_random_dataset(
    root: Path, transformer_config, frames: int, height: int, width: int, items: int = 4, dtype: str = "bfloat16"
) -> Path:
    """A valid Wan latent dataset of random latents and text states shaped for `transformer_config`."""
    import torch

    from data.latents import make_latent_norm
    from data.shards import DTYPES, ShardWriter, build_index
    from radial.families import geometry

    if (root / "index.json").is_file():
        return root
    g = geometry("wan")
    channels = transformer_config["out_channels"] or transformer_config["in_channels"]
    text_dim, text_len = transformer_config["text_dim"], 512
    header = {
        "model": "wan",
        "latent_channels": channels,
        "temporal_factor": g.temporal_factor,
        "spatial_factor": g.spatial_factor,
        "latent_dtype": dtype,
        "text_dtype": dtype,
        "latent_norm": make_latent_norm("wan", [0.0] * channels, [1.0] * channels),
        "text_fields": {
            "prompt_embeds": {
                "name": "prompt_embeds",
                "dim": text_dim,
                "max_len": text_len,
                "mask": "prompt_attention_mask",
            }
        },
        "encoders": {"family": "wan", "source": "random (benchmarks/scaleout.py)"},
        "latent_sample": "mode",
    }
    shape = [channels, g.latent_frames(frames), height // g.spatial_factor, width // g.spatial_factor]
    writer = ShardWriter(root, header, items_per_shard=items, prefix="random")
    gen = torch.Generator().manual_seed(0)
    for i in range(items):
        valid = 64 + 16 * i
        record = {
            "key": f"random-{i}",
            "source": f"random-{i}",
            "caption": "random",
            "clip": 0,
            "frames": frames,
            "fps": 16,
            "height": height,
            "width": width,
            "latent_shape": shape,
            "text_lens": {"prompt_embeds": valid},
        }
        tensors = {
            "latents": torch.randn(shape, generator=gen).to(DTYPES[dtype]),
            "prompt_embeds": torch.randn(valid, text_dim, generator=gen).to(DTYPES[dtype]),
        }
        writer.add(record, tensors)
    writer.flush()
    build_index(root)
    return root


def _model_config(smoke: bool) -> dict:
    from radial.models import get_adapter

    adapter = get_adapter("wan")
    if smoke:
        return dict(adapter.tiny_config, out_channels=16, in_channels=16)
    return dict(adapter.variants["t2v-1.3b"])


# -- launches ---------------------------------------------------------------------------------------------------
def _overrides(name: str, data_root: Path, out: Path, steps: int, smoke: bool, extra: list[str]) -> list[str]:
    common = [
        f"output_dir={out}",
        "data=latents",
        f"data.root={data_root}",
        "data.batch_size=1",
        f"data.num_workers={0 if smoke else 2}",
        f"train.max_steps={steps}",
        "train.checkpoint_every=0",
        "train.keep_last=1",
        "train.gradient_checkpointing=true",
        "logging.trackers=[]",
        "logging.loss_curve=false",
        "train.export_comfy=false",
        "optim.warmup_steps=0",
    ]
    if smoke:
        model = ["model=tiny_wan", "train.mixed_precision=no"]
    else:
        model = ["model=wan_full", "attention.backend=triton", "train.mixed_precision=bf16", "lora.rank=128"]
    return [*model, *common, *extra]


def _env(smoke: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env.update(PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false", HYDRA_FULL_ERROR="1")
    env.setdefault("OMP_NUM_THREADS", "1" if smoke else "4")
    if smoke:
        env["ACCELERATE_USE_CPU"] = "1"
    return env


def _run(cmd: list[str], log: Path, env: dict, timeout: int) -> tuple[int, float]:
    start = time.perf_counter()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                                stdin=subprocess.DEVNULL).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            rc = 124
    return rc, time.perf_counter() - start


def _tail(log: Path, n: int = 3) -> str:
    """The first exception line of a failed run's log (else its last lines)."""
    lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
    pattern = re.compile(r"^(\[rank\d+\]: )?\s*[\w.]*(Error|Exception)\b[^:]*:")
    skip = ("CalledProcess", "ChildFailed", "Error executing job", "Connection closed by peer")
    errors = [x.strip() for x in lines if pattern.match(x) and not any(k in x for k in skip)]
    return (errors[0] if errors else " | ".join(lines[-n:]))[:300]


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20 if path.exists() else float("nan")


def launch_run(name: str, args, data_roots: dict) -> dict:
    config, nproc, length, steps, extra = RUNS[name]
    out = args.out / "runs" / name
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "launch" / config),
           "--num_processes", str(nproc), "--main_process_port", str(free_port()), "train/lora.py",
           *_overrides(name, data_roots[length], out, steps, args.smoke, [*extra, *args.set])]  # fmt: skip
    log = args.out / "runs" / f"{name}.log"
    rc, wall = _run(cmd, log, _env(args.smoke), args.timeout)
    row = {"run": name, "config": config, "gpus": nproc, "sp": 2 if "parallel=sp2" in extra else 1, "length": length}
    row.update(rc=rc, wall_s=round(wall, 1))
    if args.set:
        row["set"] = " ".join(args.set)
    metrics_file = out / "metrics.jsonl"
    metrics = [json.loads(x) for x in metrics_file.read_text().splitlines()] if metrics_file.is_file() else []
    metrics = [m for m in metrics if "step_time_s" in m]  # training steps (validation lines hold val/* only)
    if rc != 0 or len(metrics) < steps:
        row["error"] = "timeout" if rc == 124 else _tail(log)
        if metrics:
            row["peak_gb"] = max(m["peak_memory_gb"] for m in metrics)
        return row
    timed = [m["step_time_s"] for m in metrics[1:]] or [metrics[0]["step_time_s"]]
    step_s = statistics.median(timed)
    samples_per_step = nproc // row["sp"]  # batch 1 per data-parallel group
    tokens = _tokens(*(SMOKE_LENGTHS if args.smoke else LENGTHS)[length])
    summary = json.loads((out / "run_summary.json").read_text()) if (out / "run_summary.json").is_file() else {}
    row.update(
        tokens=tokens,
        step_s=step_s,
        first_step_s=metrics[0]["step_time_s"],
        samples_per_s=samples_per_step / step_s,
        tokens_per_s=samples_per_step * tokens / step_s,
        peak_gb=max(m["peak_memory_gb"] for m in metrics),
        losses=[m["loss"] for m in metrics],
        density=metrics[-1].get("block_density"),
        checkpoint_mb=_dir_mb(out / "checkpoints"),
        lora_mb=_dir_mb(out / "lora"),
        exported=bool(summary.get("files", {}).get("lora_diffusers")),
    )
    return row


def _tokens(frames: int, height: int, width: int) -> int:
    """Video tokens of a Wan clip: latent frames x (height / 16) x (width / 16) (VAE 8x, patch 2x2)."""
    return ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)


def equality_run(args, data_roots: dict) -> dict:
    out = args.out / "runs" / "equal.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
           "--worker-equal", str(out), "--out", str(args.out)] + (["--smoke"] if args.smoke else [])  # fmt: skip
    log = args.out / "runs" / "equal.log"
    rc, wall = _run(cmd, log, _env(args.smoke), args.timeout)
    row = {"run": "equal", "rc": rc, "wall_s": round(wall, 1)}
    if not out.is_file():
        row["error"] = "timeout" if rc == 124 else _tail(log)
        return row
    row.update(json.loads(out.read_text()))
    if rc != 0:
        row["note"] = f"exit code {rc} after the results were written (process teardown)"
    return row


# -- the equality worker (under torchrun) -------------------------------------------------------------------------
def _worker_equal(result_path: Path, smoke: bool) -> None:
    import torch
    import torch.distributed as dist

    from radial.parallel import enable, init_sequence_parallel
    from train.components import build_model
    from train.config import compose, validate
    from train.flow import FlowMatching
    from train.step import flow_matching_loss

    cuda = torch.cuda.is_available() and not smoke
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    overrides = (
        ["model=tiny_wan", "train.mixed_precision=no"]
        if smoke
        else ["model=wan_full", "attention.backend=triton", "train.mixed_precision=bf16", "lora.rank=128"]
    )
    cfg = validate(compose([*overrides, "logging.trackers=[]", "train.gradient_checkpointing=true"]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        parts = build_model(cfg, device)
        for name, p in parts.transformer.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero, which leaves A without gradient
                p.data.normal_(0.0, 0.02)
    model, adapter = parts.transformer, parts.adapter
    frames, height, width = (SMOKE_LENGTHS if smoke else LENGTHS)["1x"]
    gen = torch.Generator().manual_seed(1)
    g = adapter.geometry
    shape = (1, adapter.latent_channels(model), g.latent_frames(frames), height // 8, width // 8)
    model_dtype = torch.float32 if smoke else torch.bfloat16
    x0 = torch.randn(shape, generator=gen).to(device)
    conds = adapter.make_dummy_conditions(model, 1, seed=2, valid_text=100)
    flow = FlowMatching(shift=cfg.model.flow_shift)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}

    def run() -> tuple[float, dict, float]:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=not smoke):
            loss = flow_matching_loss(adapter, model, flow, x0, conds, torch.Generator().manual_seed(3), model_dtype)
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        grads = {n: p.grad.detach().float().clone() for n, p in params.items()}
        for p in params.values():
            p.grad = None
        return loss.item(), grads, time.perf_counter() - start

    loss_a, grads_a, _ = run()  # sp=1 (every rank alone, the same computation)
    loss_b, grads_b, _ = run()  # sp=1 again: the noise floor of the kernels
    sp = init_sequence_parallel(2, device)
    handle = enable(parts.handle, sp)
    loss_c, grads_c, _ = run()  # sp=2
    for grad in grads_c.values():  # each rank holds its tokens' share: the group's sum is the full gradient
        dist.all_reduce(grad, group=sp.group)
    handle.remove()

    def compare(x: dict, y: dict) -> tuple[float, float, float]:
        vx = torch.cat([x[n].flatten() for n in sorted(x)])
        vy = torch.cat([y[n].flatten() for n in sorted(y)])
        rel = ((vx - vy).norm() / vy.norm()).item()
        cos = torch.nn.functional.cosine_similarity(vx, vy, dim=0).item()
        worst = max(((x[n] - y[n]).norm() / y[n].norm().clamp_min(1e-30)).item() for n in y)
        return rel, cos, worst

    rel, cos, worst = compare(grads_c, grads_a)
    floor, _, _ = compare(grads_b, grads_a)
    result = {
        "tokens": parts.handle.last_grid.video_tokens,
        "lora_tensors": len(params),
        "loss_sp1": loss_a,
        "loss_sp2": loss_c,
        "loss_rel_diff": abs(loss_c - loss_a) / abs(loss_a),
        "loss_rel_diff_sp1_repeat": abs(loss_b - loss_a) / abs(loss_a),
        "grad_rel_l2": rel,
        "grad_cosine": cos,
        "grad_worst_tensor_rel_l2": worst,
        "grad_rel_l2_sp1_repeat": floor,
        "grad_norm": torch.cat([g.flatten() for g in grads_a.values()]).norm().item(),
    }
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, result)
    if dist.get_rank() == 0:
        worst_of = {k: max(r[k] for r in gathered) if "rel" in k else gathered[0][k] for k in result}
        worst_of["grad_cosine"] = min(r["grad_cosine"] for r in gathered)
        tol = {"loss_rel_diff": 1e-5, "grad_rel_l2": 1e-4} if smoke else {"loss_rel_diff": 5e-3, "grad_rel_l2": 3e-2}
        worst_of["tolerance"] = tol
        worst_of["pass"] = all(worst_of[k] <= v for k, v in tol.items())
        Path(result_path).write_text(json.dumps(worst_of))
    dist.barrier()
    dist.destroy_process_group()


# -- report -----------------------------------------------------------------------------------------------------
def _fmt(value, spec: str) -> str:
    return "" if value is None or value != value else format(value, spec)


def report(rows: list[dict], meta: dict) -> str:
    lines = [
        "| run | launch config | GPUs | SP | tokens / sample | step s (median) | samples/s | tokens/s | peak GB (rank 0) "
        "| losses | checkpoint MB | LoRA export | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["run"] == "equal":
            continue
        losses = ", ".join(f"{v:.4f}" for v in r.get("losses", []))
        status = "ok" if "error" not in r else f"FAILED (rc {r['rc']}): {r['error']}"
        lines.append(
            f"| {r['run']} | {r['config']} | {r['gpus']} | {r['sp']} | {r.get('tokens', '')} | {_fmt(r.get('step_s'), '.2f')} "
            f"| {_fmt(r.get('samples_per_s'), '.3f')} | {_fmt(r.get('tokens_per_s'), '.0f')} | {_fmt(r.get('peak_gb'), '.1f')} "
            f"| {losses} | {_fmt(r.get('checkpoint_mb'), '.0f')} | {'yes' if r.get('exported') else ''} | {status} |"
        )
    text = ["\n".join(lines)]
    eq = next((r for r in rows if r["run"] == "equal"), None)
    if eq is not None:
        if "error" in eq:
            text.append(f"sp=2 vs sp=1 equality: FAILED (rc {eq['rc']}): {eq['error']}")
        else:
            text.append(
                f"sp=2 vs sp=1 on one batch ({eq['tokens']} tokens, {eq['lora_tensors']} LoRA tensors): "
                f"loss {eq['loss_sp1']:.6f} vs {eq['loss_sp2']:.6f} (rel. diff {eq['loss_rel_diff']:.2e}); LoRA "
                f"gradients rel. L2 error {eq['grad_rel_l2']:.2e}, cosine {eq['grad_cosine']:.6f}, worst tensor "
                f"{eq['grad_worst_tensor_rel_l2']:.2e}; sp=1 run-to-run: loss {eq['loss_rel_diff_sp1_repeat']:.2e}, "
                f"gradients {eq['grad_rel_l2_sp1_repeat']:.2e}; tolerance {eq['tolerance']}: "
                f"{'PASS' if eq['pass'] else 'FAIL'}"
            )
    by = {r["run"]: r for r in rows}
    if "step_s" in by.get("sp1", {}) and "step_s" in by.get("sp2", {}):
        speedup = by["sp1"]["step_s"] / by["sp2"]["step_s"]
        text.append(
            f"Ulysses at 4x length: sp=2 (2 GPUs on one sample) takes {by['sp2']['step_s']:.2f} s per sample against "
            f"{by['sp1']['step_s']:.2f} s for sp=1 on one GPU: {speedup:.2f}x per-sample throughput "
            f"(target >= {SP_TARGET}x: {'met' if speedup >= SP_TARGET else 'NOT met'}); peak memory "
            f"{by['sp1']['peak_gb']:.1f} -> {by['sp2']['peak_gb']:.1f} GB."
        )
    elif "sp1" in by or "sp2" in by:
        text.append(
            "Ulysses at 4x length: " + "; ".join(f"{n}: {by[n].get('error', 'ok')}" for n in ("sp1", "sp2") if n in by)
        )
    head = f"{meta['card']} x{meta['gpus']}, torch {meta['torch']}, deepspeed {meta['deepspeed']}, {meta['date']}"
    return head + "\n\n" + "\n\n".join(text) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS + OPTIONAL)
    p.add_argument("--timeout", type=int, default=240, help="seconds per launch")
    p.add_argument("--set", nargs="+", default=[], help="trainer overrides for every launch (train.compile=true)")
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU (gloo): a check of this script")
    p.add_argument("--wheels", type=Path, default=None, help="install missing packages from this wheel folder")
    p.add_argument("--worker-equal", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker_equal is not None:
        _worker_equal(args.worker_equal, args.smoke)
        return []
    if args.wheels is not None:
        install_missing(args.wheels)
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runs").mkdir(exist_ok=True)
    cache = Path(os.environ.get("RADIAL_SCALEOUT_DATA", "/tmp/radial_scaleout_data")) / (
        "smoke" if args.smoke else "full"
    )
    lengths = SMOKE_LENGTHS if args.smoke else LENGTHS
    config = _model_config(args.smoke)
    dtype = "float32" if args.smoke else "bfloat16"
    data_roots = {k: write_random_dataset(cache / k, config, *v, dtype=dtype) for k, v in lengths.items()}
    try:
        import deepspeed

        ds_version = deepspeed.__version__
    except Exception as err:  # noqa: BLE001 - reported, not fatal
        ds_version = f"unavailable ({type(err).__name__})"
    cuda = torch.cuda.is_available() and not args.smoke
    meta = {
        "card": torch.cuda.get_device_name() if cuda else "cpu (smoke)",
        "gpus": torch.cuda.device_count() if cuda else 0,
        "torch": torch.__version__,
        "deepspeed": ds_version,
        "date": str(datetime.date.today()),
    }
    # Rows of earlier calls on this machine (same cache) join the report: parts can run in separate calls.
    history = cache / "rows.json"
    earlier = json.loads(history.read_text()) if history.is_file() else []
    rows = []
    for part in args.parts:
        started = time.perf_counter()
        row = equality_run(args, data_roots) if part == "equal" else launch_run(part, args, data_roots)
        rows.append(row)
        print(f"[{part}] {time.perf_counter() - started:.0f} s: {json.dumps(row)}", flush=True)
        merged = [r for r in earlier if r["run"] not in {x["run"] for x in rows}] + rows
        order = {name: i for i, name in enumerate(PARTS + OPTIONAL)}
        merged.sort(key=lambda r: order.get(r["run"], len(order)))
        history.write_text(json.dumps(merged))
        # Written after every part, so that a call cut short still leaves its results.
        (args.out / "scaleout.json").write_text(json.dumps({"meta": meta, "rows": merged}, indent=1))
        md = report(merged, meta)
        (args.out / "scaleout.md").write_text("# Scale-out: DDP, ZeRO-2/3, Ulysses SP (Wan2.1-1.3B, radial)\n\n" + md)
    print(md)
    return rows


if __name__ == "__main__":
    main()
