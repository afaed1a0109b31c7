"""`Int4Linear`: int4 weights, asymmetric per group of `group_size` input columns (`Int4WeightOnlyConfig`).

Format (W [N, K] = [out_features, in_features]; the gpt-fast / torchao "tinygemm" form): per group
scale = (max - min) / 15 and zero = min + 8 * scale, q = round((W - min) / scale) in [0, 15], and
W ~ (q - 8) * scale + zero (`quantize_math.quantize_int4`). `scales_and_zeros` is [K / group_size, N, 2]
(scale, zero), the layout of `aten._weight_int4pack_mm_for_cpu`. Checkpoints store a portable form, `qweight` uint8
[N, K / 2] with column 2j in the low nibble and 2j+1 in the high one, and modules repack it for the kernel that runs
it when they are placed on the CPU: phikit's native kernel (`native/kernels.c`: bf16 dot-product instructions; on
the 2-core Zen 4 host one weight streams at 23-25 GB/s against aten's ~19; `benchmarks/RESULTS.md`) for bf16 models
on CPUs with AVX512-BF16, else aten's (whose layout depends on the ISA: AVX-512 packs rows n and n+32 into one byte,
AVX2 n and n+16).

Kernel constraints (torch 2.13, CPU): native int4 needs N % 4 == 0, K % 128 == 0, group_size in {64, 128, 256};
aten's int4 needs N % 16 == 0 and group_size in {32, 64, 128, 256} with K divisible by it. A layer no int4 kernel
takes, and any layer off the CPU, runs the dequantize fallback (`quant_linear.py`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..cpu import kernels as native_kernels
from ..cpu import tiles
from ..cpu.abi import TilesKind
from ..cpu.gemm import (CROSSOVER_PROBE_ROWS, gemm_dequantized, has_amx, scratch_bf16, scratch_f32,
                        tiles_preferred, timed_crossover)
from .quant_linear import _KERNEL_DTYPES, _OPS, _QuantLinear
from .quantize_math import (_cpu_pack, _cpu_unpack, dequantize_int4, pack_int4_native, pack_nibbles,
                            unpack_int4_native, unpack_nibbles)

_HAS_INT4_CPU = hasattr(_OPS, "_convert_weight_to_int4pack_for_cpu") and hasattr(_OPS, "_weight_int4pack_mm_for_cpu")
# Rows from which an int4 product is a GEMM on dequantized bf16 slices where oneDNN runs it on AMX tiles. AMX Xeon
# host, 2 threads, kernel / GEMM time: 8 rows 0.79x (8192 x 2048), 0.93x (2048 x 8192), 0.74x (16384 x 3072); 12 rows
# 1.22x, 1.18x, 1.10x; 32 rows 2.8x, 2.6x, 2.4x.
AMX_NATIVE_ROWS = 12
PROBE_SHAPE = (2048, 2048)  # [N, K] of the weight `native_rows` times both paths on (2 MB of int4 codes)


@functools.lru_cache(maxsize=None)
def native_rows() -> int:
    """Rows from which an int4 product runs as a GEMM on dequantized slices rather than the native kernel:
    AMX_NATIVE_ROWS where oneDNN's bf16 GEMM runs on AMX tiles, else timed once per process on a probe weight
    (`gemm.timed_crossover`, 0.15-0.3 s, with the threads torch uses then). Measured on the Zen 4 host, 2 threads
    (`benchmarks/RESULTS.md`): with AVX512-BF16 the kernel is level with oneDNN's bf16 GEMM at 32 rows and 1.5x its
    time at 96 (the fixed 96 used before was 3x too high); at the AVX2 level the kernel (byte dot products) takes
    0.09x the fp32 GEMM's time at 8 rows, 0.24x at 32, 0.53x at 128 and about the same at 512-1024, where the fixed
    crossover of 24 rows, measured on a Zen 5 host before, sent 24-500-row products to the GEMM."""
    if has_amx():
        return AMX_NATIVE_ROWS
    x, qweight, sz, group = _probe()
    return timed_crossover(lambda rows: native_kernels.linear_int4(x[:rows], qweight, sz, group, None),
                           lambda rows: _gemm(x[:rows], qweight, sz, group, qweight.shape[0], None))


def _probe() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """x bf16 [CROSSOVER_PROBE_ROWS[1], K] and a random int4 weight of PROBE_SHAPE in phikit's layout (qweight,
    scales_and_zeros, group size 128), for the timed choices of this module."""
    n, k = PROBE_SHAPE
    group = 128
    gen = torch.Generator().manual_seed(0)
    qweight = pack_int4_native(torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8))
    sz = torch.stack((torch.rand(k // group, n, generator=gen) * 0.02,
                      torch.randn(k // group, n, generator=gen) * 0.01), dim=-1).to(torch.bfloat16)
    x = torch.randn(CROSSOVER_PROBE_ROWS[1], k, generator=gen, dtype=torch.bfloat16)
    return x, qweight, sz, group


def _gemm(x: torch.Tensor, qweight: torch.Tensor, sz: torch.Tensor, group: int, n: int,
          bias: torch.Tensor | None) -> torch.Tensor:
    """x [M, K] -> [M, N] (+ bias) through a native-layout int4 weight by the faster GEMM here
    (`gemm.tiles_preferred`): the same products, rounded once after the bias on the tiles, before it on the slices."""
    if (x.dtype == sz.dtype == torch.bfloat16 and (bias is None or bias.dtype == torch.bfloat16)
            and tiles.gemm_tiles_ok(n, x.shape[1]) and tiles_preferred()):
        return tiles.gemm_tiles(x, TilesKind.INT4, qweight, n, sz, group, bias)
    return _gemm_on_slices(x, qweight, sz, group, n, bias)


def uses_gemm(rows: int) -> bool:
    """Whether an int4 product with this many rows of x runs as a GEMM on dequantized slices (`native_rows()` and
    more) rather than the native kernel. Below the probe's smaller row count the timed crossover cannot fall (the
    kernel wins there by construction: `gemm.crossover_from_times`), so those products run the kernel without
    timing anything: a process that only decodes never pays the probe (0.15-0.3 s, and ~50 MB of peak memory for its
    weights, scratch slices and the first oneDNN / MKL calls: 1.24x instead of 1.08x a 0.39 GB int4 model's peak RSS
    in `benchmarks/load_memory.py`, eighteenth session)."""
    if rows < CROSSOVER_PROBE_ROWS[0] and not has_amx():
        return False
    return rows >= native_rows()


def _gemm_on_slices(x: torch.Tensor, qweight: torch.Tensor, sz: torch.Tensor, group: int, n: int,
                    bias: torch.Tensor | None) -> torch.Tensor:
    """x [M, K] -> [M, N] (+ bias) by a GEMM on dequantized row slices of a native-layout int4 weight
    (`gemm_dequantized`: bf16 slices for oneDNN's bf16 GEMM with AVX512-BF16, else fp32 ones)."""
    k = x.shape[1]
    bf16_rows = (lambda a, b: native_kernels.dequantize_int4_rows(qweight, sz, group, a, b, x.dtype,
                                                                  scratch_bf16(b - a, k))) \
        if x.dtype == torch.bfloat16 and native_kernels.has_bf16_dot() else None  # AVX512-BF16
    return gemm_dequantized(x, lambda a, b: native_kernels.dequantize_int4_rows(
                                qweight, sz, group, a, b, out=scratch_f32(b - a, k)), n, bf16_rows, bias)


class Int4Linear(_QuantLinear):
    """Linear layer with int4 weights `qweight` uint8 [N, K/2] and `scales_and_zeros` [K/g, N, 2].

    On the CPU `qweight` holds a kernel's layout in memory (`layout`): phikit's native one (bf16 models on CPUs with
    AVX512-BF16; N % 4 == 0, K % 128 == 0, g in 64/128/256) or else aten's `_weight_int4pack_mm_for_cpu` one
    (N % 16 == 0); checkpoints hold the portable nibble form (`_QuantLinear`). A layer neither kernel takes runs
    the dequantize fallback.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool | torch.Tensor | None = True,
                 group_size: int = 128, dtype: torch.dtype = torch.bfloat16, device: Any = None) -> None:
        super().__init__()
        if in_features % group_size or in_features % 2:
            raise ValueError(f"Int4Linear: in_features={in_features} must be a multiple of group_size={group_size}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("qweight", torch.full((out_features, in_features // 2), 0x88, dtype=torch.uint8,
                                                   device=device))
        self.register_buffer("scales_and_zeros", torch.zeros(in_features // group_size, out_features, 2, dtype=dtype,
                                                             device=device))
        self._init_bias(bias, dtype, device)
        self._init_layout()

    @property
    def _scales(self) -> torch.Tensor:
        return self.scales_and_zeros

    @property
    def native_ok(self) -> bool:
        """Whether phikit's native int4 kernel can run this layer (`native_kernels.has_int4`)."""
        return (self.qweight.device.type == "cpu" and self.scales_and_zeros.dtype == torch.bfloat16
                and self.out_features % 4 == 0 and self.in_features % 128 == 0 and self.group_size in (64, 128, 256)
                and native_kernels.has_int4())

    @property
    def kernel_ok(self) -> bool:
        """Whether aten's CPU int4 kernel can run this layer."""
        return (_HAS_INT4_CPU and self.qweight.device.type == "cpu" and self.out_features % 16 == 0
                and self.scales_and_zeros.dtype in _KERNEL_DTYPES)

    def _kernel_layout(self) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]] | None:
        if self.native_ok:
            return "phikit", lambda rows: pack_int4_native(unpack_nibbles(rows))
        return ("aten", lambda rows: _cpu_pack(unpack_nibbles(rows))) if self.kernel_ok else None

    def unpacked(self) -> torch.Tensor:
        """q uint8 [N, K] in 0..15, whatever the layout held."""
        unpack = {"portable": unpack_nibbles, "phikit": unpack_int4_native, "aten": _cpu_unpack}[self.layout]
        return unpack(self.qweight)

    def portable_qweight(self) -> torch.Tensor:
        """uint8 [N, K/2] in the portable nibble layout (a copy when a kernel layout is held)."""
        return self.qweight if self.layout == "portable" else pack_nibbles(self.unpacked())

    def dequantize(self) -> torch.Tensor:
        """The weight [N, K] these int4 values stand for, in the scales' dtype."""
        return dequantize_int4(self.unpacked(), self.scales_and_zeros, self.group_size)

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias
        if self._native(x) and not uses_gemm(x.shape[0]) and (bias is None or bias.dtype == torch.bfloat16):
            return native_kernels.linear_int4(x.to(torch.bfloat16).contiguous(), self.qweight, self.scales_and_zeros,
                                              self.group_size, bias)  # decode: the bias is added in the kernel
        if self._native(x) and uses_gemm(x.shape[0]):  # a prefill: the bias added inside the GEMM
            return self._prefill(x.to(self.scales_and_zeros.dtype).contiguous(), bias)
        return super()._linear(x)

    def _prefill(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x [M, K] -> [M, N] (+ bias) by a GEMM: phikit's tiles or oneDNN's on dequantized row slices (`_gemm`)."""
        return _gemm(x, self.qweight, self.scales_and_zeros, self.group_size, self.out_features, bias)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.scales_and_zeros.dtype
        if self._native(x):
            x = x.to(dtype).contiguous()
            if uses_gemm(x.shape[0]):  # a prefill: a GEMM on dequantized row slices
                return self._prefill(x, None)
            return native_kernels.linear_int4(x, self.qweight, self.scales_and_zeros, self.group_size, None)
        if self.layout == "aten" and x.device.type == "cpu":
            return _OPS._weight_int4pack_mm_for_cpu(x.to(dtype), self.qweight, self.group_size,
                                                    self.scales_and_zeros)
        return F.linear(x.to(dtype), self.dequantize())

    def extra_repr(self) -> str:
        kernel = {"portable": "dequant", "phikit": "native", "aten": "aten"}[self.layout]
        return super().extra_repr() + f", group_size={self.group_size}, kernel={kernel}"


__all__ = ["Int4Linear"]
