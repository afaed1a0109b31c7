"""The bf16 or int4 matrix-vector kernel with several rows of x, as a serving engine's batched decode calls it: the
time of M rows against one row in the same process, and (with --base) against the kernel of an older commit.

    .venv/bin/python benchmarks/matvec_rows.py [--rows 1,2,4,8] [--rounds 5] [--threads 2] [--format bf16|int4]
                                               [--base COMMIT]

16 distinct 8192 x 2048 weights (phi-1.5's fc1 shape; bf16 512 MB, from memory; int4 128 MB in phikit's native
layout, group 128), each multiplied by an [M, 2048] bf16 x in turn; per M, the median over rounds of the time for
all 16. The CPU level is the process's (`PHIKIT_CPU_LEVEL=avx2` for the AVX2 kernels). With --base, the base commit is
checked out into a temporary git worktree and both trees run as fresh child processes in turn (ABBA), each with its
own native build; the ratio that counts is the median per-round base / new time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from base_tree import abba, base_tree

REPO = Path(__file__).resolve().parents[1]


def child(rows: list[int], rounds: int, threads: int, fmt: str = "bf16") -> dict:
    import torch

    from phikit.cpu import kernels as native

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    if fmt == "int4":
        from phikit.formats.quantize_math import pack_int4_native

        sz = torch.stack((torch.rand(2048 // 128, 8192, generator=gen) * 0.02,
                          torch.randn(2048 // 128, 8192, generator=gen) * 0.01), dim=-1).to(torch.bfloat16)
        codes = [pack_int4_native(torch.randint(0, 16, (8192, 2048), generator=gen, dtype=torch.uint8))
                 for _ in range(16)]

        def product(x, w):
            return native.linear_int4(x, w, sz, 128, None)

        weights = codes
    else:
        weights = [torch.randn(8192, 2048, generator=gen).bfloat16() for _ in range(16)]

        def product(x, w):
            return native.linear_bf16(x, w, None)
    out = {}
    for m in rows:
        x = torch.randn(m, 2048, generator=gen).bfloat16()
        product(x, weights[0])
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for w in weights:
                product(x, w)
            times.append(time.perf_counter() - t0)
        out[m] = statistics.median(times)
    return out


def run_child(tree: Path, rows: str, rounds: int, threads: int, fmt: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, str(tree / "benchmarks" / "matvec_rows.py"), "--child", "--rows", rows,
                           "--rounds", str(rounds), "--threads", str(threads), "--format", fmt], env=env, cwd=tree,
                          capture_output=True, text=True, check=True)
    return {int(k): v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,2,4,8")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--format", choices=("bf16", "int4"), default="bf16")
    ap.add_argument("--base", default=None)
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    if args.child:
        print(json.dumps(child(rows, args.rounds, args.threads, args.format)))
        return 0
    if args.base is None:
        res = run_child(REPO, args.rows, args.rounds, args.threads, args.format)
        for m in rows:
            print(f"M={m}: {res[m] * 1e3:.1f} ms for 16 weights; {res[m] / res[rows[0]]:.2f}x M={rows[0]}")
        return 0
    with base_tree(args.base, Path(__file__).resolve()) as base:
        per_round = {m: [] for m in rows}
        news = {m: [] for m in rows}
        for order in abba(3, base):
            got = {name: run_child(tree, args.rows, args.rounds, args.threads, args.format) for name, tree in order}
            for m in rows:
                per_round[m].append(got["base"][m] / got["new"][m])
                news[m].append(got["new"][m] / got["new"][rows[0]])
        load = os.getloadavg()[0]
        print(f"load average at the end {load:.2f}; base {args.base}; 3 rounds (ABBA), {args.rounds} timings each")
        for m in rows:
            print(f"M={m}: base / new time {statistics.median(per_round[m]):.2f}x "
                  f"({min(per_round[m]):.2f}-{max(per_round[m]):.2f}); new M={m} / M={rows[0]} "
                  f"{statistics.median(news[m]):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
