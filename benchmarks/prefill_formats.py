"""A quantized model's prefill against the bf16 model it came from, paired in one process: the issue-17 line "int8
and int4 prefill no slower than bf16 prefill", without the process-to-process swings of a VM.

    .venv/bin/python benchmarks/prefill_formats.py [--shape phi-1.5] [--weights int4,int8] [--prompt-len 512]
                                                   [--rounds 6] [--threads 2]

A random bf16 model of the shape (phikit/bench/engines.py SHAPES) and, per format, a copy quantized by
`Int4WeightOnlyConfig()` / `Int8WeightOnlyConfig()` (the head at int8, as loaders keep it); one prompt of
--prompt-len random ids, `model(ids, logits_to_keep=1)` (a prefill), the bf16 model and each copy taking turns
(ABBA) for --rounds rounds after a warm-up. Prints each format's median time, the median per-round ratio bf16 /
format time (> 1: the format is faster) with its range, and where the quantized model's linear layers spend their
time: oneDNN / MKL GEMMs on the dequantized slices (`torch.mm`), the dequantization, and the rest (bias adds, views).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine_decode import random_model  # noqa: E402  (benchmarks/, this script's folder)


def timed(owner, name: str, totals: dict, key: str) -> None:
    """Wrap owner.name so that its wall time adds up in totals[key]."""
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - start

    setattr(owner, name, wrapper)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="phi-1.5")
    ap.add_argument("--weights", default="int4,int8")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    from phikit.cpu import features
    from phikit.cpu import kernels as native
    from phikit.formats.configs import Int4WeightOnlyConfig, Int8WeightOnlyConfig
    from phikit.formats.int4 import Int4Linear
    from phikit.formats.int8 import Int8Linear
    from phikit.formats.quantize import quantize_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base, config = random_model(args.shape)
    configs = {"int4": Int4WeightOnlyConfig, "int8": Int8WeightOnlyConfig}
    models = {"bf16": base}
    for fmt in args.weights.split(","):
        models[fmt] = quantize_model(copy.deepcopy(base), configs[fmt]())
    ids = torch.randint(3, config.vocab_size, (1, args.prompt_len), generator=torch.Generator().manual_seed(1))
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            model(ids, logits_to_keep=1)
        for k in range(args.rounds):
            order = list(models) if k % 2 == 0 else list(models)[::-1]
            for name in order:
                start = time.perf_counter()
                models[name](ids, logits_to_keep=1)
                times[name].append(time.perf_counter() - start)
        totals = {key: 0.0 for key in ("linears", "mm", "dequant")}
        timed(torch, "mm", totals, "mm")
        for fn in ("dequantize_int4_rows", "dequantize_int4_rows_f32", "dequantize_int8_rows",
                   "dequantize_int8_rows_f32"):
            if hasattr(native, fn):
                timed(native, fn, totals, "dequant")
        timed(Int4Linear, "forward", totals, "linears")
        timed(Int8Linear, "forward", totals, "linears")
        breakdown = {}
        for fmt in list(models)[1:]:
            for key in totals:
                totals[key] = 0.0
            models[fmt](ids, logits_to_keep=1)
            breakdown[fmt] = dict(totals)
    print(f"{args.shape}, prefill of {args.prompt_len} tokens, {args.rounds} rounds (ABBA), {args.threads} threads, "
          f"CPU level {features.level()}")
    print(f"bf16: {statistics.median(times['bf16']):.3f} s")
    for fmt in list(models)[1:]:
        ratios = [b / q for b, q in zip(times["bf16"], times[fmt])]
        part = breakdown[fmt]
        print(f"{fmt}: {statistics.median(times[fmt]):.3f} s; bf16 / {fmt} time {statistics.median(ratios):.3f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f}); its linears {part['linears']:.3f} s: GEMMs {part['mm']:.3f} s, "
              f"dequantization {part['dequant']:.3f} s, rest {part['linears'] - part['mm'] - part['dequant']:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
