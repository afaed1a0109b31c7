"""The activation registry: `hidden_act` names to PyTorch functions, and the gated form the phi3 MLP applies.

These are the reference functions; a backend's `Ops` may map a name to a faster function with the same numbers.
`config.py` validates `hidden_act` against these names.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

Activation = Callable[[torch.Tensor], torch.Tensor]


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of GELU that phi-1/1.5/2 were trained with (transformers' "gelu_new"), op for op."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS: dict[str, Activation] = {
    "gelu_new": gelu_new,
    "gelu_fast": gelu_new,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu": F.gelu,
    "silu": F.silu,
    "swish": F.silu,
    "relu": F.relu,
}


class Gated:
    """gate_up [..., 2I] = [gate, up] -> up * act(gate) [..., I] (the phi3 MLP's order of operations)."""

    def __init__(self, act: Activation) -> None:
        self.act = act

    def __call__(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)  # [..., I] each
        return up * self.act(gate)

    def __repr__(self) -> str:
        return f"Gated({getattr(self.act, '__name__', self.act)})"


GATED: dict[str, Activation] = {name: Gated(fn) for name, fn in ACTIVATIONS.items()}
