"""Whether a model loads from this machine alone, told at once: no torch, no transformers, no request to the hub.

compute.models loads; this only looks. A page that shows something computed from a run's model (the Image
page's attention maps) asks ``missing_locally`` first, so a store shared without its model costs nothing: a
hub id is looked up in the local Hugging Face cache the way huggingface_hub's ``try_to_load_from_cache`` does
(the snapshot ``main`` points to), which the tests check against that function.
"""

from __future__ import annotations

import re
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")  # "name" or "org/name"
# A model's weights under any of the names transformers looks for.
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def hub_cache() -> Path:
    """The Hugging Face hub cache ($HF_HUB_CACHE, else under $HF_HOME, else ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants  # the constants alone: light, and they read the environment

    return Path(constants.HF_HUB_CACHE)


def cached_file(repo_id: str, filename: str, cache: Path | None = None) -> Path | None:
    """``filename`` of the hub model ``repo_id`` in the local cache, at the revision ``main`` points to (what
    loading it offline reads); None when it is not there."""
    folder = (cache or hub_cache()) / ("models--" + repo_id.replace("/", "--"))
    ref = folder / "refs" / "main"
    if not ref.is_file():
        return None
    path = folder / "snapshots" / ref.read_text().strip() / filename
    return path if path.is_file() else None


def missing_locally(name_or_path: str, cache: Path | None = None) -> str | None:
    """None when ``name_or_path`` loads from this machine alone: a save_pretrained folder, or a hub id whose
    config and weights are in the local Hugging Face cache (``cache``: that cache, by default hub_cache()).
    Otherwise one line saying what is missing."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return None if (path / "config.json").is_file() else f"the folder {name_or_path} has no config.json"
    if path.is_absolute() or name_or_path.startswith((".", "~")) or not HUB_ID.match(name_or_path):
        return f"the model folder {name_or_path} is not on this machine"
    cache = cache or hub_cache()
    if cached_file(name_or_path, "config.json", cache) and any(cached_file(name_or_path, w, cache) for w in WEIGHTS):
        return None
    return f"the model {name_or_path} is not in the local Hugging Face cache ({cache})"
