"""phikit's matrix-vector kernels at every CPU level this host runs, against the memory's read bandwidth measured in
the same process: GB/s of weights streamed and the fraction of that roofline.

    python benchmarks/matvec_levels.py [--rounds 7] [--threads 2] [--levels avx2,avx512_bf16] [--group 128]

Each level runs in a fresh process (PHIKIT_CPU_LEVEL, and PyTorch capped to AVX2 below avx512, as
tests/test_cpu_levels.py does). In each, 16 distinct 8192 x 2048 weights (phi-1.5's fc1 shape; 256-512 MB, so they
come from memory) are multiplied by one bf16 row, round after round in turn with a plain read of as many bytes
(`torch.sum` over an fp32 buffer as large) -- the roofline. Prints one JSON line per level and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CHILD = "--child"


def child(rounds: int, threads: int, group: int) -> dict:
    import torch

    from phikit.cpu import features
    from phikit.cpu import kernels as native
    from phikit.formats.quantize_math import pack_int4_native, pack_int8_native

    torch.set_num_threads(threads)
    n, k, count = 8192, 2048, 16
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, k, generator=gen).bfloat16()
    weights = {
        "bf16": [torch.randn(n, k, generator=gen).bfloat16() for _ in range(count)],
        "int8": [(pack_int8_native(torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)),
                  (torch.rand(n, generator=gen) * 0.01).bfloat16()) for _ in range(count)],
        "int4": [(pack_int4_native(torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8)),
                  torch.rand(k // group, n, 2, generator=gen).bfloat16()) for _ in range(count)],
    }
    run = {
        "bf16": lambda w: native.linear_bf16(x, w, None),
        "int8": lambda w: native.linear_int8(x, w[0], w[1], None),
        "int4": lambda w: native.linear_int4(x, w[0], w[1], group, None),
    }
    nbytes = {"bf16": n * k * 2, "int8": n * k + n * 2, "int4": n * k // 2 + (k // group) * n * 4}
    roof = torch.ones(n * k * 2 * count // 4, dtype=torch.float32)
    times: dict[str, list[float]] = {name: [] for name in [*run, "read"]}
    for _ in range(rounds):
        for name, fn in run.items():
            start = time.perf_counter()
            for w in weights[name]:
                fn(w)
            times[name].append(time.perf_counter() - start)
        start = time.perf_counter()
        roof.sum()
        times["read"].append(time.perf_counter() - start)
    read_gbs = roof.numel() * 4 / statistics.median(times["read"]) / 1e9
    out = {"level": features.level(), "read_gb_s": round(read_gbs, 1)}
    for name in run:
        gbs = nbytes[name] * count / statistics.median(times[name]) / 1e9
        out[f"{name}_gb_s"] = round(gbs, 1)
        out[f"{name}_of_read"] = round(gbs / read_gbs, 2)
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        print(json.dumps(child(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--group", type=int, default=128, help="int4 group size (128, as phikit quantizes by default)")
    parser.add_argument("--levels", default=None, help="comma-separated; default: every level but reference")
    args = parser.parse_args()
    from phikit.cpu import features

    levels = args.levels.split(",") if args.levels else [lv for lv in features.runnable_levels() if lv != "reference"]
    rows = []
    for level in levels:
        env = {**os.environ, "PHIKIT_CPU_LEVEL": level}
        if level in ("avx2",):
            env.update({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"})
        done = subprocess.run([sys.executable, __file__, CHILD, str(args.rounds), str(args.threads), str(args.group)],
                              capture_output=True, text=True, env=env, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    print("\n| level | read GB/s | bf16 GB/s (of read) | int8 GB/s (of read) | int4 GB/s (of read) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['level']} | {r['read_gb_s']} | {r['bf16_gb_s']} ({r['bf16_of_read']}) | {r['int8_gb_s']} "
              f"({r['int8_of_read']}) | {r['int4_gb_s']} ({r['int4_of_read']}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
