"""phikit now against phikit at an older commit, both loaded in ONE process and taking turns (the way `phikit bench
--paired` pairs engines): the old tree is exported with `git archive` and imported under another name
(`phikit_old`; phikit's modules import each other relatively, so a renamed copy runs as it is).

Per round each side generates NEW_TOKENS + 1 greedy tokens after a PROMPT_LEN-token prompt on the same random-weight
checkpoint; prefill tok/s = PROMPT_LEN / time to the first token, decode tok/s = the rate of the tokens after it.
The figure that counts is the median over rounds of the per-round ratio new / old (old first in even rounds, new
first in odd), printed with its lowest and highest, and whether both sides chose the same tokens.

    python benchmarks/against_commit_paired.py --base 3a83389 --checkpoint ~/.cache/phikit/bench/phi-1.5 \\
        --weights bf16 --rounds 10

`--steps P` measures finer instead, which this host's drift needs for a 3% question: P decode steps of each side
taking turns token by token (each side on its own static cache, refilled every 480 tokens) and P // 8 prefill
forwards of PROMPT_LEN tokens taking turns, each reported as the median of the pairs' ratios and its interquartile
range.

The checkpoint is the folder `phikit bench` writes (`phikit.bench.engines.write_checkpoint`). Both models are in
memory at once: a bf16 Phi-3-mini pair needs ~16 GB. `benchmarks/against_commit.py` measures the same in fresh
processes instead.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def import_old(base: str, into: Path):
    """The package of commit `base`, as the module `phikit_old`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", base, "phikit"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    (into / "phikit").rename(into / "phikit_old")
    sys.path.insert(0, str(into))
    return importlib.import_module("phikit_old")


def quant_config(module, weights: str):
    return {"bf16": None, "lossless": module.LosslessBf16Config(), "int8": module.Int8WeightOnlyConfig(),
            "int4": module.Int4WeightOnlyConfig(group_size=128)}[weights]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="3a83389")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--weights", default="bf16", choices=["bf16", "lossless", "int8", "int4"])
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=0, help="pairs of single decode steps (and P // 8 prefill pairs)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import phikit
    from phikit.bench.engines import Clock  # the same streamer `phikit bench` times with

    with tempfile.TemporaryDirectory() as tmp:
        old = import_old(args.base, Path(tmp))
        models = {name: mod.AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=torch.bfloat16,
                                                                 quantization_config=quant_config(mod, args.weights))
                  .eval() for name, mod in (("old", old), ("new", phikit))}
        ids = torch.randint(100, 30000, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))

        def run(name: str) -> tuple[float, float, list[int]]:
            clock = Clock()  # records the time of the prompt and of each token as generate() streams it
            start = time.perf_counter()
            with torch.no_grad():
                out = models[name].generate(ids, max_new_tokens=args.new_tokens + 1, min_new_tokens=args.new_tokens + 1,
                                            do_sample=False, streamer=clock)
            times = clock.times
            return (args.prompt_len / (times[1] - start), args.new_tokens / (times[-1] - times[1]),
                    out[0, args.prompt_len:].tolist())

        if args.steps:
            return fine(models, {"old": old, "new": phikit}, ids, args)
        for name in models:
            run(name)  # warm-up: kernels built, one-time GEMM choice timed
        prefill, decode, same = [], [], True
        for r in range(args.rounds):
            res = {name: run(name) for name in (("old", "new") if r % 2 == 0 else ("new", "old"))}
            prefill.append(res["new"][0] / res["old"][0])
            decode.append(res["new"][1] / res["old"][1])
            same &= res["new"][2] == res["old"][2]
            print(f"  round {r}: prefill old {res['old'][0]:.1f} new {res['new'][0]:.1f} tok/s, decode old "
                  f"{res['old'][1]:.2f} new {res['new'][1]:.2f} tok/s", file=sys.stderr)

    def span(xs: list[float]) -> str:
        return f"{statistics.median(xs):.3f}x [{min(xs):.3f}, {max(xs):.3f}]"

    print(f"{Path(args.checkpoint).name} {args.weights}: prefill new/old {span(prefill)}, decode new/old "
          f"{span(decode)}, same tokens: {same} ({args.rounds} rounds, base {args.base})")
    return 0


def fine(models: dict, modules: dict, ids: torch.Tensor, args: argparse.Namespace) -> int:
    """`--steps`: decode steps and prefill forwards taking turns one at a time (module docstring)."""
    state: dict = {}

    def refill(name: str) -> None:
        cache = modules[name].StaticCache(max_cache_len=512)
        with torch.no_grad():
            out = models[name](ids[:, :32], past_key_values=cache, use_cache=True, logits_to_keep=1)
        state[name] = [cache, out.logits[:, -1].argmax(-1, keepdim=True)]

    def step(name: str) -> float:
        if state[name][0].get_seq_length() >= 480:
            refill(name)
        cache, token = state[name]
        start = time.perf_counter()
        with torch.no_grad():
            out = models[name](token, past_key_values=cache, use_cache=True, logits_to_keep=1)
        state[name][1] = out.logits[:, -1].argmax(-1, keepdim=True)
        return time.perf_counter() - start

    def prefill(name: str) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            models[name](ids, logits_to_keep=1)
        return time.perf_counter() - start

    def pairs(measure, count: int) -> str:
        ratios = []
        for i in range(count):
            took = {name: measure(name) for name in (("old", "new") if i % 2 == 0 else ("new", "old"))}
            ratios.append(took["old"] / took["new"])  # new speed / old speed
        q = statistics.quantiles(ratios, n=4)
        return f"{statistics.median(ratios):.3f}x (IQR {q[0]:.3f}-{q[2]:.3f}, {count} pairs)"

    for name in models:
        refill(name)
        for _ in range(5):
            step(name)
        prefill(name)
    decode = pairs(step, args.steps)
    pre = pairs(prefill, max(4, args.steps // 8))
    print(f"{Path(args.checkpoint).name} {args.weights}: decode steps new/old {decode}; prefill {args.prompt_len} "
          f"new/old {pre} (base {args.base})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
