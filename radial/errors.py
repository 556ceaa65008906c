"""The project's own errors (bad config, data, checkpoint, LoRA file, missing path) and how the CLIs print them.

Every CLI (train/lora.py, data.prepare, data.shards, train.generate, radial.mask) runs its work in
`cli_errors()`: an error of ours, or a permission error from the OS, becomes one line `error: <message>` on stderr
and exit status 2; anything else keeps its traceback (a bug, not a user mistake). `RADIAL_DEBUG=1` (or
`HYDRA_FULL_ERROR=1`, or a CLI's `--debug`) shows the full traceback of ours too.

Each class also derives from the builtin its callers caught before (ValueError, FileNotFoundError, RuntimeError),
so `except ValueError` around our calls keeps working. radial/ imports nothing of ours; train/ and data/ use these.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

DEBUG_VARIABLES = ("RADIAL_DEBUG", "HYDRA_FULL_ERROR")


class RadialError(Exception):
    """Base of the errors a user can fix from the message alone (it names the key, file or value)."""


class ConfigError(RadialError, ValueError):
    """A config value or command-line option that is out of range, of the wrong kind, or inconsistent."""


class DataError(RadialError, ValueError):
    """A dataset, shard, index or item that is malformed, mismatched, or holds non-finite values."""


class CheckpointError(RadialError, ValueError):
    """A checkpoint that is incomplete, corrupt, or could not be written."""


class LoraFileError(RadialError, ValueError):
    """A LoRA file that is unreadable or does not belong to the model it is loaded into."""


class MissingPathError(RadialError, FileNotFoundError):
    """A path given by the user (config key, option) that does not exist."""


class TrainingError(RadialError, RuntimeError):
    """A run that cannot give a useful result (losses that stay non-finite, most steps skipped)."""


#: what `cli_errors` prints as one line: ours, and the OS's permission errors (their message names the file)
USER_ERRORS: tuple[type[BaseException], ...] = (RadialError, PermissionError)


def debug_requested() -> bool:
    """Whether the environment asks for full tracebacks (RADIAL_DEBUG=1 or HYDRA_FULL_ERROR=1)."""
    return any(os.environ.get(v, "").strip() not in ("", "0", "false") for v in DEBUG_VARIABLES)


def one_line(error: BaseException) -> str:
    """The error's message on one line. An error re-raised by a DataLoader worker carries the worker's traceback
    in its message: its last line is the original message."""
    text = str(error).strip() or type(error).__name__
    if "\nOriginal Traceback" in text:
        last = text.splitlines()[-1]
        name = type(error).__name__
        text = last.split(f"{name}: ", 1)[1] if f"{name}: " in last else last
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


@contextlib.contextmanager
def cli_errors(debug: bool = False, expected: tuple[type[BaseException], ...] = USER_ERRORS) -> Iterator[None]:
    """Run a CLI's work: `expected` errors become `error: <message>` on stderr and exit status 2 (unless debug)."""
    try:
        yield
    except expected as e:
        if debug or debug_requested():
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None
