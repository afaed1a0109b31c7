"""`_QuantLinear`: what `Int8Linear` (`int8.py`) and `Int4Linear` (`int4.py`) share.

Shapes follow `nn.Linear`: W [N, K] = [out_features, in_features], x [..., K] -> y [..., N], bias [N] kept in float.
The base class holds the bias, the 2D view the kernels need, and the weight's memory layout:

* Checkpoints store `qweight` in a portable form (int8 row-major; int4 as nibbles). On the CPU a module may hold a
  kernel's layout instead (`layout` names it: "phikit" for phikit's native kernels, "aten" for aten's int4 one);
  `state_dict()` always gives the portable form and `load_state_dict` takes it, so checkpoints move between machines.
* A move to another device, or a change of the scales' dtype (the native kernels read bf16 scales), goes through the
  portable form and packs for the new place after.
* A layer no kernel takes, and any layer off the CPU, runs the generic fallback: dequantize the weight, then
  `F.linear` (same numbers, more memory traffic). Kernel constraints are in `int8.py` and `int4.py` (torch 2.13, CPU).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn

_OPS = torch.ops.aten
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # scale dtypes aten's int8 / int4 CPU kernels take


class _QuantLinear(nn.Module):
    """Shared parts: shapes, bias, the 2D view the kernels need, the fallback, and the weight's memory layout.

    On the CPU `qweight` may hold a kernel's layout (`layout` names it; "portable" is the checkpoint form).
    `state_dict()` always gives the portable form and `load_state_dict` takes it, so checkpoints move between
    machines; a move to another device or a change of the scales' dtype goes through the portable form."""

    in_features: int
    out_features: int
    layout: str = "portable"
    weight_in_buffers = True  # counted by num_parameters()

    def _init_layout(self) -> None:
        self.layout = "portable"
        self.register_state_dict_post_hook(_portable_state)
        self.register_load_state_dict_pre_hook(_loading_portable)
        self.register_load_state_dict_post_hook(_pack_after_load)

    def _init_bias(self, bias: bool | torch.Tensor | None, dtype: torch.dtype, device: Any) -> None:
        if isinstance(bias, torch.Tensor):
            self.bias = bias if isinstance(bias, nn.Parameter) else nn.Parameter(bias, requires_grad=False)
        elif bias:
            self.bias = nn.Parameter(torch.zeros(self.out_features, dtype=dtype, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    @property
    def cpu_packed(self) -> bool:
        """Whether `qweight` is in a CPU kernel's layout rather than the portable one."""
        return self.layout != "portable"

    @property
    def _scales(self) -> torch.Tensor:
        raise NotImplementedError

    def _kernel_layout(self) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]] | None:
        """(layout, pack rows of the portable qweight) of the CPU kernel that runs this layer here, or None."""
        return None

    def portable_qweight(self) -> torch.Tensor:
        """`qweight` in the portable form (a copy when a kernel layout is held)."""
        raise NotImplementedError

    def pack_for_device(self, in_place: bool = False) -> None:
        """Convert `qweight` from the portable form to the layout of the kernel that runs it here, if one does.
        Each layout keeps a 64-row (aten) / 4-row (phikit) block's bytes in that block's rows, so 1024-row slices pack
        independently: `in_place` (for a tensor this module owns, not a view of a file) rewrites them in the same
        memory, so packing costs one slice of extra memory instead of a second copy of the weight."""
        if self.layout != "portable" or self.qweight.device.type == "meta":
            return
        kernel = self._kernel_layout()
        if kernel is None:
            return
        layout, pack = kernel
        portable = self.qweight
        packed = portable if in_place else torch.empty_like(portable)
        rows = 1024
        for a in range(0, portable.shape[0], rows):
            packed[a:a + rows] = pack(portable[a:a + rows])  # pack() returns new memory: safe when packed is portable
        self.qweight, self.layout = packed, layout

    def _apply(self, fn, recurse: bool = True):
        # A packed layout is only meaningful to its CPU kernel: go portable before a move or a change of the scales'
        # dtype (the kernels read bf16 scales), pack for the new place after.
        scales = self._scales
        probe = fn(torch.empty(0, dtype=scales.dtype, device=self.qweight.device))
        changing = probe.device != self.qweight.device or probe.dtype != scales.dtype
        if changing and self.cpu_packed:
            self.qweight, self.layout = self.portable_qweight(), "portable"
        out = super()._apply(fn, recurse)
        if changing:
            self.pack_for_device()
        return out

    def dequantize(self) -> torch.Tensor:
        raise NotImplementedError

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., K] -> [..., N] in x's dtype; computed in the dtype of the scales (the model's dtype)."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # [M, K]
        if x2.shape[0] == 0:
            return x2.new_zeros(*lead, self.out_features)
        return self._linear(x2.contiguous()).to(x.dtype).reshape(*lead, self.out_features)

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        """x [M, K] -> [M, N] with the bias added."""
        y = self._matmul(x)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def _native(self, x: torch.Tensor) -> bool:
        """Whether this call may run phikit's native kernel: its layout is held, bf16 scales, a CPU [M, K] input
        and no autograd through it."""
        return (self.layout == "phikit" and self._scales.dtype == torch.bfloat16 and x.device.type == "cpu"
                and x.dim() == 2 and not (torch.is_grad_enabled() and x.requires_grad))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _portable_state(module: _QuantLinear, state: dict, prefix: str, _meta: Any) -> None:
    if module.layout != "portable":
        state[prefix + "qweight"] = module.portable_qweight()


def _pack_after_load(module: _QuantLinear, _incompatible: Any) -> None:
    module.pack_for_device()


def _loading_portable(module: _QuantLinear, state: dict, prefix: str, *_: Any) -> None:
    if prefix + "qweight" in state:  # incoming tensors are portable; pack_for_device runs after the copy
        module.layout = "portable"
