"""Where a model named on the command line is: a local path, or a Hugging Face Hub name.

One rule for every scorer: a name that exists on disk is local, with or without ``./``
(``models/x`` is the folder ``models/x`` when there is one). Anything else is a Hub name only
when it could be one (``org/name``) and is either in the local Hub cache or the Hub answers
within a couple of seconds; otherwise `locate` fails at once with one line, instead of
transformers' ~50 s of retries when offline.

Examples
--------
>>> locate(".").local
True
>>> locate("no/such-model", hub=False)
Traceback (most recent call last):
...
FileNotFoundError: no/such-model: no such file or folder
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

HUB_CONNECT_TIMEOUT = 2.0  # seconds to wait for the Hub before calling it unreachable
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$|^[A-Za-z0-9][\w.-]*$")


@dataclass(frozen=True)
class ModelRef:
    """A located model: `source` is a local path, or a Hub name when `local` is False."""

    source: str
    local: bool
    offline: bool  # load with local_files_only=True (a local path, or a Hub name from the cache)


def locate(model: str, *, hub: bool = True, probe: str = "config.json") -> ModelRef:
    """Resolve `model` to a local path or a Hub name, or raise FileNotFoundError in one line.

    hub: whether a Hub name is acceptable (embedders and fastText files never download).
    probe: a file a cached Hub model of this kind has (to tell it is in the cache).
    """
    path = Path(model).expanduser()
    if path.exists():
        return ModelRef(str(path), local=True, offline=True)
    if not hub:
        raise FileNotFoundError(f"{model}: no such file or folder")
    if not _REPO_ID.match(model) or model.endswith((".gguf", ".bin", ".npz", ".safetensors")):
        raise FileNotFoundError(f"{model}: no such file or folder (nor a Hub name)")
    if _in_hub_cache(model, probe):
        return ModelRef(model, local=False, offline=not hub_reachable())
    if not hub_reachable():
        raise FileNotFoundError(
            f"{model}: no such file or folder, nor a Hub model in the local cache "
            "(the Hub is unreachable, so it cannot be downloaded)"
        )
    if not _on_hub(model):
        raise FileNotFoundError(f"{model}: no such file or folder, nor a model on the Hub")
    return ModelRef(model, local=False, offline=False)


def _on_hub(repo_id: str) -> bool:
    """Whether the Hub has the repository (True when it cannot tell: the download then says)."""
    try:
        from huggingface_hub import repo_exists

        return repo_exists(repo_id)
    except Exception:  # a network hiccup, a token problem: let the download itself report it
        return True


def _in_hub_cache(repo_id: str, probe: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        return isinstance(try_to_load_from_cache(repo_id, probe), str)
    except Exception:  # a malformed repo id for huggingface_hub's own validation
        return False


def hub_reachable() -> bool:
    """False when offline mode is set (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE) or the Hub's host
    does not accept a connection within HUB_CONNECT_TIMEOUT seconds."""
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in _OFFLINE_VARS):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return _accepts_connections(
        url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    )


@lru_cache(maxsize=4)
def _accepts_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=HUB_CONNECT_TIMEOUT):
            return True
    except OSError:
        return False


_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def model_size(model, device) -> tuple[int, str]:
    """(parameters, device name) of a loaded torch model: what a model stage's work is sized by."""
    return sum(p.numel() for p in model.parameters()), str(device)
