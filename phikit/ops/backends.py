"""The plugin point: backends by device type, found by module name, so that nothing below them imports one.

A backend module provides `ops() -> Ops` (the table for this machine, built once) and `prepare(model, dtype)` (binds
that table and applies its module swaps; the loader calls it before reading weights). Devices without a backend
(CUDA, MPS today) run the reference ops, that is PyTorch's own kernels.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
import torch.nn as nn

from .table import REFERENCE, Ops, bind

BACKENDS = {"cpu": "phikit.backends.cpu"}  # device type -> module


def backend(device_type: str) -> ModuleType | None:
    """The backend module for a device type, or None where there is none."""
    name = BACKENDS.get(device_type)
    return importlib.import_module(name) if name is not None else None


def default_ops(device_type: str = "cpu") -> Ops:
    """The table a model built for `device_type` uses."""
    found = backend(device_type)
    return found.ops() if found is not None else REFERENCE


def prepare(model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Let the device's backend prepare a model it is about to hold (module docstring)."""
    found = backend(device.type)
    if found is None:
        bind(model, REFERENCE)
    else:
        found.prepare(model, dtype)


def adopt_dtype(model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """The backend's module swaps for a model whose weights now hold `dtype` on `device` (a cast after
    construction; `prepare` makes them before a load), where its backend has any."""
    found = backend(device.type)
    swap = getattr(found, "adopt_dtype", None)
    if swap is not None:
        swap(model, dtype)


def decode_rows(device_type: str = "cpu") -> int:
    """Rows one batched decode forward should hold at most on this device: the backend's `decode_rows()` (as many
    as its matrix-vector kernels take before a linear turns into a GEMM), 8 where it has none."""
    found = backend(device_type)
    rows = getattr(found, "decode_rows", None)
    return rows() if rows is not None else 8
