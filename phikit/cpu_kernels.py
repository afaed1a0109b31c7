"""Faster bf16 linears on CPUs: oneDNN's prepacked weight layout, as a pass over a built model.

At batch 1 a decode step is almost all matrix-vector products (90% of a phi-1.5 step is `addmm`), bound by how fast
weights stream from memory. `F.linear` on a plain bf16 weight streamed ~25 GB/s on this 2-core host; the same
matrix prepacked by oneDNN (`mkldnn._reorder_linear_weight`) ~43 GB/s, with identical results. The pass swaps the
class of each `nn.Linear` to `PackedLinear` (a subclass: state_dict, LoRA and quantization passes see a Linear);
the packed copy is made on the first no-grad bf16 CPU forward, or eagerly by the loader, which then drops the file
pages of the original weight so memory holds one copy. Training (grad enabled), other dtypes and other devices use
`F.linear` on the original weight, and a changed weight is repacked.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def packing_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


class PackedLinear(nn.Linear):
    """nn.Linear whose no-grad bf16 CPU forward uses a oneDNN-prepacked copy of the weight."""

    _packed: torch.Tensor | None = None
    _packed_from: tuple[int, int] | None = None  # (data_ptr, version) of the weight the copy was made from

    def pack(self) -> None:
        weight = self.weight.detach()
        self._packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
        self._packed_from = (weight.data_ptr(), weight._version)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if (torch.is_grad_enabled() or x.dtype != torch.bfloat16 or weight.dtype != torch.bfloat16
                or x.device.type != "cpu" or weight.device.type != "cpu"):
            return F.linear(x, weight, self.bias)
        if self._packed is None or self._packed_from != (weight.data_ptr(), weight._version):
            self.pack()
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), self._packed, self.bias, "none", [], "")
        return y.reshape(*x.shape[:-1], y.shape[-1])


def is_plain_linear(module: nn.Module) -> bool:
    """A dense Linear a pass may replace: nn.Linear itself or its packed variant."""
    return type(module) in (nn.Linear, PackedLinear)


def use_packed_linears(model: nn.Module, skip: tuple[str, ...] = ()) -> int:
    """Swap every plain nn.Linear of `model` (but those named in `skip`) to PackedLinear in place; returns how many.
    No-op without oneDNN. A head tied to the embedding belongs in `skip`: packing would copy the embedding."""
    if not packing_available():
        return 0
    count = 0
    for name, module in model.named_modules():
        if type(module) is nn.Linear and name not in skip:
            module.__class__ = PackedLinear
            count += 1
    return count
