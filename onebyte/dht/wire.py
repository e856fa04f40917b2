"""Strict, bounded decoding of what other peers send: msgpack record values and JSON answers.

Every byte an attacker controls passes through here before anything else looks at it (docs/
PROTOCOL.md §9). The limits are far above what any onebyte record needs and far below what breaks
a reader: a value nested a few hundred levels deep unpacks in msgpack's C code but cannot be
pickled through hivemind's pipe to the DHT process (RecursionError), and unknown extension types
make hivemind's own decoder log a warning per object. So:

- msgpack: at most ``MAX_DEPTH`` nested containers, ``MAX_CONTAINER_ITEMS`` items per container,
  ``MAX_ITEMS`` objects in all, no extension types at all (hivemind's tuple type included: onebyte
  records are plain maps, arrays, strings, bytes and numbers), string map keys, valid UTF-8;
- decoded objects (``check_object``): the same bounds, walked iteratively (never recursively),
  for values that some other decoder produced (hivemind's, in the DHT process).

Both raise ``WireError`` whose ``reason`` is one of the short names counted by readers and the
validator (``onebyte_records_rejected_total{reason}``).
"""

from __future__ import annotations

from typing import Any

import msgpack

MAX_DEPTH = 8  # a manifest (map -> task_description map -> list) needs 3
MAX_CONTAINER_ITEMS = 1024
MAX_ITEMS = 4096
MAX_BYTES = 64 * 1024  # a DHT value is at most ~8.5 KB (validator.py); this bounds anything else decoded here


class WireError(ValueError):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}{': ' + detail if detail else ''}")
        self.reason = reason


def _refuse_ext(code: int, data: bytes):
    raise WireError("extension_type", f"msgpack extension type {code}")


def loads(data: bytes, *, max_bytes: int = MAX_BYTES) -> Any:
    """Decode msgpack ``data`` within the bounds above; WireError(reason) otherwise."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError("malformed", f"{type(data).__name__}, not bytes")
    if len(data) > max_bytes:
        raise WireError("oversized", f"{len(data)} bytes")
    try:
        obj = msgpack.unpackb(
            bytes(data),
            raw=False,
            ext_hook=_refuse_ext,
            strict_map_key=True,
            use_list=True,
            max_str_len=max_bytes,
            max_bin_len=max_bytes,
            max_array_len=MAX_CONTAINER_ITEMS,
            max_map_len=MAX_CONTAINER_ITEMS,
            max_ext_len=0,
        )
    except WireError:
        raise
    except msgpack.StackError:
        raise WireError("too_deep", "nested beyond msgpack's own stack") from None
    except (ValueError, TypeError, msgpack.UnpackException) as e:  # ExtraData, FormatError, UnicodeDecodeError, limits
        text = str(e)
        if "exceeds max_ext_len" in text:
            raise WireError("extension_type", "msgpack extension type") from None
        if "exceeds max_" in text:
            raise WireError("oversized", text[:80]) from None
        raise WireError("not_msgpack", type(e).__name__) from None
    check_object(obj)
    return obj


def check_object(obj: Any, *, max_depth: int = MAX_DEPTH, max_items: int = MAX_ITEMS) -> None:
    """Iteratively check a decoded value: plain types only, bounded depth and size."""
    stack = [(obj, 0)]
    seen = 0
    while stack:
        o, depth = stack.pop()
        seen += 1
        if seen > max_items:
            raise WireError("oversized", f"more than {max_items} objects")
        if o is None or isinstance(o, (bool, int, float, str, bytes)):
            continue
        if isinstance(o, (list, dict)):
            if depth >= max_depth:
                raise WireError("too_deep", f"nested deeper than {max_depth}")
            if len(o) > MAX_CONTAINER_ITEMS:
                raise WireError("oversized", f"a container of {len(o)} items")
            if isinstance(o, dict):
                for k, v in o.items():
                    if not isinstance(k, (str, bytes)):
                        raise WireError("malformed", f"a map key of type {type(k).__name__}")
                    stack.append((v, depth + 1))
            else:
                stack.extend((v, depth + 1) for v in o)
            continue
        raise WireError(
            "extension_type" if not isinstance(o, (tuple, set)) else "malformed", f"a value of type {type(o).__name__}"
        )


def clip(text: object, limit: int = 200) -> str:
    """Attacker-controlled text for a log line: at most ``limit`` characters, control characters escaped."""
    s = str(text)
    if len(s) > limit:
        s = s[:limit] + f"...[{len(s) - limit} more]"
    return s.encode("unicode_escape", "backslashreplace").decode("ascii", "replace") if not s.isprintable() else s
