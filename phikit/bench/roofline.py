"""The memory-read roofline of `phikit bench`, in a fresh process: GB/s that summing one 1.6 GB tensor sustains.

    python -m phikit.bench.roofline THREADS   # prints {"read_gb_s": ...}
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch


def main(argv: list[str]) -> int:
    torch.set_num_threads(int(argv[0]))
    data = torch.ones(400_000_000 // 4 * 4, dtype=torch.float32)  # 1.6 GB: far beyond every cache
    times = []
    for _ in range(7):
        start = time.perf_counter()
        data.sum()
        times.append(time.perf_counter() - start)
    print(json.dumps({"read_gb_s": data.numel() * 4 / statistics.median(times[1:]) / 1e9}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
