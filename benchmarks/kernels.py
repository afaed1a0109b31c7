"""phikit's native CPU pieces against their PyTorch peers, measured alternately in one process: medians and ratios.

    python benchmarks/kernels.py [--rounds 9] [--threads 2]

Each line times one piece and the PyTorch call it replaces on the same tensors, round after round in turn (this
host's memory bandwidth drifts between minutes, so only same-run ratios mean anything):
* causal attention of a 512-token prompt (32 heads x 64 dims, phi-1.5) against `F.scaled_dot_product_attention`;
* gelu_new over 512 x 8192 bf16 values (a table lookup) against its seven PyTorch ops;
* the rotary embedding of a 512-token k (32 heads x 64 dims, half of them rotating) against RotaryTables' four
  PyTorch ops, and RMSNorm of 512 x 3072 values against its PyTorch ops;
* the bf16 matrix-vector kernel (8192 x 2048) against `F.linear`, and over weights on 2 MB pages against 4 KB pages
  (24 distinct weights, 768 MB, so they come from memory);
* the lossless 12-bit bf16 kernel on the same 24 weights against the bf16 kernel (both on 2 MB pages), and a prefill
  through it (128 and 512 rows: the GEMM on rebuilt row slices) against `F.linear` on the plain weight;
* the int8 kernel on the blocked layout (8192 x 2048, 1 row and 8 rows) against `aten._weight_int8pack_mm`.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from phikit.cpu import hugepages
from phikit.cpu import kernels as native_kernels
from phikit.model.layers import RMSNorm
from phikit.ops.activations import gelu_new as _gelu_new_ops
from phikit.model.rope import RotaryTables
from phikit.formats.lossless import LosslessBf16Linear
from phikit.formats.quantize_math import pack_int8_native, quantize_int8


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(name: str, ours: Callable[[], object], peer: Callable[[], object], rounds: int, what: str) -> None:
    ours(), peer()  # warm-up: build, allocator, caches
    a, b = [], []
    for _ in range(rounds):
        a.append(seconds(ours))
        b.append(seconds(peer))
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"{name:44s} phikit {ma * 1e3:8.2f} ms  {what:>8s} {mb * 1e3:8.2f} ms  ratio {mb / ma:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not native_kernels.has_decode_step():
        raise SystemExit(f"phikit's native kernels do not run here ({native_kernels.build_error or 'no AVX512-BF16'})")
    gen = torch.Generator().manual_seed(0)
    r = args.rounds

    q = torch.randn(1, 512, 32, 64, generator=gen).bfloat16().transpose(1, 2)
    k = torch.randn(1, 32, 512, 64, generator=gen).bfloat16()
    v = torch.randn(1, 32, 512, 64, generator=gen).bfloat16()
    compare("causal attention, 512 tokens, 32 x 64", lambda: native_kernels.attention_prefill(q, k, v, 0.125),
            lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), r, "SDPA")

    x = torch.randn(512, 8192, generator=gen).bfloat16()
    torch_gelu = lambda: 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))  # noqa: E731
    compare("gelu_new, 512 x 8192", lambda: native_kernels.lookup(x, _gelu_new_ops), torch_gelu, r, "ops")

    angles = torch.randn(1, 512, 16, generator=gen) * 50
    tables = RotaryTables.build(torch.cat([angles, angles], -1).cos().bfloat16(),
                                torch.cat([angles, angles], -1).sin().bfloat16(), 64)
    fused = torch.randn(1, 512, 3 * 2048, generator=gen).bfloat16()
    kv = fused[..., 2048:4096].view(1, 512, 32, 64).transpose(1, 2)  # k as the fused projection leaves it
    partnered = lambda: torch.cat((kv[..., 16:32], kv[..., :16], kv[..., 32:]), dim=-1)  # noqa: E731
    compare("rotary, 512 tokens, 32 x 64", lambda: native_kernels.rotary(kv, tables.cos_full, tables.sin_signed, 32),
            lambda: kv * tables.cos_full + partnered() * tables.sin_signed, r, "ops")
    norm, h = RMSNorm(3072).bfloat16(), torch.randn(1, 512, 3072, generator=gen).bfloat16()

    def torch_norm() -> torch.Tensor:  # layers.RMSNorm's ops
        hf = h.float()
        return norm.weight.detach() * (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + 1e-5)).bfloat16()

    compare("RMSNorm, 512 x 3072", lambda: native_kernels.rms_norm(h, norm.weight.detach(), 1e-5), torch_norm, r, "ops")

    n, kk = 8192, 2048
    plain = [torch.randn(n, kk, generator=gen).bfloat16() for _ in range(24)]
    huge = []
    for w in plain:
        huge.append(hugepages.empty_like(w).copy_(w))
    xv = torch.randn(1, kk, generator=gen).bfloat16()
    every = lambda ws, fn: [fn(w) for w in ws]  # noqa: E731 (24 weights: from memory, not cache)
    compare("bf16 matvec, 24 x 8192 x 2048", lambda: every(plain, lambda w: native_kernels.linear_bf16(xv, w, None)),
            lambda: every(plain, lambda w: F.linear(xv, w)), r, "F.linear")
    compare("bf16 matvec, 2 MB pages against 4 KB pages", lambda: every(
        huge, lambda w: native_kernels.linear_bf16(xv, w, None)), lambda: every(
        plain, lambda w: native_kernels.linear_bf16(xv, w, None)), r, "4 KB")

    lossless = [LosslessBf16Linear.from_weight(w) for w in huge]  # its data on 2 MB pages too
    compare("lossless 12-bit matvec, 24 x 8192 x 2048", lambda: every(lossless, lambda m: m(xv)), lambda: every(
        huge, lambda w: native_kernels.linear_bf16(xv, w, None)), r, "bf16")
    for rows in (128, 512):  # a prefill: the same GEMM on rebuilt slices of rows, against it on the plain weight
        xr = torch.randn(rows, kk, generator=gen).bfloat16()
        compare(f"lossless 12-bit GEMM, {rows} rows, 8192 x 2048", lambda: lossless[0](xr),
                lambda: F.linear(xr, huge[0]), r, "bf16")
    del lossless

    qw, s = quantize_int8(plain[0])
    packed = pack_int8_native(qw)
    for rows in (1, 8):
        xr = torch.randn(rows, kk, generator=gen).bfloat16()
        compare(f"int8 linear, {rows} row(s), 8192 x 2048", lambda: native_kernels.linear_int8(xr, packed, s, None),
                lambda: torch.ops.aten._weight_int8pack_mm(xr, qw, s), r, "aten")


if __name__ == "__main__":
    main()
