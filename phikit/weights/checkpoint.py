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

import torch

from .refs import DTYPE_NAMES, SAFETENSORS_DTYPES, CheckpointError, TensorRef
from .safetensors_header import read_safetensors_header
from .shard_index import (BIN_INDEX, BIN_SINGLE, SAFE_INDEX, SAFE_SINGLE, WEIGHT_FILES, check_relative_name,
                          find_weight_files, read_shard_index, with_variant)

SHARD_PATTERN = r"model-\d{5}-of-\d{5}\.safetensors"


class CheckpointReader:
    """All tensors of a checkpoint by name, read lazily. Use as a context manager to close mappings.
    `use_mmap=False` reads each safetensors file into memory once instead of mapping it (transformers'
    `disable_mmap`, for file systems where mappings misbehave); the values are the same."""

    def __init__(self, files: list[str], use_mmap: bool = True) -> None:
        self.refs: dict[str, TensorRef] = {}
        self._maps: dict[str, mmap.mmap | bytearray] = {}
        self._bins: dict[str, dict[str, torch.Tensor]] = {}
        self._use_mmap = use_mmap
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
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:  # torch raises several types for bad files
                raise CheckpointError(f"{path} could not be read as a weights-only PyTorch file ({e}); re-download "
                                      f"it, or convert it to safetensors") from e
            if not isinstance(state, dict):
                raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict (tensor name -> "
                                      f"tensor); re-save it with torch.save(model.state_dict(), ...)")
            bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
            if bad:
                raise CheckpointError(f"{path} is not a state dict of tensors: entry {bad[0]!r:.100} is a "
                                      f"{type(state[bad[0]]).__name__}; re-save it with torch.save(model."
                                      f"state_dict(), ...)")
            self._bins[path] = state
        return self._bins[path]

    def _buffer(self, path: str) -> mmap.mmap | bytearray:
        buf = self._maps.get(path)
        if buf is None:
            try:
                with open(path, "rb") as f:
                    buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if self._use_mmap else bytearray(f.read())
            except (OSError, ValueError) as e:
                raise CheckpointError(f"{path} could not be read ({e}); check the file and re-download it") from e
            self._maps[path] = buf
        return buf

    def get(self, name: str) -> torch.Tensor:
        """The tensor `name`, backed by the file's pages: a copy-on-write mapping, so nothing is read until used,
        the page cache is shared, and writing to it (fine-tuning) copies only the pages written."""
        ref = self.refs.get(name)
        if ref is None:
            raise CheckpointError(f"no tensor {name!r} in this checkpoint ({len(self.refs)} tensors)")
        if not ref.file.endswith(".safetensors"):
            return self._load_bin(ref.file)[name]
        mm = self._buffer(ref.file)
        if ref.end > len(mm):
            raise CheckpointError(f"{ref.file} shrank after its header was read (tensor {name!r} ends at byte "
                                  f"{ref.end}, the file has {len(mm)}); re-download it")
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
        if isinstance(mm, mmap.mmap):
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



__all__ = ["CheckpointError", "CheckpointReader", "TensorRef", "SAFETENSORS_DTYPES", "DTYPE_NAMES", "WEIGHT_FILES",
           "SAFE_SINGLE", "SAFE_INDEX", "BIN_SINGLE", "BIN_INDEX", "SHARD_PATTERN", "check_relative_name",
           "find_weight_files", "read_shard_index", "read_safetensors_header", "with_variant", "parse_size",
           "write_safetensors"]
