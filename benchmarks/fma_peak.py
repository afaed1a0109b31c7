"""The vector arithmetic peaks of this CPU at a level's width, measured: the denominators of "fraction of the peak"
for prefill figures, and the byte dot-product peak the portable int4 kernel is bound by.

    python benchmarks/fma_peak.py [--threads 2] [--levels avx2,avx512,avx512_bf16]

Each figure times a loop of independent chains of one instruction on registers (inline assembly, so the compiler can
neither spill the accumulators nor merge the chains), on `--threads` OpenMP threads for about a second, and prints
the median of 5 runs:

- `fp32_fma_gflop_s`: vfmadd231ps on the level's widest vectors (avx2: 12 chains on ymm0-11, the 16 registers AVX2
  has; avx512: 24 on zmm0-23), 2 flops per lane.
- `maddubs_gproducts_s`: vpmaddubsw (unsigned x signed bytes, pairs summed into 16-bit lanes) with one operand read
  from a 1 KB buffer in L1 as the int4 byte kernel reads x, each result added into an accumulator by vpaddw (what that
  kernel does per 32 weights): G byte products per second. The kernel multiplies each weight by x's high and low
  byte (x kept to 16 bits), so its ceiling in multiply-adds a second is half of it.
- `bf16_dot_gflop_s` (avx512_bf16 only): vdpbf16ps on zmm, 24 chains, 64 flops an instruction (16 lanes, 2
  products each): the peak of oneDNN's bf16 GEMM on CPUs without AMX.

An earlier version timed C loops (`a[i] = fma(a[i], b, c)` over an array of 12 vectors); GCC kept that array in
memory, and the figures came out 10-20% under these (Zen 4 host: AVX2 185 against 231 GFLOP/s), so the "fraction of
the FMA peak" quoted from them before the eighteenth session in `benchmarks/RESULTS.md` is overstated by as much.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

MAIN = r"""
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
static uint8_t buf[64][1024] __attribute__((aligned(64)));
int main(void) {
    const long iters = ITERS;
    for (int t = 0; t < 64; t++)
        for (int i = 0; i < 1024; i++) buf[t][i] = (uint8_t)(i % 7);
    double t0 = omp_get_wtime();
    #pragma omp parallel
    {
        const uint8_t *p = buf[omp_get_thread_num() % 64];
        for (long n = 0; n < iters; n++) __asm__ volatile(BODY : : "r"(p) : "memory");
    }
    double s = omp_get_wtime() - t0;
    printf("%.1f\n", (double)WORK * (double)iters * omp_get_max_threads() / s / 1e9);
    return 0;
}
"""


def _body(lines: list[str]) -> str:
    return " ".join(f'"{line}\\n\\t"' for line in lines)


def fma_source(level: str) -> str:
    reg, chains, lanes = ("ymm", 12, 8) if level == "avx2" else ("zmm", 24, 16)
    a, b = (14, 15) if level == "avx2" else (30, 31)
    body = _body([f"vfmadd231ps %%{reg}{a}, %%{reg}{b}, %%{reg}{i}" for i in range(chains)])
    return MAIN.replace("ITERS", str(6_000_000_000 // chains)).replace("BODY", body) \
        .replace("WORK", str(2 * lanes * chains))


def maddubs_source(level: str) -> str:
    reg, width = ("ymm", 32) if level == "avx2" else ("zmm", 64)
    pairs = 6  # products into registers 6..11, accumulated into 0..5; the other operand is register 14
    lines = []
    for i in range(pairs):
        lines.append(f"vpmaddubsw {i * width}(%0), %%{reg}14, %%{reg}{6 + i}")
        lines.append(f"vpaddw %%{reg}{6 + i}, %%{reg}{i}, %%{reg}{i}")
    return MAIN.replace("ITERS", str(3_000_000_000 // pairs)).replace("BODY", _body(lines)) \
        .replace("WORK", str(pairs * width))


def bf16_source() -> str:
    body = _body([f"vdpbf16ps %%zmm30, %%zmm31, %%zmm{i}" for i in range(24)])
    return MAIN.replace("ITERS", str(3_000_000_000 // 24)).replace("BODY", body).replace("WORK", str(24 * 64))


FLAGS = {"avx2": ["-mavx2", "-mfma"], "avx512": ["-mavx512f", "-mavx512bw"],
         "avx512_bf16": ["-mavx512f", "-mavx512bw", "-mavx512bf16"]}


def measure(level: str, threads: int, source: str) -> float:
    compiler = os.environ.get("CC") or shutil.which("cc") or "gcc"
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = os.path.join(tmp, "peak.c"), os.path.join(tmp, "peak")
        with open(src, "w") as f:
            f.write(source)
        subprocess.run([compiler, "-O2", *FLAGS[level], "-fopenmp", src, "-o", exe], check=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        runs = [float(subprocess.run([exe], capture_output=True, text=True, env=env, check=True).stdout.split()[0])
                for _ in range(5)]
    return statistics.median(runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--levels", default="avx2,avx512",
                        help="comma-separated: avx2, avx512, avx512_bf16 (the last needs a CPU with AVX512-BF16)")
    args = parser.parse_args()
    for level in args.levels.split(","):
        if level not in FLAGS:
            parser.error(f"--levels: {level!r} is not one of {', '.join(FLAGS)}")
        row = {"level": level, "threads": args.threads}
        if level == "avx512_bf16":
            row["bf16_dot_gflop_s"] = measure(level, args.threads, bf16_source())
        else:
            row["fp32_fma_gflop_s"] = measure(level, args.threads, fma_source(level))
            row["maddubs_gproducts_s"] = measure(level, args.threads, maddubs_source(level))
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
