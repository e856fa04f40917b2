"""Models that are not built in: a local folder (a ``save_pretrained`` folder, or one holding a
single ``.gguf`` file), a path to a ``.gguf`` file, or a Hugging Face hub repository id.

A hub id is tried from the local hub cache first; the network is used only when the hub endpoint
answers a quick TCP probe, so an offline machine fails in about a second instead of retrying for
half a minute. The probe is shared with hub datasets (onebyte.tasks.sources).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from onebyte.tasks.builtin_models import BUILTIN_MODELS
from onebyte.tasks.loaded_model import ModelLoadError, one_line
from onebyte.tasks.pretrained import drop_gguf_quantizer, from_pretrained

__all__ = ["hub_reachable", "load_hub", "load_local", "looks_like_repo_id", "offline"]


def _hub_endpoint() -> str:
    if os.environ.get("HF_ENDPOINT"):
        return os.environ["HF_ENDPOINT"]
    with contextlib.suppress(Exception):
        from huggingface_hub import constants

        return constants.ENDPOINT
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def offline() -> bool:
    """True when any of the Hugging Face offline switches is set."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


@functools.lru_cache(maxsize=8)
def _probe(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when offline mode is set or the hub endpoint does not accept a TCP connection.

    With an HTTP(S) proxy configured the probe is skipped (True): the proxy decides.
    """
    if offline():
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(_hub_endpoint())
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    return _probe(host, port, timeout)


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def looks_like_repo_id(name: str) -> bool:
    """``"gpt2"`` or ``"owner/name"``; not a path (``./x``, ``/x``, ``~/x``, ``a/b/c``)."""
    return bool(_REPO_ID.match(name)) and not name.endswith((".gguf", "/"))


def _gguf_file(name: str, path: Path) -> tuple[Path, str | None]:
    """The folder to load from and the ``.gguf`` file in it to read, if the model is one."""
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"model {name!r} is a file but not a .gguf file; pass a model folder or a .gguf file")
        return path.parent, path.name
    if (path / "config.json").is_file():
        return path, None
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    if len(ggufs) == 1:
        return path, ggufs[0]
    if len(ggufs) > 1:
        raise ModelLoadError(
            f"model folder {name!r} holds several .gguf files ({', '.join(ggufs)}); pass the path of the one to load"
        )
    raise ModelLoadError(f"model folder {name!r} has neither a config.json nor a .gguf file")


def load_local(name: str, path: Path, kind: str, torch_dtype, num_labels: int):
    """A model from a local folder or ``.gguf`` file, never from the network."""
    folder, gguf_file = _gguf_file(name, path)
    extra = {"local_files_only": True}
    if gguf_file:
        extra["gguf_file"] = gguf_file
    try:
        model, tok = from_pretrained(str(folder), kind, torch_dtype, num_labels, **extra)
    except Exception as exc:  # noqa: BLE001 - turned into a one-line error
        raise ModelLoadError(f"could not load model {name!r} from {folder}: {one_line(exc)}") from None
    if gguf_file and getattr(model, "hf_quantizer", None) is not None:
        drop_gguf_quantizer(model)  # dequantized to plain tensors; allow save_pretrained later
    return model, tok


def load_hub(name: str, kind: str, torch_dtype, num_labels: int):
    """A model by hub id: the local hub cache first, the network only when the hub answers."""
    try:  # the local hub cache first: no network, no waiting
        return from_pretrained(name, kind, torch_dtype, num_labels, local_files_only=True)
    except Exception:  # noqa: BLE001
        pass
    if not hub_reachable():
        raise ModelLoadError(
            f"model {name!r} not found: not a local folder, not a built-in "
            f"({', '.join(BUILTIN_MODELS)}), not in the local hub cache, and the hub is unreachable"
            + (" (offline mode is set)" if offline() else "")
        )
    try:
        return from_pretrained(name, kind, torch_dtype, num_labels)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(
            f"model {name!r} not found: not a local folder and the hub has no such repo or refused it ({one_line(exc)})"
        ) from None
