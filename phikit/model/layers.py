"""Norms, activations and the two dense MLPs. Attribute names are the checkpoint names."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..cpu import kernels as native_kernels


def _gelu_new_ops(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of GELU that phi-1/1.5/2 were trained with (transformers' "gelu_new"). Large no-grad
    bf16 CPU tensors (a prefill) look each value up in a table of these ops over all 65536 bf16 values."""
    fast = native_kernels.lookup(x, _gelu_new_ops)
    if fast is not None:
        return fast
    return _gelu_new_ops(x)


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu_new": gelu_new,
    "gelu_fast": gelu_new,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "silu": F.silu,
    "swish": F.silu,
    "relu": F.relu,
}


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 and cast back before the weight (Phi-3's order of operations)."""

    def __init__(self, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = native_kernels.rms_norm(x, self.weight, self.variance_epsilon)  # a bf16 prefill, in one pass
        if fast is not None:
            return fast
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


def make_norm(kind: str, size: int, eps: float) -> nn.Module:
    return RMSNorm(size, eps) if kind == "rmsnorm" else nn.LayerNorm(size, eps=eps)


class FcMLP(nn.Module):
    """phi: fc1 -> activation -> fc2, with biases."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)
        self.act = ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class GatedMLP(nn.Module):
    """phi3: one fused gate_up_proj (gate rows first, then up rows) -> up * act(gate) -> down_proj, no biases."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.act = ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)  # [B, T, 2I]
        fused = native_kernels.silu_gated(gate_up, F.silu) if self.act is F.silu else None  # a bf16 prefill
        if fused is not None:
            return self.down_proj(fused)
        gate, up = gate_up.chunk(2, dim=-1)  # [B, T, I] each
        return self.down_proj(up * self.act(gate))
