"""Train a radial-attention LoRA: `accelerate launch train/lora.py model=hunyuan model.path=... data=latents ...`

Hydra composes configs/ (groups: model, attention, data, lora, optim, train, eval, logging, parallel); every value
can be overridden on the command line. With no arguments it runs the embedded demo: a tiny Wan transformer on
synthetic long videos, on the CPU, writing the LoRA, loss curve and mask picture under outputs/run (`make demo`:
outputs/demo). `--help` lists the config groups, keys and examples.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script from anywhere: the repository root holds the `train` and `data` packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from radial.errors import cli_errors  # noqa: E402
from train.command_line import check_command_line  # noqa: E402
from train.config import validate  # noqa: E402
from train.signals import INTERRUPTED  # noqa: E402


@hydra.main(config_path="../configs", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    # Our errors (config, data, checkpoint, LoRA, paths) as one line and exit 2, inside the task function: Hydra
    # would print its own "Error executing job" and the traceback (RADIAL_DEBUG=1 / HYDRA_FULL_ERROR=1 keep it).
    try:
        with cli_errors():
            run(cfg)
    except KeyboardInterrupt:  # Ctrl-C before training, or a second one during it
        print("interrupted: stopped at once; the last complete checkpoint (if any) is kept", file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None


def run(cfg: DictConfig) -> None:
    """Validate, train, and print where the outputs are."""
    from train.parent_watch import watch_launcher
    from train.trainer import Trainer

    watch_launcher()  # under torchrun: stop (checkpoint, exit) if the launcher dies
    config = validate(cfg)
    trainer = Trainer(config)
    if trainer.accelerator.is_main_process:
        save_hydra_record(cfg, trainer.out)
    summary = trainer.fit()
    if trainer.accelerator.is_main_process:
        head = "stopped by Ctrl-C" if summary["interrupted"] else "done"
        loss = summary.get("final_loss")
        print(
            f"{head}: {summary['step']} steps in {summary['wall_s']:.0f} s, final loss "
            + (f"{loss:.4f} (mean of the last {summary['final_loss_steps']} steps)" if loss is not None else "n/a")
            + f", outputs in {config.output_dir}"
        )
        for name, value in summary.items():
            if name not in ("step", "eval", "interrupted", "wall_s", "final_loss", "final_loss_steps") and value:
                print(f"  {name}: {value}")
    if summary["interrupted"]:
        print("continue with train.resume=latest", flush=True)
        raise SystemExit(INTERRUPTED)


def save_hydra_record(cfg: DictConfig, out: Path) -> None:
    """Hydra's record of the run (.hydra/config.yaml, overrides.yaml), written by the run that holds output_dir:
    Hydra itself would write it on every rank before the lock, over a live run's record."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    folder = out / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, folder / "config.yaml")
    if HydraConfig.initialized():
        OmegaConf.save(HydraConfig.get().overrides.task, folder / "overrides.yaml")


if __name__ == "__main__":
    # What Hydra rejects before calling main (unknown keys, group options, an output_dir it cannot create) and an
    # output_dir that holds another run (before Hydra writes into it): one line each, exit 2.
    with cli_errors():
        check_command_line(sys.argv[1:])
    main()
