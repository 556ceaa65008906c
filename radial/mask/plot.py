"""A picture of a block mask: kept blocks dark, frame boundaries and the video/text border marked."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_mask_png(mask: np.ndarray, path: str | Path, *, title: str = "", frame_edges: list[int] | None = None) -> Path:
    """Write the [nb, nb] mask as a PNG (matplotlib, headless) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 7), dpi=150)
    ax.imshow(mask, cmap="Greys", interpolation="nearest", vmin=0, vmax=1)
    for edge in frame_edges or []:
        ax.axhline(edge - 0.5, color="tab:blue", lw=0.3, alpha=0.5)
        ax.axvline(edge - 0.5, color="tab:blue", lw=0.3, alpha=0.5)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("key block")
    ax.set_ylabel("query block")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def frame_block_edges(num_frames: int, tokens_per_frame: int, block_size: int, max_lines: int = 64) -> list[int]:
    """Block indices where frames start, thinned to at most `max_lines` lines so large masks stay readable."""
    step = max(1, -(-num_frames // max_lines))
    return [int(np.floor(i * tokens_per_frame / block_size)) for i in range(step, num_frames, step)]
