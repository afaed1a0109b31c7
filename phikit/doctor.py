"""`phikit doctor`: what runs on this machine, and why the fast paths not taken are not.

It prints the CPU and its features, the CPU level in use (`phikit/cpu/features.py`), PyTorch's own dispatch, the
native library, the kernel behind each operation of the CPU backend's table, and how linear layers of each weight
format multiply here. Nothing is timed but the one-off GEMM choice a bf16 prefill makes anyway.
"""

from __future__ import annotations

import os

import torch

from .backends.cpu import decode_step
from .backends.cpu.ops import NATIVE_FROM, cpu_ops, why_not_native
from .cpu import features, gemm
from .cpu import kernels as native

SHOWN_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "avx512_vnni",
               "avx_vnni", "amx_tile", "amx_bf16", "asimd", "asimddp", "i8mm", "bf16", "sve")


def report() -> str:
    """The whole report, as printed."""
    info, choice = features.cpu_info(), features.level_choice()
    lines = [f"CPU: {info.model} ({info.arch})",
             "  features: " + (" ".join(f for f in SHOWN_FLAGS if f in info.flags) or "(none read)"),
             f"  levels this CPU runs: {', '.join(features.runnable_levels())}",
             f"  level in use: {choice.level}" + (f" ({choice.reason})" if choice.reason else
                                                 " (PHIKIT_CPU_LEVEL=<level> forces a lower one)"),
             f"PyTorch {torch.__version__}: ATen CPU capability {torch.backends.cpu.get_cpu_capability()}, "
             f"{torch.get_num_threads()} threads; oneDNN bf16 GEMM here: {'yes' if gemm.onednn_bf16() else 'no'}"]
    if native.available():
        lines.append(f"native kernels: built for {choice.level} ({' '.join(native.compile_flags(choice.level) or [])})")
    else:
        lines.append(f"native kernels: not in use ({native.build_error})")
    ops = cpu_ops()
    lines.append(f"operations (table {ops.name}):")
    for op in NATIVE_FROM:
        kernel = ops.kernels.get(op)
        if op == "decode_step" and kernel and os.environ.get("PHIKIT_NATIVE_STEP", "1") == "0":
            kernel = None
            why = "turned off by PHIKIT_NATIVE_STEP=0"
        else:
            why = why_not_native(op)
        lines.append(f"  {op:17s} {kernel}" if kernel else f"  {op:17s} PyTorch (reference): {why}")
    lines.append("linear layers on this CPU:")
    lines += [f"  {name:17s} {how}" for name, how in _linears()]
    return "\n".join(lines)


def _linears() -> list[tuple[str, str]]:
    """(weight format, how its products run here) for the formats phikit holds on a CPU."""
    if native.available():
        bf16_decode = "native matrix-vector kernel (<= 8 rows)"
    elif gemm.onednn_bf16():
        bf16_decode = "oneDNN on a prepacked copy (<= 8 rows)"
    else:
        bf16_decode = "fp32 GEMM on weights widened in cache-sized slices (all rows)"
    rows = f"from {gemm.FP32_GEMM_MIN_ROWS} rows"
    if not gemm.onednn_bf16():
        prefill = "fp32 GEMM on widened weight slices (no bf16 GEMM here)"
    else:
        prefill = (f"MKL fp32 GEMM on widened weight slices {rows} (timed faster here)"
                   if gemm.prefers_fp32_gemm(4096) else f"oneDNN bf16 GEMM {rows}")
    int8 = "native 4-row blocked kernel" if native.available() else "aten _weight_int8pack_mm"
    quant_gemm = "phikit's GEMM tiles" if gemm.tiles_preferred() else "a GEMM on dequantized slices"
    if native.available():
        from .formats import int8 as int8_format

        int8 += f", {quant_gemm} from {int8_format.native_rows()} rows"
    int4 = ("native kernel (bf16 dot products)" if native.has_bf16_dot() else
            "native kernel (byte dot products)" if native.has_int4_byte_dot() else
            "native kernel (16-bit integer products)" if native.has_int4() else "aten _weight_int4pack_mm_for_cpu")
    if native.has_int4():
        from .formats import int4 as int4_format

        crossover = int4_format.native_rows()  # timed here, once per process
        int4 += (", at every row count (timed: the GEMM never caught up)" if crossover >= gemm.NEVER else
                 f", {quant_gemm} from {crossover} rows (timed here)")
    lossless = ("native 12-bit kernel, bit-equal to bf16" if native.has_c12() else
                "unavailable: needs CPU level avx512_bf16 (LosslessBf16Config raises; the CLI's auto keeps bf16)")
    step = "fused native step" if decode_step.enabled() else "per-layer modules"
    return [("bf16 decode", bf16_decode), ("bf16 prefill", prefill),
            ("int8", int8), ("int4", int4), ("lossless 12-bit", lossless), ("batch-1 decode", step)]


def main() -> int:
    print(report())
    return 0
