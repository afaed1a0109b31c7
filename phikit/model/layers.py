"""Norms and the two dense MLPs. Attribute names are the checkpoint names.

Each module calls its math through `self.ops` (`phikit.ops`: the reference functions unless a backend bound its own
table at load), so the module never names a kernel.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..ops import REFERENCE, Ops


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 and cast back before the weight (Phi-3's order of operations)."""

    ops: Ops = REFERENCE

    def __init__(self, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.rms_norm(x, self.weight, self.variance_epsilon)


def make_norm(kind: str, size: int, eps: float) -> nn.Module:
    return RMSNorm(size, eps) if kind == "rmsnorm" else nn.LayerNorm(size, eps=eps)


class FcMLP(nn.Module):
    """phi: fc1 -> activation -> fc2, with biases."""

    ops: Ops = REFERENCE

    def __init__(self, hidden_size: int, intermediate_size: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)
        self.act_name = act  # a key of the activation registry (`phikit.ops.activations`)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.ops.activations[self.act_name](self.fc1(x)))


class GatedMLP(nn.Module):
    """phi3: one fused gate_up_proj (gate rows first, then up rows) -> up * act(gate) -> down_proj, no biases."""

    ops: Ops = REFERENCE

    def __init__(self, hidden_size: int, intermediate_size: int, act: str) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.act_name = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.ops.gated[self.act_name](self.gate_up_proj(x)))  # [B, T, 2I] -> [B, T, I] -> out
