"""`Int8Linear`: int8 weights, symmetric per output channel (`Int8WeightOnlyConfig`).

Format (W [N, K] = [out_features, in_features]): scale[n] = max|W[n]| / 127, q = round(W / scale) in [-127, 127]
(`quantize_math.quantize_int8`). Checkpoints store q int8 [N, K] row-major (portable); bf16 modules on CPUs with
the native kernels hold phikit's blocked layout in memory, others run `aten._weight_int8pack_mm` on the portable
form.

Kernel constraints (torch 2.13, CPU): native int8 needs N % 4 == 0, K % 64 == 0 and bf16 scales, aten's int8
nothing. Which runs a call ([M, K] input, no autograd, bf16 scales): in phikit's layout, M < `native_rows()`
the native kernel and larger M a GEMM on dequantized row slices (`cpu.gemm.gemm_dequantized`), which long prefills
(M >= `FP32_GEMM_MIN_ROWS`) in the portable form take too; other CPU calls run aten's kernel, and calls off the CPU
the dequantize fallback (`quant_linear.py`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..cpu import kernels as native_kernels
from ..cpu import tiles
from ..cpu.abi import TilesKind
from ..cpu.gemm import (FP32_GEMM_MIN_ROWS, gemm_dequantized, onednn_bf16, scratch_bf16, scratch_f32,
                        tiles_preferred)
from .quant_linear import _KERNEL_DTYPES, _OPS, _QuantLinear
from .quantize_math import dequantize_int8, pack_int8_native, unpack_int8_native

# Rows of x below which the native int8 kernel beats oneDNN's bf16 GEMM on natively dequantized slices (2-core
# Zen 4, phi-1.5's four shapes and its head: the GEMM is ahead from 16 rows on all but fc1, erratic there)
INT8_NATIVE_ROWS = 16
# ... and below which it beats the fp32 GEMM on dequantized slices where oneDNN has no bf16 GEMM (AVX2 EPYC host,
# 16 phi-1.5 weights, 2 threads: kernel / GEMM 0.58x at 16 rows, 0.66x at 24, 0.82x at 32, 0.98x at 48)
INT8_PORTABLE_ROWS = 40
_HAS_INT8_CPU = hasattr(_OPS, "_weight_int8pack_mm")


def native_rows() -> int:
    """Rows from which an int8 product runs as a GEMM on dequantized slices rather than the native kernel."""
    return INT8_NATIVE_ROWS if onednn_bf16() else INT8_PORTABLE_ROWS


class Int8Linear(_QuantLinear):
    """Linear layer with int8 weights `qweight` [N, K] and per-channel `scales` [N]; `bias` [N] kept in float.

    On the CPU, where phikit's native kernels run (bf16 scales, N % 4 == 0, K % 64 == 0), `qweight` holds their
    layout (`layout == "phikit"`, `quantize_math.pack_int8_native`: 4-row blocks interleaved 64 columns at a time,
    one contiguous stream per thread: 31 against 24 GB/s from memory for row-major rows on the Zen 4 host, read
    roofline 32, same run); otherwise the portable row-major form, run by `aten._weight_int8pack_mm`."""

    def __init__(self, in_features: int, out_features: int, bias: bool | torch.Tensor | None = True,
                 dtype: torch.dtype = torch.bfloat16, device: Any = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.ones(out_features, dtype=dtype, device=device))
        self._init_bias(bias, dtype, device)
        self._init_layout()

    @property
    def _scales(self) -> torch.Tensor:
        return self.scales

    @property
    def native_ok(self) -> bool:
        """Whether phikit's native int8 kernel can run this layer."""
        return (self.qweight.device.type == "cpu" and self.scales.dtype == torch.bfloat16
                and self.out_features % 4 == 0 and self.in_features % 64 == 0 and native_kernels.available())

    def _kernel_layout(self) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]] | None:
        return ("phikit", pack_int8_native) if self.native_ok else None

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """q int8 [stop - start, K]: rows [start, stop) in the portable form, whatever the layout held."""
        if self.layout == "portable":
            return self.qweight[start:stop]
        a, b = start // 4 * 4, -(-stop // 4) * 4  # whole 4-row blocks
        return unpack_int8_native(self.qweight[a:b])[start - a:stop - a]

    def portable_qweight(self) -> torch.Tensor:
        return self.rows(0, self.out_features)

    def dequantize(self) -> torch.Tensor:
        """The weight [N, K] these int8 values stand for, in the scales' dtype."""
        return dequantize_int8(self.portable_qweight(), self.scales)

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias
        if (self._native(x) and x.dtype == torch.bfloat16 and x.shape[0] < native_rows()
                and (bias is None or bias.dtype == torch.bfloat16)):  # decode: the bias is added in the kernel
            return native_kernels.linear_int8(x, self.qweight, self.scales, bias)
        if self._prefill(x):  # the bias added inside the GEMM
            return self._gemm(x.to(self.scales.dtype), bias)
        return super()._linear(x)

    def _gemm(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x [M, K] -> [M, N] (+ bias) by the faster GEMM here (`gemm.tiles_preferred`): phikit's tiles on
        phikit's layout, else one on dequantized row slices (`gemm_dequantized`). The same products, rounded once
        after the bias on the tiles, before it on the bf16 slices."""
        if (self.layout == "phikit" and x.dtype == torch.bfloat16 and (bias is None or bias.dtype == torch.bfloat16)
                and tiles.gemm_tiles_ok(self.out_features, self.in_features) and tiles_preferred()):
            return tiles.gemm_tiles(x.contiguous(), TilesKind.INT8, self.qweight, self.out_features, self.scales,
                                    bias=bias)
        return gemm_dequantized(x, self._f32_rows, self.out_features, self._bf16_rows, bias)

    def _prefill(self, x: torch.Tensor) -> bool:
        """Whether x [M, K] is a product for a GEMM on dequantized row slices (a prefill), not a kernel's."""
        rows = native_rows() if self._native(x) else FP32_GEMM_MIN_ROWS  # fewer: the kernel / aten's
        return (x.device.type == "cpu" and self.scales.dtype == torch.bfloat16 and not torch.is_grad_enabled()
                and x.shape[0] >= rows)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.scales.dtype
        native = self._native(x)
        if native and x.shape[0] < native_rows():
            return native_kernels.linear_int8(x.to(dtype), self.qweight, self.scales, None)
        if self._prefill(x):  # a prefill: a GEMM on dequantized row slices
            # int8 and bf16 values are exact in bf16 and their product is rounded once either way: the bf16
            # slices equal the fp32 ones rounded, at a third of the memory traffic
            return self._gemm(x.to(dtype), None)
        if _HAS_INT8_CPU and x.device.type == "cpu" and dtype in _KERNEL_DTYPES:
            return _OPS._weight_int8pack_mm(x.to(dtype), self.portable_qweight(), self.scales)
        return F.linear(x.to(dtype), self.dequantize())

    def _f32_rows(self, start: int, stop: int) -> torch.Tensor:
        """The weight's rows [start, stop) in fp32 (q * scale, exact), for one fp32 GEMM slice: natively from
        phikit's layout into the reused scratch buffer (`gemm.scratch_f32`), else with torch's ops."""
        if self.layout == "phikit" and native_kernels.available():
            return native_kernels.dequantize_int8_rows_f32(self.qweight, self.scales, start, stop,
                                                           scratch_f32(stop - start, self.in_features))
        return self.rows(start, stop).float() * self.scales[start:stop, None].float()

    def _bf16_rows(self, start: int, stop: int) -> torch.Tensor:
        """The weight's rows [start, stop) in bf16 (q * scale rounded once): natively from phikit's layout (one
        pass; torch's unpack, convert and multiply took 10 ms of a 64-row fc1 product), else with torch's ops."""
        fast = native_kernels.dequantize_int8_rows(self.qweight, self.scales, start, stop,
                                                   scratch_bf16(stop - start, self.in_features)) \
            if self.layout == "phikit" and native_kernels.has_bf16_dot() else None
        return fast if fast is not None else self.rows(start, stop).to(self.scales.dtype) * self.scales[start:stop, None]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", kernel={'native' if self.layout == 'phikit' else 'aten'}"


__all__ = ["Int8Linear"]
