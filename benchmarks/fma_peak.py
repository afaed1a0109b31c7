"""The fp32 fused-multiply-add peak of this CPU at a level's vector width, measured: the denominator of "fraction of
the FMA peak" for prefill figures; and the byte dot-product peak the portable int4 kernel is bound by.

    python benchmarks/fma_peak.py [--threads 2] [--levels avx2,avx512]

Compiles a loop of 12 independent fp32 FMA chains on the level's widest vectors (avx2: 256-bit, avx512: 512-bit;
`-O3 -funroll-loops`, so the 12 accumulators stay in registers), runs it on `--threads` OpenMP threads for about a
second, and prints GFLOP/s (2 flops per lane per FMA), the median of 5 runs. No memory traffic: registers only.

`maddubs_gproducts_s`: the same for vpmaddubsw + vpaddw (unsigned x signed byte products, pairs summed into 16-bit
lanes, then accumulated: what the portable int4 byte kernel does per 32 weights), 8 independent accumulators, one
operand read from a 1 KB buffer in L1 as the kernel reads x: G byte products per second. The int4 kernel multiplies
each weight by x's high and low byte (x kept to 16 bits), so its ceiling in multiply-adds a second is half of it.
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

SOURCE = r"""
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#if defined(__AVX512F__)
typedef __m512 V;
#define FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define SET(x) _mm512_set1_ps(x)
#define LANES 16
#else
typedef __m256 V;
#define FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define SET(x) _mm256_set1_ps(x)
#define LANES 8
#endif
int main(int argc, char **argv) {
    long iters = 200000000L / LANES;
    double t0 = omp_get_wtime();
    float sink = 0;
    #pragma omp parallel reduction(+ : sink)
    {
        V a[12], b = SET(0.999999f), c = SET(1e-7f);
        for (int i = 0; i < 12; i++) a[i] = SET((float)i);
        for (long n = 0; n < iters; n++)
            for (int i = 0; i < 12; i++) a[i] = FMA(a[i], b, c);
        for (int i = 1; i < 12; i++) a[0] = FMA(a[0], b, a[i]);
        sink += ((float *)&a[0])[0];
    }
    double s = omp_get_wtime() - t0;
    int threads = omp_get_max_threads();
    printf("%.1f %f\n", 2.0 * LANES * 12 * (double)iters * threads / s / 1e9, sink);
    return 0;
}
"""
BYTES_SOURCE = r"""
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#if defined(__AVX512BW__)
typedef __m512i V;
#define MAD(a, p) _mm512_maddubs_epi16(a, _mm512_loadu_si512(p))
#define ADD(a, b) _mm512_add_epi16(a, b)
#define SET(x) _mm512_set1_epi8(x)
#define BYTES 64
#else
typedef __m256i V;
#define MAD(a, p) _mm256_maddubs_epi16(a, _mm256_loadu_si256((const __m256i *)(p)))
#define ADD(a, b) _mm256_add_epi16(a, b)
#define SET(x) _mm256_set1_epi8(x)
#define BYTES 32
#endif
static int8_t buf[64][1024] __attribute__((aligned(64)));
int main(void) {
    long iters = 400000000L / BYTES;
    for (int t = 0; t < 64; t++)
        for (int i = 0; i < 1024; i++) buf[t][i] = (int8_t)(i % 7);
    double t0 = omp_get_wtime();
    long sink = 0;
    #pragma omp parallel reduction(+ : sink)
    {
        const int8_t *p = buf[omp_get_thread_num() % 64];
        V a = SET(3), c[8];
        for (int i = 0; i < 8; i++) c[i] = SET(0);
        for (long n = 0; n < iters; n++) {
            const int8_t *q = p + (n & 1) * 8 * BYTES;
            for (int i = 0; i < 8; i++) c[i] = ADD(c[i], MAD(a, q + i * BYTES));
        }
        for (int i = 1; i < 8; i++) c[0] = ADD(c[0], c[i]);
        sink += ((int16_t *)&c[0])[0];
    }
    double s = omp_get_wtime() - t0;
    printf("%.1f %ld\n", (double)BYTES * 8 * (double)iters * omp_get_max_threads() / s / 1e9, sink);
    return 0;
}
"""
FLAGS = {"avx2": ["-mavx2", "-mfma"], "avx512": ["-mavx512f", "-mavx512bw"]}


def measure(level: str, threads: int, source: str = SOURCE) -> float:
    compiler = os.environ.get("CC") or shutil.which("cc") or "gcc"
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = os.path.join(tmp, "fma.c"), os.path.join(tmp, "fma")
        with open(src, "w") as f:
            f.write(source)
        subprocess.run([compiler, "-O3", "-funroll-loops", *FLAGS[level], "-fopenmp", src, "-o", exe], check=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        runs = [float(subprocess.run([exe], capture_output=True, text=True, env=env, check=True).stdout.split()[0])
                for _ in range(5)]
    return statistics.median(runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--levels", default="avx2,avx512")
    args = parser.parse_args()
    for level in args.levels.split(","):
        print(json.dumps({"level": level, "threads": args.threads, "fp32_fma_gflop_s": measure(level, args.threads),
                          "maddubs_gproducts_s": measure(level, args.threads, BYTES_SOURCE)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
