"""Checkpoint files: find them in a folder, check them, read tensors one at a time, write them (sharded).

Formats: `model.safetensors`, sharded `model.safetensors.index.json`, and `pytorch_model.bin` (+ index) read only with
`torch.load(weights_only=True)` (no pickled code runs). Safetensors are memory-mapped copy-on-write: a parameter of the
file's dtype is a view of the file's pages (no copy, nothing read until used); one converted to another dtype is
copied and its file pages dropped, so loading holds about one copy of the weights in memory either way.
Every problem raises `CheckpointError` naming the file (and tensor) and the fix.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import struct
from dataclasses import dataclass
import torch

SAFE_SINGLE, SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN_SINGLE, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFE_SINGLE, SAFE_INDEX, BIN_SINGLE, BIN_INDEX)
SHARD_PATTERN = r"model-\d{5}-of-\d{5}\.safetensors"

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or does not fit the model; the message names it."""


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lives: file, dtype, shape and byte range (safetensors) or None (read via torch.load)."""

    file: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int = 0
    end: int = 0


def find_weight_files(folder: str) -> list[str]:
    """The weight files of a checkpoint folder, safetensors first; raise naming what was looked for."""
    present = set(os.listdir(folder))
    for single, index in ((SAFE_SINGLE, SAFE_INDEX), (BIN_SINGLE, BIN_INDEX)):
        if index in present:
            return _shards_from_index(folder, index)
        if single in present:
            return [os.path.join(folder, single)]
    raise CheckpointError(f"no weights in {folder}: looked for {', '.join(WEIGHT_FILES)}; download the checkpoint "
                          f"completely or point at the folder that holds them")


def _shards_from_index(folder: str, index: str) -> list[str]:
    path = os.path.join(folder, index)
    try:
        with open(path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not a valid shard index ({e}); re-download it") from e
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
    if missing:
        raise CheckpointError(f"{path} names {len(shards)} shards but {len(missing)} are absent from {folder}: "
                              f"{', '.join(missing[:5])}; download the missing shard files")
    return [os.path.join(folder, s) for s in shards]


def read_safetensors_header(path: str) -> dict[str, TensorRef]:
    """Parse and check a safetensors header: every tensor's byte range must lie inside the file."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is truncated ({size} bytes, not even a header); re-download it")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100_000_000:
            raise CheckpointError(f"{path} is truncated or not a safetensors file (header says {n} bytes, file has "
                                  f"{size}); re-download it")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path} has a corrupt safetensors header ({e}); re-download it") from e
    header.pop("__metadata__", None)
    refs: dict[str, TensorRef] = {}
    data_start, data_size = 8 + n, size - 8 - n
    for name, info in header.items():
        try:
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            begin, end = info["data_offsets"]
            shape = tuple(info["shape"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry {info!r}") from e
        if end > data_size:
            raise CheckpointError(f"{path} is truncated: tensor {name!r} ends at byte {data_start + end} but the file "
                                  f"has {size} bytes; re-download this file")
        refs[name] = TensorRef(path, dtype, shape, data_start + begin, data_start + end)
    return refs


class CheckpointReader:
    """All tensors of a checkpoint by name, read lazily. Use as a context manager to close mappings."""

    def __init__(self, files: list[str]) -> None:
        self.refs: dict[str, TensorRef] = {}
        self._maps: dict[str, mmap.mmap] = {}
        self._bins: dict[str, dict[str, torch.Tensor]] = {}
        for path in files:
            if path.endswith(".safetensors"):
                refs = read_safetensors_header(path)
            else:
                refs = {k: TensorRef(path, v.dtype, tuple(v.shape)) for k, v in self._load_bin(path).items()}
            for name in refs.keys() & self.refs.keys():
                raise CheckpointError(f"tensor {name!r} appears in both {self.refs[name].file} and {path}")
            self.refs.update(refs)

    def _load_bin(self, path: str) -> dict[str, torch.Tensor]:
        if path not in self._bins:
            try:
                self._bins[path] = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:  # torch raises several types for bad files
                raise CheckpointError(f"{path} could not be read as a weights-only PyTorch file ({e}); re-download "
                                      f"it, or convert it to safetensors") from e
        return self._bins[path]

    def get(self, name: str) -> torch.Tensor:
        """The tensor `name`, backed by the file's pages: a copy-on-write mapping, so nothing is read until used,
        the page cache is shared, and writing to it (fine-tuning) copies only the pages written."""
        ref = self.refs[name]
        if not ref.file.endswith(".safetensors"):
            return self._load_bin(ref.file)[name]
        mm = self._maps.get(ref.file)
        if mm is None:
            with open(ref.file, "rb") as f:
                mm = self._maps[ref.file] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        itemsize = torch.empty(0, dtype=ref.dtype).element_size()
        count = (ref.end - ref.begin) // itemsize
        if count == 0 or ref.begin % itemsize:
            # empty, or not aligned for a view: read a private copy instead
            data = bytearray(mm[ref.begin:ref.end])
            return torch.frombuffer(data, dtype=ref.dtype).reshape(ref.shape) if count else torch.empty(
                ref.shape, dtype=ref.dtype)
        return torch.frombuffer(mm, dtype=ref.dtype, count=count, offset=ref.begin).reshape(ref.shape)

    def release(self, name: str, start: int = 0, stop: int | None = None) -> None:
        """Drop the file pages of `name` (or of its bytes [start, stop)) from memory once a converted copy exists;
        they are re-read if needed."""
        ref = self.refs[name]
        mm = self._maps.get(ref.file)
        if mm is not None:
            _drop_pages(mm, ref.begin + start, ref.end if stop is None else min(ref.end, ref.begin + stop))

    def close(self) -> None:
        # Mappings stay alive as long as tensors view them; dropping our references is all closing means here.
        self._maps.clear()
        self._bins.clear()

    def __enter__(self) -> "CheckpointReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _drop_pages(mm: mmap.mmap, begin: int, end: int) -> None:
    """Tell the kernel we are done with these file pages so they stop counting in our resident memory."""
    if not hasattr(mmap, "MADV_DONTNEED"):
        return
    page = mmap.PAGESIZE
    start = begin // page * page
    length = (end - start + page - 1) // page * page
    try:
        mm.madvise(mmap.MADV_DONTNEED, start, min(length, len(mm) - start))
    except (OSError, ValueError):
        pass


def parse_size(size: int | str) -> int:
    """'5GB' / '500MB' / '20KB' / bytes -> bytes (decimal units, as transformers uses)."""
    if isinstance(size, int):
        return size
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    text = size.strip().upper()
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            return int(float(text[:-len(unit)]) * units[unit])
    raise ValueError(f"max_shard_size={size!r} is not a size; use e.g. '5GB', '500MB' or a number of bytes")


def write_safetensors(state: dict[str, torch.Tensor], folder: str, max_shard_size: int | str = "5GB") -> list[str]:
    """Write `state` as model.safetensors, or as shards plus model.safetensors.index.json when it exceeds
    max_shard_size. Files are written under temporary names and renamed at the end, so a failure leaves no
    half-written checkpoint. Returns the file names written."""
    from safetensors.torch import save_file

    limit = parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.detach().to("cpu").contiguous()
        size += nbytes
    names = [SAFE_SINGLE] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    os.makedirs(folder, exist_ok=True)
    pending = []
    for name, shard in zip(names, shards):
        tmp = os.path.join(folder, name + ".tmp")
        save_file(shard, tmp, metadata={"format": "pt"})
        pending.append((tmp, os.path.join(folder, name)))
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                 "weight_map": {k: n for n, shard in zip(names, shards) for k in shard}}
        tmp = os.path.join(folder, SAFE_INDEX + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2, sort_keys=True)
        pending.append((tmp, os.path.join(folder, SAFE_INDEX)))
    for tmp, final in pending:
        os.replace(tmp, final)
    written = set(names) | ({SAFE_INDEX} if len(shards) > 1 else set())
    for name in os.listdir(folder):  # a previous save with another layout would otherwise shadow this one
        if name not in written and (name in (SAFE_SINGLE, SAFE_INDEX) or re.fullmatch(SHARD_PATTERN, name)):
            os.remove(os.path.join(folder, name))
    return sorted(written)

