"""The trainer's command line checked before Hydra takes it: what Hydra itself rejects (an unknown key, a config
group option that does not exist, override syntax) and the output_dir it creates, as one-line ConfigErrors.

Hydra reports those before our task function runs, in its own words (for a typo'd key: append it with `+`) and
with exit status 1; composing the same overrides first lets us name the closest valid key instead. An output_dir
holding another run is refused here too, before Hydra writes its `.hydra/` folder into it.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path

from radial.errors import ConfigError
from train.config import compose, unknown_key_error
from train.run_dir import check_output_dir


def _composition_error(error: Exception, overrides: Sequence[str]) -> ConfigError:
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(error, MissingConfigException) and getattr(error, "options", None):
        group, option = str(error.missing_cfg_file).rsplit("/", 1)
        close = difflib.get_close_matches(option, error.options, n=1, cutoff=0.5)
        hint = f"did you mean {group}={close[0]}? " if close else ""
        return ConfigError(f"{group}={option}: no such option; {hint}(options: {', '.join(error.options)})")
    if isinstance(error, OverrideParseException):
        first = str(error.message).splitlines()[0]
        return ConfigError(f"{error.override}: cannot parse this override ({first}); expected key=value")
    key = getattr(error.__cause__, "full_key", None)
    if key:
        given = next((o.split("=", 1) for o in overrides if o.lstrip("~+").split("=", 1)[0] == key), [key, "..."])
        return unknown_key_error(str(key), given[1] if len(given) > 1 else "...")
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ConfigError(first)


def check_output_dir_writable(out: str) -> None:
    """output_dir exists or can be created, and files can be written in it."""
    path = Path(out).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"output_dir={out}: cannot create this folder ({e.strerror or e}); choose a writable output_dir=..."
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir={out}: this folder is not writable; choose a writable output_dir=...")


def _check_not_live(out: str) -> None:
    """A live run in output_dir is refused with the run lock's message (host, pid), the more precise one. Rank 0
    alone probes: the ranks of one launch would otherwise see each other's probe as a live run."""
    from radial.run_lock import lock_folder

    if os.environ.get("RANK", "0") != "0" or not Path(out).expanduser().is_dir():
        return
    lock_folder(out, "output_dir").release()


def check_command_line(argv: Sequence[str]) -> None:
    """Compose the overrides in `argv` as Hydra will; a ConfigError for what Hydra would refuse, for an output_dir
    that cannot be written, and for one that holds another run. Hydra's own flags (`--help`, `-m`, ...) are left
    to Hydra."""
    overrides = list(argv)
    if any(a.startswith("-") for a in overrides):
        return
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = compose(overrides)
    except (HydraException, OmegaConfBaseException) as e:
        raise _composition_error(e, overrides) from None
    try:
        out = OmegaConf.select(cfg, "output_dir", default=None)
        resume, overwrite = OmegaConf.select(cfg, "train.resume"), OmegaConf.select(cfg, "train.overwrite")
    except OmegaConfBaseException:
        return  # validate() names the key
    if not isinstance(out, str) or not out:
        return
    _check_not_live(out)
    check_output_dir(out, resume, overwrite is True)
    check_output_dir_writable(out)
