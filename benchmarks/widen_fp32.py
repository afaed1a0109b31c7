"""The bf16 product of CPUs without a bf16 GEMM (below phikit's avx512 level): an fp32 GEMM on weight slices widened
to fp32. Times one-row products (a decode step) over 16 weights of 8192 x 2048 (512 MB of bf16: they stream from
memory, as a model's do) three ways, in one run:

* peer: `F.linear` on fp32 copies of the weights (what an fp32 model does; 8 weights, 512 MB of fp32);
* fresh: each slice widened into a new tensor (`weight[a:b].float()`);
* phikit: each slice widened into one reused buffer (`phikit.cpu.gemm.widened`, what `FastLinear` runs).

Run it as an AVX2 CPU runs: `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/widen_fp32.py`.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from phikit.cpu.gemm import gemm_via_fp32, widened


def per_weight_ms(run, count: int, repeats: int = 7) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3 / count


def main() -> None:
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(8192, 2048, generator=gen).bfloat16() for _ in range(16)]
    fp32 = [w.float() for w in weights[:8]]
    x = torch.randn(1, 2048, generator=gen).bfloat16()
    with torch.no_grad():
        peer = per_weight_ms(lambda: [F.linear(x.float(), w) for w in fp32], len(fp32))
        fresh = per_weight_ms(lambda: [gemm_via_fp32(x, lambda a, b, w=w: w[a:b].float(), 8192, None)
                                       for w in weights], len(weights))
        ours = per_weight_ms(lambda: [gemm_via_fp32(x, widened(w), 8192, None) for w in weights], len(weights))
    print(f"PyTorch CPU capability {torch.backends.cpu.get_cpu_capability()}, 2 threads, 8192 x 2048, one row")
    print(f"fp32 GEMM on fp32 weights (peer)   {peer:6.2f} ms a weight")
    print(f"fp32 GEMM, fresh widened slices    {fresh:6.2f} ms  ({peer / fresh:.2f}x the peer's speed)")
    print(f"fp32 GEMM, reused widened buffer   {ours:6.2f} ms  ({peer / ours:.2f}x the peer's speed)")


if __name__ == "__main__":
    main()
