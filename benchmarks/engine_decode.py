"""The serving engine's decode throughput with several sampled rows, on a random model of a real shape: aggregate
generated tokens/s for R concurrent requests, and (with --base) against the engine of an older commit.

    .venv/bin/python benchmarks/engine_decode.py [--shape phi-1.5] [--rows 1,8] [--tokens 24] [--weights bf16|int4]
                                                 [--base COMMIT]

Each measurement is a fresh process: a random bf16 model of the shape (phikit/bench/engines.py SHAPES; with
`--weights int4` quantized by `Int4WeightOnlyConfig()`, the head at int8 as loaders keep it), an Engine with
R slots, R requests of 16 random prompt ids each, temperature 0.8, `ignore_eos`, `max_tokens` TOKENS, submitted at
once through `Engine.generate`, and again with 2 * TOKENS; decode tok/s = R * TOKENS / (the second wall time - the
first), so the prompts' prefill (one request per forward) cancels out. With --base, base and new trees run in turn
(ABBA, 2 rounds) and the ratio is the median new / base tok/s.
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


def random_model(shape: str):
    """(a bf16 model of the shape (phikit/bench/engines.py SHAPES), weights normal(0, 0.02), in eval mode; its
    config); also prefill_formats.py's model."""
    import torch

    from phikit.bench.engines import SHAPES
    from phikit.config import config_from_dict
    from phikit.hf.modeling import Phi3ForCausalLM, PhiForCausalLM

    config = config_from_dict(dict(SHAPES[shape]))
    cls = PhiForCausalLM if config.model_type == "phi" else Phi3ForCausalLM
    with torch.device("meta"):
        model = cls(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model.eval(), config


def child(shape: str, rows: list[int], tokens: int, threads: int, weights: str = "bf16") -> dict:
    import torch

    from phikit.engine import Engine, SamplingParams

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, config = random_model(shape)
    if weights == "int4":
        from phikit.formats.configs import Int4WeightOnlyConfig
        from phikit.formats.quantize import quantize_model

        quantize_model(model, Int4WeightOnlyConfig())
    out = {}
    for r in rows:
        engine = Engine(model, None, parallel=r, ctx_size=128, prefix_cache=False)  # both runs prefill in full
        prompts = [torch.randint(3, config.vocab_size, (16,), generator=torch.Generator().manual_seed(i)).tolist()
                   for i in range(r)]
        params = [SamplingParams(temperature=0.8, seed=i, ignore_eos=True, max_tokens=tokens) for i in range(r)]
        engine.generate(prompts[:1], params[:1])  # warm-up
        walls = []
        for n in (tokens, 2 * tokens):
            runs = [p.with_updates(max_tokens=n) for p in params]
            t0 = time.perf_counter()
            results = engine.generate(prompts, runs)
            walls.append(time.perf_counter() - t0)
            assert all(len(c.token_ids) == n for res in results for c in res.choices)
        out[r] = r * tokens / (walls[1] - walls[0])
    return out


def run_child(tree: Path, args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run([sys.executable, str(tree / "benchmarks" / "engine_decode.py"), "--child", "--shape",
                           args.shape, "--rows", args.rows, "--tokens", str(args.tokens), "--threads",
                           str(args.threads), "--weights", args.weights], env=env, cwd=tree, capture_output=True,
                          text=True, check=True)
    return {int(k): v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="phi-1.5")
    ap.add_argument("--rows", default="1,8")
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weights", choices=("bf16", "int4"), default="bf16")
    ap.add_argument("--base", default=None)
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    if args.child:
        print(json.dumps(child(args.shape, rows, args.tokens, args.threads, args.weights)))
        return 0
    if args.base is None:
        for r, tps in run_child(REPO, args).items():
            print(f"{r} rows: {tps:.2f} tok/s")
        return 0
    with base_tree(args.base, Path(__file__).resolve()) as base:
        ratios = {r: [] for r in rows}
        seen = {"base": {r: [] for r in rows}, "new": {r: [] for r in rows}}
        for order in abba(2, base):
            got = {name: run_child(tree, args) for name, tree in order}
            for r in rows:
                ratios[r].append(got["new"][r] / got["base"][r])
                for name in got:
                    seen[name][r].append(got[name][r])
        print(f"shape {args.shape}, {args.weights}, {args.tokens} tokens a request, base {args.base}, load average "
              f"{os.getloadavg()[0]:.2f} at the end")
        for r in rows:
            print(f"{r} rows: base {statistics.median(seen['base'][r]):.2f} tok/s, new "
                  f"{statistics.median(seen['new'][r]):.2f} tok/s, new / base {statistics.median(ratios[r]):.2f}x "
                  f"({min(ratios[r]):.2f}-{max(ratios[r]):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
