"""Tensor parallelism on this CPU: tp=2 (two rank processes, gloo on loopback, 1 thread each) against tp=1 (one
process, 2 threads) on the same random bf16 checkpoint, decode and prefill, with the collectives' time per token.

    .venv/bin/python benchmarks/tensor_parallel.py [--shape phi-1.5] [--prompt 128] [--tokens 32] [--rounds 2]

Each mode runs in fresh processes, alternating (tp1, tp2, tp1-unfused, ...) for --rounds rounds; medians are printed.
`tp1-unfused` is tp=1 with the fused one-call decode step switched off (as it is under tp>1), which separates what
sharding costs from what losing the fused step costs; `tp2-gloo` is tp=2 with every all-reduce through gloo instead
of the shared-memory one (PHIKIT_TP_SHM=0). Decode tok/s: (N - 1) tokens over the time from the first
generated token to the last of one greedy generate(); prefill tok/s: one forward of --prompt tokens (median of 3).
The checkpoint is phikit/bench's (written once to ~/.cache/phikit/bench/<shape>).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# mode -> (ranks, threads per rank); tp2-gloo: every all-reduce through gloo (PHIKIT_TP_SHM=0)
MODES = {"tp1": (1, 2), "tp2": (2, 1), "tp2-gloo": (2, 1), "tp1-unfused": (1, 2)}


def child(folder: str, mode: str, prompt: int, tokens: int) -> None:
    import torch
    import torch.distributed as dist

    import phikit
    from phikit.bench.engines import Clock
    from phikit.ops import bind, bound, register

    ranks, threads = MODES[mode]
    torch.set_num_threads(threads)
    kwargs = {"tp_plan": "auto"} if ranks > 1 else {}
    try:
        model = phikit.AutoModelForCausalLM.from_pretrained(folder, **kwargs)
        if mode == "tp1-unfused":
            bind(model, register(dataclasses.replace(bound(model), name="bench-unfused", decode_step=None)))
        ids = torch.randint(100, 50000, (1, prompt), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            model.generate(ids[:, :8], max_new_tokens=4, do_sample=False)  # warm-up: kernels, GEMM choices
            times = []
            for _ in range(3):
                start = time.perf_counter()
                model(ids, logits_to_keep=1)
                times.append(time.perf_counter() - start)
            prefill = prompt / statistics.median(times)
            stats = getattr(getattr(model, "tensor_parallel", None), "stats", None)
            clock = Clock()
            if stats is not None:
                stats.reset()
            model.generate(ids[:, :16], max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                           streamer=clock)
            arrived = clock.times[1:]  # the first put() is the prompt
            decode = (len(arrived) - 1) / (arrived[-1] - arrived[0])
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB, this rank's peak
        result = {"mode": mode, "prefill_tok_s": prefill, "decode_tok_s": decode, "peak_rss_gib": peak_gb}
        if stats is not None:  # collectives of the whole generate: prefill of 16 + `tokens` steps
            result["all_reduce_ms_per_token"] = 1e3 * stats.all_reduce_s / tokens
            result["all_reduce_calls_per_token"] = stats.all_reduce_calls / tokens
            result["gather_ms_per_token"] = 1e3 * stats.gather_s / tokens
            # the collective alone: one decode step's hidden state [1, 1, hidden] fp32, both ranks at it together
            # (the in-model time above also holds the wait for the slower rank); phikit's reducer, then gloo's
            x = torch.zeros(1, 1, model.config.hidden_size)
            for key, reduce in (("all_reduce_alone_us", model.tensor_parallel.all_reduce),
                                ("gloo_all_reduce_alone_us", dist.all_reduce)):
                dist.barrier()
                start = time.perf_counter()
                for _ in range(200):
                    reduce(x)
                result[key] = 1e6 * (time.perf_counter() - start) / 200
            result["reducer"] = model.tensor_parallel.reducer
        if ranks == 1 or dist.get_rank() == 0:
            print("RESULT " + json.dumps(result), flush=True)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(folder: str, mode: str, prompt: int, tokens: int) -> dict:
    ranks, threads = MODES[mode]
    port = _free_port()
    procs = []
    for rank in range(ranks):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
        if mode == "tp2-gloo":
            env["PHIKIT_TP_SHM"] = "0"
        if ranks > 1:
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(ranks), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
        procs.append(subprocess.Popen([sys.executable, __file__, "--child", mode, "--folder", folder,
                                       "--prompt", str(prompt), "--tokens", str(tokens)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate()[0] for p in procs]
    for p, out in zip(procs, outs):
        if p.returncode:
            raise SystemExit(f"{mode} failed:\n{out[-3000:]}")
    line = next(l for l in outs[0].splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="phi-1.5")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.folder, args.child, args.prompt, args.tokens)
        return
    sys.path.insert(0, str(REPO))
    from phikit.bench.driver import default_folder
    from phikit.bench.engines import write_checkpoint

    folder = write_checkpoint(args.shape, default_folder(args.shape))
    results: dict[str, list[dict]] = {m: [] for m in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            results[mode].append(run(folder, mode, args.prompt, args.tokens))
            print(json.dumps(results[mode][-1]), flush=True)
    med = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k not in ("mode", "reducer")}
           for m, rs in results.items()}
    print(f"\n{args.shape}, bf16, {args.prompt}-token prefill, {args.tokens} decode tokens, medians of {args.rounds}")
    print("| mode | ranks x threads | prefill tok/s | decode tok/s | all-reduce ms/token (in the model) | "
          "gather ms/token | one all-reduce alone, us (gloo's) | peak RSS of rank 0, GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for m, r in med.items():
        ranks, threads = MODES[m]
        print(f"| {m} | {ranks} x {threads} | {r['prefill_tok_s']:.1f} | {r['decode_tok_s']:.2f} | "
              f"{r.get('all_reduce_ms_per_token', 0):.2f} | {r.get('gather_ms_per_token', 0):.2f} | "
              f"{r.get('all_reduce_alone_us', 0):.0f} ({r.get('gloo_all_reduce_alone_us', 0):.0f}) | "
              f"{r['peak_rss_gib']:.2f} |")
    base = med["tp1"]
    print(f"\ntp2 / tp1: prefill {med['tp2']['prefill_tok_s'] / base['prefill_tok_s']:.2f}x, decode "
          f"{med['tp2']['decode_tok_s'] / base['decode_tok_s']:.2f}x; tp2 / tp1-unfused decode "
          f"{med['tp2']['decode_tok_s'] / med['tp1-unfused']['decode_tok_s']:.2f}x; shared-memory / gloo all-reduce: "
          f"decode {med['tp2']['decode_tok_s'] / med['tp2-gloo']['decode_tok_s']:.2f}x, prefill "
          f"{med['tp2']['prefill_tok_s'] / med['tp2-gloo']['prefill_tok_s']:.2f}x")


if __name__ == "__main__":
    main()
