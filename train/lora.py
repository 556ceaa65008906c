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
from train.config import validate  # noqa: E402


@hydra.main(config_path="../configs", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    # Our errors (config, data, checkpoint, LoRA, paths) as one line and exit 2, inside the task function: Hydra
    # would print its own "Error executing job" and the traceback (RADIAL_DEBUG=1 / HYDRA_FULL_ERROR=1 keep it).
    with cli_errors():
        run(cfg)


def run(cfg: DictConfig) -> None:
    """Validate, train, and print where the outputs are."""
    from train.trainer import Trainer

    config = validate(cfg)
    trainer = Trainer(config)
    summary = trainer.fit()
    if trainer.accelerator.is_main_process:
        loss = summary.get("final_loss")
        print(
            f"done: {summary['step']} steps in {summary['wall_s']:.0f} s, final loss "
            + (f"{loss:.4f} (mean of the last {summary['final_loss_steps']} steps)" if loss is not None else "n/a")
            + f", outputs in {config.output_dir}"
        )
        for name, value in summary.items():
            if name not in ("step", "eval", "wall_s", "final_loss", "final_loss_steps") and value:
                print(f"  {name}: {value}")


if __name__ == "__main__":
    main()
