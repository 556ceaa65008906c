"""Model locations: a local diffusers folder, or a Hub id resolved offline from the Hugging Face cache.

Users of finetrainers / SimpleTuner pass Hub ids (`Wan-AI/Wan2.1-T2V-1.3B-Diffusers`); diffusers resolves them from
the cache. We do the same, never downloading: `huggingface_hub.snapshot_download(..., local_files_only=True)` gives
the cached snapshot folder, and everything downstream sees a local folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from radial.errors import MissingPathError
from radial.families import FAMILIES

LAYOUT = "model_index.json, transformer/ (config.json + *.safetensors), vae/, text_encoder/, tokenizer/, scheduler/"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as the environment names it now (HF_HUB_CACHE, else HF_HOME/hub, else default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "huggingface" / "hub"


def looks_like_repo_id(value: str) -> bool:
    return bool(_REPO_ID.match(value)) and not value.startswith((".", "~"))


def cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of a Hub model repository, or None when it is not in the cache (no network)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, cache_dir=hub_cache_dir(), local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        return None


def download_hint(family: str | None) -> str:
    """What to download for `family` and the folder layout expected (for errors about a missing model path)."""
    repo = FAMILIES[family].hub_repo if family in FAMILIES else "<org>/<model>-Diffusers"
    return (
        f"download it with `hf download {repo}` (then pass the Hub id) or with `--local-dir "
        f"/models/{repo.split('/')[-1]}` (then pass that folder); a diffusers folder holds {LAYOUT}"
    )


def resolve_model_path(value: str | Path, *, key: str, family: str | None = None) -> Path:
    """A local folder as given, or the cached snapshot of a Hub id; otherwise a one-line MissingPathError naming
    `key`, what to download and the layout expected."""
    text = str(value).strip()
    path = Path(text).expanduser()
    if path.exists():
        return path
    if looks_like_repo_id(text):
        snapshot = cached_snapshot(text)
        if snapshot is not None:
            return snapshot
        where = f"no such folder, and Hub id {text!r} is not in the Hugging Face cache ({hub_cache_dir()})"
    else:
        where = "no such folder"
    raise MissingPathError(f"{key}={text}: {where}; {download_hint(family)}")


def resolve_pipeline_path(value: str | Path, family: str | None = None) -> Path:
    """`train.generate --model`: a local pipeline folder or a cached Hub id."""
    return resolve_model_path(value, key="--model", family=family)
