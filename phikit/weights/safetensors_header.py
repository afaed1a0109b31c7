"""Parse and check a safetensors header, strictly: every problem is a `CheckpointError` naming the file and tensor.

The format: 8 bytes little-endian header length N, N bytes of a JSON object {name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the data; offsets count from the data's start.
phikit reads the tensors itself (copy-on-write mappings: `checkpoint.CheckpointReader`), so the header is checked
here as the `safetensors` library checks it (its Rust parser: offsets contiguous from 0 and covering the data exactly,
byte counts equal to shape x dtype size, no negative or fractional numbers), with messages that name the tensor; the
library then opens the file too (`safe_open`), so anything it refuses is refused here as well.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Any

from .refs import ITEMSIZE, SAFETENSORS_DTYPES, CheckpointError, TensorRef

MAX_HEADER = 100_000_000  # the safetensors library's limit
METADATA = "__metadata__"


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _load_json(path: str, raw: bytes) -> Any:
    """The header's JSON, parsed with duplicate keys refused (json would keep the last one silently)."""
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except _Duplicate as e:
        raise CheckpointError(f"{path}: the safetensors header names {e.key!r} twice, so which bytes it means is "
                              f"ambiguous; re-download or re-save this file") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, too many digits, nesting
        raise CheckpointError(f"{path} has a corrupt safetensors header ({type(e).__name__}: {str(e)[:200]}); "
                              f"re-download it") from None


def _read_raw_header(path: str) -> tuple[bytes, int, int]:
    """(header bytes, header length N, file size); checks the length prefix against the file."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path} is truncated ({size} bytes, not even a header); re-download it")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > MAX_HEADER:
                raise CheckpointError(f"{path} is truncated or not a safetensors file (header says {n} bytes, file "
                                      f"has {size}; at most {MAX_HEADER} allowed); re-download it")
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path} could not be read ({e}); check the file and its permissions") from e
    if len(raw) != n:
        raise CheckpointError(f"{path} changed while it was read (header of {n} bytes, got {len(raw)}); retry")
    return raw, n, size


def _check_metadata(path: str, metadata: Any) -> None:
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: the safetensors header's {METADATA} must be an object of strings to "
                              f"strings, got {json.dumps(metadata)[:200]}; re-save the file")


def _entry(path: str, name: str, info: Any, data_start: int, data_size: int) -> TensorRef:
    """One tensor's header entry, checked: known dtype, shape of non-negative integers, offsets inside the data
    and as many bytes as shape x dtype size."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict):
        raise CheckpointError(f"{where} has header entry {json.dumps(info)[:200]}, not an object with dtype, shape "
                              f"and data_offsets; re-download this file")
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in info]
    if missing:
        raise CheckpointError(f"{where} lacks {', '.join(missing)} in its header entry; re-download this file")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise CheckpointError(f"{where} has dtype {dtype!r}, which phikit does not read (supported: "
                              f"{', '.join(SAFETENSORS_DTYPES)}); convert the checkpoint to one of them")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise CheckpointError(f"{where} has shape {json.dumps(shape)[:200]}; a shape is a list of non-negative "
                              f"integers. Re-download this file")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
        raise CheckpointError(f"{where} has data_offsets {json.dumps(offsets)[:200]}; they must be two integers "
                              f"[begin, end]. Re-download this file")
    begin, end = offsets
    if begin < 0 or end < begin:
        raise CheckpointError(f"{where} has data_offsets [{begin}, {end}]: begin must be >= 0 and end >= begin; "
                              f"re-download this file")
    if end > data_size:
        raise CheckpointError(f"{path} is truncated: tensor {name!r} ends at byte {data_start + end} but the file "
                              f"has {data_start + data_size} bytes; re-download this file")
    nbytes = math.prod(shape) * ITEMSIZE[dtype]
    if end - begin != nbytes:
        raise CheckpointError(f"{where} has shape {shape} of {dtype} ({nbytes} bytes) but data_offsets [{begin}, "
                              f"{end}] hold {end - begin} bytes; re-download this file")
    return TensorRef(path, SAFETENSORS_DTYPES[dtype], tuple(shape), data_start + begin, data_start + end)


def _check_layout(path: str, ranges: list[tuple[int, int, str]], data_size: int) -> None:
    """Tensors must cover the data exactly, one after another: no tensor overlaps another (their values would alias)
    and no bytes belong to none (the safetensors library refuses both)."""
    covered, last = 0, None
    for begin, end, name in sorted(ranges):
        if begin < covered:
            raise CheckpointError(f"{path}: tensor {name!r} (data_offsets [{begin}, {end}]) overlaps tensor "
                                  f"{last!r}, which ends at {covered}; re-download this file")
        if begin > covered:
            raise CheckpointError(f"{path}: bytes [{covered}, {begin}) of the data before tensor {name!r} belong to "
                                  f"no tensor; the header does not describe this file. Re-download it")
        covered, last = end, name
    if covered != data_size:
        raise CheckpointError(f"{path}: the tensors cover {covered} bytes of the {data_size} bytes of data after the "
                              f"header; the header does not describe this file. Re-download it")


def _library_check(path: str) -> None:
    """The safetensors library opens the file too: whatever it refuses is refused here (as transformers would)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt"):
            pass
    except Exception as e:  # SafetensorError, and whatever a future version raises for a bad file
        raise CheckpointError(f"{path} is not a valid safetensors file: {str(e)[:300]}; re-download it") from e


def read_safetensors_header(path: str) -> dict[str, TensorRef]:
    """Parse and check a safetensors header: every tensor's dtype, shape and byte range. Returns {name: TensorRef}."""
    raw, n, size = _read_raw_header(path)
    header = _load_json(path, raw)
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is a JSON {type(header).__name__}, not an object of "
                              f"tensors; re-download it")
    if METADATA in header:
        _check_metadata(path, header[METADATA])
    data_start, data_size = 8 + n, size - 8 - n
    refs = {name: _entry(path, name, info, data_start, data_size) for name, info in header.items() if name != METADATA}
    _check_layout(path, [(r.begin - data_start, r.end - data_start, k) for k, r in refs.items()], data_size)
    _library_check(path)
    return refs
