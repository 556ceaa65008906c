"""Console lines during training that keep the progress bar whole: ours through tqdm.write, library log records
(Accelerate's checkpoint messages, Hydra's handlers) redirected to it while the bar runs."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


def say(accelerator, line: str) -> None:
    """Print `line` once per machine (as accelerator.print) above the progress bar instead of through it."""
    if accelerator.is_local_main_process:
        tqdm.write(line)


@contextlib.contextmanager
def bar_safe_logging() -> Iterator[None]:
    """Log records of the root logger's console handlers go through tqdm.write for the block."""
    with logging_redirect_tqdm(loggers=[logging.root]):
        yield
