"""`Ops`: the table of operations through which every fast path plugs into the reference model.

The model calls `self.ops.<op>` (or `ctx.ops.<op>` inside a step) and never names a kernel. A backend builds one
table for what the machine has, once, and `bind` puts it on a model's modules when the model is built or loaded;
nothing is chosen per call. A backend's op may still hand an input its kernel cannot take (another dtype or device,
autograd, an odd size) to the reference function: that is the kernel's precondition, not a choice of backend.

Tables are registered by name (`register`), and a model pickles its table by name, so a model stays picklable and
deep-copyable whatever its kernels hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from . import reference
from .activations import ACTIVATIONS, GATED, Activation

Tensor = torch.Tensor


@dataclass(frozen=True)
class Ops:
    """The replaceable operations (each documented by its reference function in `reference.py`)."""

    name: str  # how `describe` and `by_name` know the table
    activations: Mapping[str, Activation] = field(default_factory=lambda: dict(ACTIVATIONS))  # hidden_act -> fn
    gated: Mapping[str, Activation] = field(default_factory=lambda: dict(GATED))  # gate_up [..., 2I] -> [..., I]
    rms_norm: Callable[[Tensor, Tensor, float], Tensor] = reference.rms_norm
    rotary: Callable[[Tensor, Tensor, Tensor, int], Tensor] = reference.rotary
    causal_attention: Callable[[Tensor, Tensor, Tensor, float], Tensor] = reference.causal_attention
    decode_attention: Callable[[Tensor, Tensor, Tensor, float], Tensor] = reference.decode_attention
    # a decode batch over a KV pool, each row at its own length: (q, keys, values, rows, first, lengths, scale)
    rows_decode_attention: Callable[..., Tensor] = reference.rows_decode_attention
    # every layer of a one-token step in one call: (decoder, x [B, 1, hidden], attention_mask, position_ids, long,
    # cache, start) -> the last layer's output [B, 1, hidden], or None where the layers must run one by one
    decode_step: Callable[..., Tensor | None] | None = None
    kernels: Mapping[str, str] = field(default_factory=dict)  # op -> which kernel runs it (for `describe`)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return by_name, (self.name,)


REFERENCE = Ops("reference")
_TABLES: dict[str, Ops] = {REFERENCE.name: REFERENCE}


def register(ops: Ops) -> Ops:
    """Make `ops` findable by its name (a backend registers each table it builds)."""
    _TABLES[ops.name] = ops
    return ops


def by_name(name: str) -> Ops:
    """The registered table called `name`; the reference table where this process has no such table (a model
    pickled where a backend ran, unpickled where it does not, runs the reference ops)."""
    return _TABLES.get(name, REFERENCE)


def bind(model: nn.Module, ops: Ops) -> None:
    """Put `ops` on every module of `model` that calls ops (those whose class declares an `ops` attribute)."""
    for module in model.modules():
        if isinstance(getattr(type(module), "ops", None), Ops):
            module.ops = ops


def bound(model: nn.Module) -> Ops:
    """The table a model's modules use (the reference where none declares one)."""
    for module in model.modules():
        if isinstance(getattr(module, "ops", None), Ops):
            return module.ops
    return REFERENCE
