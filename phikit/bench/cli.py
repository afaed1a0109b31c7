"""`phikit bench`: prefill and decode speed, time to first token and peak memory, phikit next to its peers.

Random weights of a real model shape are written once as a safetensors checkpoint; every engine loads the very same
file in a fresh process. Engines run alternately, `--repeats` times each (this host's memory bandwidth drifts by
15-25% between minutes), and the report gives medians and the ratio of each engine to phikit measured in the same
run. Each measurement is one greedy generation of `--new-tokens` + 1 tokens after a warm-up: time to first token
(prefill) and the rate of the tokens after it (decode), timed as each token arrives. Engines: phikit (bf16 and, with
--weights, int8 / int4), transformers (if installed), and llama.cpp through llama-cpp-python (if installed; the same
weights exported with phikit's GGUF writer as bf16 / q8_0 / q4_0). llama.cpp is driven from Python
(`Llama.generate`, greedy), which adds a little per-token overhead to its column.

With --paired, phikit and one peer are loaded in one process and take turns, `--repeats` rounds: each round's ratio
is measured seconds apart rather than a minute or more, so the drift that moves a separate-process median by 20%
cancels out. An engine paired with itself gave median ratios within 3% of 1 (decode and prefill, 10 rounds; single
rounds 0.7-1.8): read a paired median within a few percent of 1 as level.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

from .driver import BF16_FORMATS, GGUF_TYPES, column_name, run_bench, run_paired
from .engines import SHAPES


def format_paired(shape: str, results: list[dict[str, Any]], prompt_len: int, new_tokens: int, threads: int,
                  rounds: int) -> str:
    lines = [f"{shape}, batch 1, {threads} threads, prompt {prompt_len}, {new_tokens} new tokens; each pair in one "
             f"process, {rounds} alternating rounds; tok/s: each side's median; ratio: the median of the per-round "
             "ratios [lowest, highest]", "",
             "| phikit | peer | decode tok/s (phikit, peer) | decode ratio | prefill tok/s (phikit, peer) | "
             "prefill ratio |", "|---|---|---|---|---|---|"]
    for r in results:
        (da, db), (dm, dlo, dhi) = r["decode_tok_s"], r["decode_ratio"]
        (pa, pb), (pm, plo, pup) = r["prefill_tok_s"], r["prefill_ratio"]
        lines.append(f"| {r['a']} | {r['b']} | {da:.2f}, {db:.2f} | {dm:.2f}x [{dlo:.2f}, {dhi:.2f}] | "
                     f"{pa:.1f}, {pb:.1f} | {pm:.2f}x [{plo:.2f}, {pup:.2f}] |")
    return "\n".join(lines)


def format_report(shape: str, medians: dict[str, dict[str, float]], prompt_len: int, new_tokens: int,
                  threads: int, repeats: int) -> str:
    base = medians.get("phikit")
    roofline = medians.get("memory read", {}).get("read_gb_s")
    lines = [f"{shape}, batch 1, {threads} threads, prompt {prompt_len}, {new_tokens} new tokens, "
             f"median of {repeats}; memory read roofline {roofline or 0:.1f} GB/s (median, measured between rounds)",
             "", "| engine | decode tok/s | weights read per token | of the roofline | prefill tok/s | "
             "time to first token | peak RSS | decode vs phikit |", "|---|---|---|---|---|---|---|---|"]
    for engine, m in medians.items():
        if engine == "memory read":
            continue
        ratio = f"{m['decode_tok_s'] / base['decode_tok_s']:.2f}x" if base else "-"
        lines.append(f"| {engine} | {m['decode_tok_s']:.2f} | {m['bytes_per_token'] / 1e9:.2f} GB | "
                     f"{m['roofline_fraction']:.0%} | {m['prefill_tok_s']:.1f} | {m['ttft_s']:.2f} s | "
                     f"{m['peak_rss_gb']:.2f} GB | {ratio} |")
    same = [(column_name(w), f"llama.cpp-{t}") for w, t in GGUF_TYPES.items()]
    pairs = [f"{a} / {b} {medians[a]['decode_tok_s'] / medians[b]['decode_tok_s']:.2f}x" for a, b in same
             if a in medians and b in medians]
    if "transformers" in medians:
        pairs += [f"{column_name(w)} / transformers (bf16) "
                  f"{medians[column_name(w)]['decode_tok_s'] / medians['transformers']['decode_tok_s']:.2f}x"
                  for w in BF16_FORMATS if column_name(w) in medians]
    if pairs:
        lines += ["", "decode ratios, same weight format: " + "; ".join(pairs)]
    return "\n".join(lines)


def set_cpu_level(level: str) -> None:
    """Make every engine process of this run use CPU level `level` (checked here, in a child, so that an unknown
    or too high level is the error features.py gives, before any checkpoint is written)."""
    env = {**os.environ, "PHIKIT_CPU_LEVEL": level}
    if level in ("reference", "avx2"):
        env.update(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2", MKL_ENABLE_INSTRUCTIONS="AVX2")
    done = subprocess.run([sys.executable, "-c", "from phikit.cpu import features; print(features.level())"],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"phikit bench: error: --cpu-level {level}: {done.stderr.strip().splitlines()[-1]}")
    os.environ.update({k: v for k, v in env.items() if k in ("PHIKIT_CPU_LEVEL", "ATEN_CPU_CAPABILITY",
                                                             "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="phikit bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="phi-1.5", choices=sorted(SHAPES))
    p.add_argument("--folder", default=None, help="where the random checkpoint is written (default ~/.cache/phikit)")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--engines", default=None, help="comma-separated subset of phikit,transformers,llama.cpp")
    p.add_argument("--weights", default="bf16",
                   help="phikit weight formats, comma-separated: bf16,lossless,int8,int4 "
                        "(lossless: the bf16 values in 12 bits, phikit.LosslessBf16Config)")
    p.add_argument("--paired", action="store_true",
                   help="load phikit and each peer in one process and let them take turns, --repeats rounds (10 or "
                        "more): ratios measured seconds apart; no peak RSS (see run_paired). With --engines phikit alone: "
                        "each --weights format against phikit's bf16")
    p.add_argument("--cpu-level", default=None,
                   help="run phikit at this CPU level (PHIKIT_CPU_LEVEL; below avx512 PyTorch, oneDNN and MKL are "
                        "capped to AVX2 as well, as on an AVX2 CPU): reference, avx2, avx512, avx512_bf16 or neon")
    p.add_argument("--llama-cpp", default=None, metavar="DIR",
                   help="a folder holding a llama-cpp-python build (pip install --target DIR), e.g. one built for "
                        "the same level with GGML_NATIVE=OFF; put first on the engines' PYTHONPATH")
    args = p.parse_args(argv)
    if args.cpu_level:
        set_cpu_level(args.cpu_level)
    if args.llama_cpp:
        if not os.path.isdir(os.path.join(args.llama_cpp, "llama_cpp")):
            raise SystemExit(f"phikit bench: error: --llama-cpp {args.llama_cpp!r} holds no llama_cpp package; "
                             "install one there with `pip install --target DIR llama-cpp-python`")
        sys.path.insert(0, os.path.abspath(args.llama_cpp))  # this process exports the GGUF files with its gguf
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [os.path.abspath(args.llama_cpp), *filter(None, [os.environ.get("PYTHONPATH")])])
    engines = args.engines.split(",") if args.engines else None
    start = time.perf_counter()
    weights = tuple(args.weights.split(","))
    bad = [w for w in weights if w not in GGUF_TYPES]
    if bad:
        raise SystemExit(f"phikit bench: error: --weights {bad[0]!r} is not one of {', '.join(GGUF_TYPES)}")
    if args.paired:
        results = run_paired(args.shape, args.folder, args.prompt_len, args.new_tokens, args.threads, args.repeats,
                             engines, weights)
        print(format_paired(args.shape, results, args.prompt_len, args.new_tokens, args.threads, args.repeats))
    else:
        medians = run_bench(args.shape, args.folder, args.prompt_len, args.new_tokens, args.threads, args.repeats,
                            engines, weights)
        print(format_report(args.shape, medians, args.prompt_len, args.new_tokens, args.threads, args.repeats))
    print(f"\n(measured in {time.perf_counter() - start:.0f}s)", file=sys.stderr)
    return 0
