"""The checkpoint layer's error type and tensor locations (a leaf of `phikit.weights`: the header parser, the shard
index reader and the checkpoint reader all use them)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
ITEMSIZE = {name: torch.empty(0, dtype=dtype).element_size() for name, dtype in SAFETENSORS_DTYPES.items()}


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
