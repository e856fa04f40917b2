"""Getting a trained model out: a standard Hugging Face folder that transformers loads as is."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from onebyte.tasks.loaded_model import LoadedModel, ModelLoadError, one_line
from onebyte.tasks.model_cache import make_readable
from onebyte.tasks.pretrained import drop_gguf_quantizer, quiet_transformers

__all__ = ["EXPORT_INFO", "save_pretrained_folder"]

EXPORT_INFO = "onebyte_export.json"


def save_pretrained_folder(loaded: LoadedModel, out: str | Path, info: dict | None = None) -> Path:
    """Write ``loaded`` as a standard Hugging Face folder: config, safetensors weights, tokenizer,
    generation config, plus ``onebyte_export.json`` (where the weights came from).

    The folder is written beside ``out`` and renamed into place, so a failed export leaves
    nothing behind; an existing non-empty ``out`` is refused.
    """
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelLoadError(f"output folder {out} already exists and is not empty; choose a new folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise ModelLoadError(f"cannot write to {out.parent}: {one_line(exc)}") from None
    try:
        model = loaded.model
        drop_gguf_quantizer(model)  # a GGUF-born model must save as plain weights
        with quiet_transformers():
            model.save_pretrained(str(tmp), safe_serialization=True)
            loaded.tokenizer.save_pretrained(str(tmp))
            if getattr(model, "generation_config", None) is not None and not (tmp / "generation_config.json").exists():
                model.generation_config.save_pretrained(str(tmp))
        (tmp / EXPORT_INFO).write_text(json.dumps(info or {}, indent=1, sort_keys=True, default=str) + "\n")
        make_readable(tmp)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.rename(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise ModelLoadError(f"could not write {out}: {one_line(exc)}") from None
        raise
    return out
