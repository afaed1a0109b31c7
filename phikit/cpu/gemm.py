"""Fast bf16 linears on CPUs, as a pass over a built model: the kernel is picked per call by the number of rows.

At batch 1 a decode step is almost all matrix-vector products bound by how fast weights stream from memory; a
prefill is matrix-matrix products bound by arithmetic. Measured on the 2-core AVX-512 (no AMX) development host,
one 8192x2048 bf16 weight, 2 threads:

* decode (<= 8 rows; <= 64 where oneDNN has no bf16 GEMM, `native_bf16_rows`): phikit's native kernel
  (`kernels.py`) ~20 GB/s; oneDNN-prepacked weight ~18 GB/s; `F.linear` ~12 GB/s.
* prefill (512 rows): on the Xeon host, MKL's fp32 GEMM on the weight converted to fp32 in L3-sized row chunks
  ~300 GFLOP/s against oneDNN's bf16 GEMM ~110-200 GFLOP/s; on the Zen 4 host the reverse, oneDNN's bf16 GEMM
  350-430 GFLOP/s (AVX512-BF16 dot products) against fp32 100-160. So the choice is timed once per process
  (`_fp32_gemm_wins`); with AMX, or under 96 rows (where converting the weight costs more than the GEMM saves),
  oneDNN's bf16 GEMM is used.

Every path multiplies the same bf16 values exactly in fp32, accumulates in fp32 and rounds once to bf16, so results
differ from `nn.Linear` only by summation order. The pass swaps the class of each `nn.Linear` to `FastLinear` (a
subclass: state_dict, LoRA and quantization passes see a Linear). Training (grad enabled), other dtypes and other
devices use `F.linear`. Without the native kernels but with oneDNN's bf16 GEMM, decode uses a oneDNN-prepacked copy
of the weight (made on the first no-grad bf16 forward, or eagerly by the loader, which then drops the file pages of
the original). Where oneDNN has no bf16 GEMM (CPU levels below avx512) every product the native kernels do not
take (more than MAX_ROWS rows, or the reference level) is an fp32 GEMM on weight slices `widened` into one reused
buffer, rounded to bf16 once.
"""

from __future__ import annotations

import functools
import math
import threading
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import features
from . import kernels as native_kernels
from . import tiles

PREFILL_CHUNK_BYTES = 8 << 20  # fp32 weight rows converted at a time: stays in the last-level cache
BF16_SLICE_BYTES = 4 << 20  # bf16 dequantized weight rows per slice of `gemm_dequantized` (`bf16_slice_rows`)
AMX_SLICE_BYTES = 16 << 20  # ... where oneDNN runs on AMX tiles (measured there with slices this size or whole)
SLICE_GEMM_ROWS = 256  # rows of x per oneDNN GEMM on one such slice (`slice_gemm_rows`)
FP32_GEMM_MIN_ROWS = 96  # below this the weight conversion costs more than the faster GEMM saves (measured here)
# Rows up to which the bf16 matrix-vector kernel beats an fp32 GEMM on widened weight slices where oneDNN has no bf16
# GEMM (AVX2, NEON): it reads each weight once for all rows, widening in registers, two rows per weight vector. On
# the AVX2 EPYC host, 16 phi-1.5 weights, 2 threads (`benchmarks/RESULTS.md`, 2026-12-03): kernel / GEMM time 0.41x
# at 16 rows, 0.67x at 32, 0.91x at 64, 0.96x at 96 (MKL's fp32 GEMM reaches 26 GFLOP/s at 16 rows, 116 at 512).
PORTABLE_NATIVE_ROWS = 64


def packing_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


@functools.lru_cache(maxsize=None)
def onednn_bf16() -> bool:
    """Whether oneDNN runs bf16 linears here: the CPU level (`features.py`) is AVX-512 or above and oneDNN says so
    (the test F.linear's own bf16 GEMM dispatch makes). Below that PyTorch's bf16 GEMM falls back to a loop ~7x
    slower than its fp32 GEMM, and oneDNN's weight packing raises, so bf16 products run as fp32 GEMMs instead."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return features.at_least("avx512") and packing_available() and probe is not None and bool(probe())


@functools.lru_cache(maxsize=None)
def has_amx() -> bool:
    """Whether oneDNN's bf16 GEMM runs on AMX tiles here, several times its AVX512-BF16 speed, which moves the rows
    from which a GEMM beats phikit's matrix-vector kernels: the CPU has amx_tile and amx_bf16, the level in use is
    avx512_bf16, and no ONEDNN_MAX_CPU_ISA below AMX is set. Read from the CPU's flags, because torch 2.13 has no
    `torch._C._cpu._is_amx_tile_supported` (phikit asked only that probe before, and so never saw AMX)."""
    probe = getattr(torch._C._cpu, "_is_amx_tile_supported", None)
    if probe is not None and not probe():
        return False
    isa = features.onednn_max_isa()
    if isa and isa not in ("all", "default") and "amx" not in isa:
        return False
    return (onednn_bf16() and features.at_least("avx512_bf16")
            and {"amx_tile", "amx_bf16"} <= features.cpu_info().flags)


@functools.lru_cache(maxsize=None)
def _fp32_gemm_wins() -> bool:
    """Whether MKL's fp32 GEMM on converted weight slices beats oneDNN's bf16 GEMM on this CPU, timed once per
    process (~0.1 s): 1.5-2.7x faster on an AVX-512 Xeon without AMX, 3x slower on a Zen 4 whose AVX512-BF16 dot
    products oneDNN uses. Measure, don't guess from CPU flags: both of those CPUs report avx512_bf16."""
    gen = torch.Generator().manual_seed(0)
    # drawn in bf16 (an fp32 draw rounded after would hold 4 bytes a weight for a moment: the probe's peak memory
    # counts against a small model's peak RSS, `benchmarks/load_memory.py`)
    x = torch.randn(FP32_GEMM_MIN_ROWS * 2, 2048, generator=gen, dtype=torch.bfloat16)
    w = torch.randn(4096, 2048, generator=gen, dtype=torch.bfloat16)
    with torch.no_grad():
        bf16 = _best_time(lambda: F.linear(x, w))
        fp32 = _best_time(lambda: gemm_via_fp32(x, widened(w), w.shape[0], None))
    if fp32 >= bf16:
        release_scratch("f32")  # no product here uses the fp32 slices then: do not keep the probe's 8 MB
    return fp32 < bf16


def _best_time(run: Callable[[], object], repeats: int = 3) -> float:
    """The shortest of `repeats` wall-clock timings of `run()`, in seconds (the timed choices of this module)."""
    import time

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def tiles_preferred() -> bool:
    """Whether a quantized (int4, int8) prefill runs on phikit's own GEMM tiles (`native/gemm_tiles.c`: each panel
    of the weight dequantized as it is packed for the dot products) rather than oneDNN's bf16 GEMM on dequantized
    slices: wherever the tiles are built (AVX512-BF16) and oneDNN does not run on AMX tiles (several times the
    arithmetic; the slices stay there). Zen 5 host, 2 threads, a phi-1.5 prefill of 512 tokens against the bf16
    model's (oneDNN) in one process (`benchmarks/prefill_formats.py`, nineteenth session): int4 1.000x on the tiles
    against 0.948x on slices, int8 0.988x against 0.941x (Phi-3-mini 1.008x / 1.001x). Not timed per process: a probe weight small enough to time
    cheaply stays in the cache, where the two paths read level (0.94-1.04x over five probes), while a model's
    weights come from memory."""
    return tiles.has_gemm_tiles() and not has_amx()


CROSSOVER_PROBE_ROWS = (16, 256)  # the row counts at which `timed_crossover` times both sides
NEVER = 1 << 30  # a crossover the kernel never reaches: it stays at least as fast at any number of rows


def crossover_from_times(rows: tuple[int, int], kernel_s: tuple[float, float], gemm_s: tuple[float, float]) -> int:
    """Rows from which a GEMM beats a matrix-vector kernel, from both timed at two row counts: each taken as a + b
    rows (a GEMM's fixed cost is converting or packing the weight, the kernel's per-row cost its arithmetic), where
    the lines cross, rounded up and at least rows[0] (below the probe, a kernel that reads each weight once wins by
    construction). NEVER where the kernel's cost per row is no more than the GEMM's."""
    (r0, r1), (k0, k1), (g0, g1) = rows, kernel_s, gemm_s
    kernel_row, gemm_row = (k1 - k0) / (r1 - r0), (g1 - g0) / (r1 - r0)
    if kernel_row <= gemm_row:
        return NEVER
    crossing = ((g0 - gemm_row * r0) - (k0 - kernel_row * r0)) / (kernel_row - gemm_row)
    return min(NEVER, max(r0, math.ceil(crossing)))


def timed_crossover(kernel: Callable[[int], object], gemm: Callable[[int], object],
                    rows: tuple[int, int] = CROSSOVER_PROBE_ROWS, repeats: int = 3) -> int:
    """`crossover_from_times` of `kernel(rows)` and `gemm(rows)` (each a product of that many rows on one probe
    weight), each the best of `repeats` timings after a warm-up: the rows from which the GEMM is used. Timed
    rather than set per CPU because the crossover moves with the CPU and its BLAS: int4 at 21-27 rows on the
    AVX512-BF16 Zen 4 host, 300-1000 at its AVX2 level, where both sides are level from ~500 rows on
    (`benchmarks/RESULTS.md`)."""
    with torch.no_grad():
        for r in rows:
            kernel(r), gemm(r)
        kernel_s = tuple(_best_time(lambda r=r: kernel(r), repeats) for r in rows)
        gemm_s = tuple(_best_time(lambda r=r: gemm(r), repeats) for r in rows)
    return crossover_from_times(rows, kernel_s, gemm_s)


def prefers_fp32_gemm(rows: int) -> bool:
    """Whether a bf16 product with this many rows runs as fp32 GEMM on converted weight slices (module docstring):
    every product where oneDNN has no bf16 GEMM here, and long prefills on CPUs without AMX where the fp32 GEMM
    measured faster."""
    if not onednn_bf16():
        return True
    return rows >= FP32_GEMM_MIN_ROWS and not has_amx() and _fp32_gemm_wins()


@functools.lru_cache(maxsize=None)
def native_bf16_rows() -> int:
    """Rows up to which a bf16 product runs on the native matrix-vector kernel: `MAX_ROWS` where oneDNN's bf16 GEMM
    takes over (AVX-512 and above), `PORTABLE_NATIVE_ROWS` where the alternative is the fp32 GEMM on widened slices."""
    return native_kernels.MAX_ROWS if onednn_bf16() else PORTABLE_NATIVE_ROWS


def gemm_dequantized(x: torch.Tensor, weight_rows: Callable[[int, int], torch.Tensor], n: int,
                     bf16_rows: Callable[[int, int], torch.Tensor] | None = None,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """A long prefill through a quantized weight: y [M, N] = x [M, K] @ W^T (+ bias) with W given as fp32 row slices
    `weight_rows(start, stop)` (dequantized, cache-sized), multiplied by the faster GEMM here (fp32, or bf16 slices).
    `bf16_rows`, where given, yields the same slices already rounded to bf16 more cheaply (for the bf16 GEMM). On the
    fp32 GEMM the bias is added in fp32 before the one rounding, as the native decode kernels add it (and as
    `F.linear` does); a separate bf16 add after the rounding cost 1% of a 512-token int8 phi-1.5 prefill."""
    if x.dtype != torch.bfloat16 or prefers_fp32_gemm(x.shape[0]):
        return gemm_via_fp32(x, weight_rows, n, bias)
    m = x.shape[0]
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    rows = bf16_slice_rows(x.shape[1])
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        w = bf16_rows(start, stop) if bf16_rows is not None else weight_rows(start, stop).to(x.dtype)
        step = slice_gemm_rows(m)
        for m0 in range(0, m, step):
            torch.mm(x[m0:m0 + step], w.t(), out=out[m0:m0 + step, start:stop])
    return out if bias is None else out.add_(bias.to(out.dtype))


def bf16_slice_rows(k: int) -> int:
    """Weight rows per bf16 slice of `gemm_dequantized` for K = k: multiples of 1024, about BF16_SLICE_BYTES of bf16
    (at least 1024 rows), each multiplied by x SLICE_GEMM_ROWS rows at a time. oneDNN's bf16 GEMM (AMX Xeon host, 2
    threads, M = 512, one int8 weight dequantized a slice at a time into a reused buffer) ran 16384 x 3072 in 32 ms
    with 1024-row slices, against 60-240 ms with 682-, 256- or 128-row ones (30 ms unsliced); 8192 x 2048 in 12 ms
    with 1024, 20-112 ms with 512, 256 or 128 (9 ms unsliced). On the Zen 4 host (AVX512-BF16, 2 threads, 6-8 distinct
    int4 weights, 7 alternating rounds, bf16 weight time / int4 time, eighteenth session): 4 MB slices in 256-row
    GEMMs against the 16 MB slices in whole-x GEMMs used before, 512 rows: 16384 x 3072 0.96x against 0.85x, 8192 x
    2048 0.95-0.96x against 0.87-0.95x (the host's state moved it), 6144 x 2048 0.945x / 0.950x, 2048 x 8192 (1024-row
    slices are 16 MB there) 0.943x / 0.957x; 4 MB slices in whole-x GEMMs were 0.84x on 16384 x 3072, and 128-row
    GEMMs 0.89-0.92x. A plain bf16 weight gains nothing from 256-row GEMMs (0.997x), so only the dequantized slices
    are split. Shorter products gain from the 4 MB slice, which stays in cache between its dequantization and its
    GEMM (8192 x 2048, ms a weight, 16 MB / 4 MB slices): 32 rows 4.43 / 4.19, 64 rows 6.81 / 6.50, 128 rows 12.10
    / 11.48, 256 rows 22.05 / 21.30. Where oneDNN runs on AMX tiles the slices stay AMX_SLICE_BYTES, each multiplied
    by all of x (the form measured there; the 4 MB form is not measured on AMX)."""
    size = AMX_SLICE_BYTES if has_amx() else BF16_SLICE_BYTES
    return max(1, size // (2 * k) // 1024) * 1024


def slice_gemm_rows(m: int) -> int:
    """Rows of x per GEMM on one dequantized slice (`bf16_slice_rows`): SLICE_GEMM_ROWS, or all m where oneDNN runs
    on AMX tiles."""
    return max(1, m) if has_amx() else SLICE_GEMM_ROWS


_SCRATCH = threading.local()  # each thread's reused fp32 and bf16 buffers for weight slices


def widened(weight: torch.Tensor) -> Callable[[int, int], torch.Tensor]:
    """`weight_rows` for `gemm_via_fp32`: rows [start, stop) of a bf16 (or fp16) weight [N, K] widened to fp32 into
    this thread's reused buffer (exact: the same values as `weight[start:stop].float()`). A fresh tensor per slice
    page-faults 4 bytes per weight each time: one-row products over 8192 x 2048 weights streamed from memory, PyTorch
    capped to AVX2, took 7.58 ms a weight so, 2.66 ms with the reused buffer, and 4.62 ms as an fp32 GEMM on fp32
    weights (`python benchmarks/widen_fp32.py`, `benchmarks/RESULTS.md`)."""
    k = weight.shape[1]

    def rows(start: int, stop: int) -> torch.Tensor:
        return scratch_f32(stop - start, k).copy_(weight[start:stop])

    return rows


def scratch_f32(rows: int, k: int) -> torch.Tensor:
    """This thread's reused fp32 buffer as a [rows, K] tensor, for one weight slice of `gemm_via_fp32` at a time
    (`widened`, and the quantized formats' dequantized rows): valid until the next call on this thread."""
    return _scratch("f32", torch.float32, rows, k)


def scratch_bf16(rows: int, k: int) -> torch.Tensor:
    """This thread's reused bf16 buffer as a [rows, K] tensor, for one dequantized weight slice of
    `gemm_dequantized`'s bf16 GEMM at a time: valid until the next call on this thread. A fresh tensor per slice
    page-faults its pages in again whenever the allocator has returned them."""
    return _scratch("bf16", torch.bfloat16, rows, k)


def release_scratch(name: str) -> None:
    """Drop this thread's reused "f32" or "bf16" slice buffer (the next `scratch_f32` / `scratch_bf16` makes a new
    one): for buffers only a timing probe needed."""
    if getattr(_SCRATCH, name, None) is not None:
        setattr(_SCRATCH, name, None)


def _scratch(name: str, dtype: torch.dtype, rows: int, k: int) -> torch.Tensor:
    need = rows * k
    buf = getattr(_SCRATCH, name, None)
    if buf is None or buf.numel() < need:
        buf = torch.empty(need, dtype=dtype)
        setattr(_SCRATCH, name, buf)
    return buf[:need].view(rows, k)


def gemm_via_fp32(x: torch.Tensor, weight_rows: Callable[[int, int], torch.Tensor], n: int,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """y [M, N] = x [M, K] @ W^T (+ bias) computed in fp32, W produced `weight_rows(start, stop)` -> fp32 rows at a
    time (so a converted chunk stays in cache); result in x's dtype."""
    m, k = x.shape
    xf = x.float()
    out = torch.empty(m, n, dtype=torch.float32, device=x.device)
    rows = max(16, PREFILL_CHUNK_BYTES // (4 * k))
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        torch.mm(xf, weight_rows(start, stop).t(), out=out[:, start:stop])
    if bias is not None:
        out += bias.float()
    return out.to(x.dtype)


def bf16_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """No-grad bf16 CPU linear on a plain [N, K] weight: x [M, K] -> [M, N]."""
    if native_kernels.usable(x, native_bf16_rows()) and (bias is None or bias.dtype == torch.bfloat16):
        return native_kernels.linear_bf16(x.contiguous(), weight.contiguous(), bias)
    if prefers_fp32_gemm(x.shape[0]):
        return gemm_via_fp32(x, widened(weight), weight.shape[0], bias)
    if bias is not None and bias.dtype == x.dtype and onednn_bf16():
        # oneDNN adds the bias inside the GEMM; F.linear (addmm) first copies it into every row of the output, a
        # pass over [M, N] that cost 2.6% of a 512-token phi-1.5 prefill. The same numbers (tested).
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class FastLinear(nn.Linear):
    """nn.Linear whose no-grad bf16 CPU forward runs the fastest kernel for its number of rows (module docstring)."""

    _packed: torch.Tensor | None = None
    _packed_from: tuple[int, int] | None = None  # (data_ptr, version) of the weight the copy was made from

    @staticmethod
    def needs_packing() -> bool:
        """Whether decode runs on a oneDNN-prepacked copy (only where the native kernels are unavailable)."""
        return not native_kernels.available() and onednn_bf16()

    def pack(self) -> None:
        weight = self.weight.detach()
        self._packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
        self._packed_from = (weight.data_ptr(), weight._version)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if (torch.is_grad_enabled() or x.dtype != torch.bfloat16 or weight.dtype != torch.bfloat16
                or x.device.type != "cpu" or weight.device.type != "cpu"):
            return F.linear(x, weight, self.bias)
        x2 = x.reshape(-1, x.shape[-1])
        if self.needs_packing() and x2.shape[0] <= native_kernels.MAX_ROWS:
            if self._packed is None or self._packed_from != (weight.data_ptr(), weight._version):
                self.pack()
            y = torch.ops.mkldnn._linear_pointwise(x2, self._packed, self.bias, "none", [], "")
        else:
            y = bf16_linear(x2, weight.detach(), self.bias)
        return y.reshape(*x.shape[:-1], y.shape[-1])


def is_plain_linear(module: nn.Module) -> bool:
    """A dense Linear a pass may replace: nn.Linear itself or its fast variant."""
    return type(module) in (nn.Linear, FastLinear)


def use_fast_linears(model: nn.Module, skip: tuple[str, ...] = ()) -> int:
    """Swap every plain nn.Linear of `model` (but those named in `skip`) to FastLinear in place; returns how many.
    A head tied to the embedding belongs in `skip` when `FastLinear.needs_packing()`: packing would copy it."""
    count = 0
    for name, module in model.named_modules():
        if type(module) is nn.Linear and name not in skip:
            module.__class__ = FastLinear
            count += 1
    return count
