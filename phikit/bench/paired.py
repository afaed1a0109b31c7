"""The paired child of `phikit bench --paired`: phikit and one peer loaded in one process, taking turns.

    python -m phikit.bench.paired SPECS FOLDER PROMPT_LEN NEW_TOKENS THREADS ROUNDS

SPECS is JSON, one [engine, weights] per side: ["phikit", "int8"], ["transformers", "bf16"], or ["llama.cpp",
path of its GGUF file]. Each round times one generation of each side (alternating who goes first, 0.2 s apart) and
prints the sides' decode tok/s to stderr; at the end one line of JSON on stdout, per side its decode and prefill
tok/s of every round.
"""

from __future__ import annotations

import json
import random
import sys
import time

import torch

from .engines import load_model, torch_engine
from .llama import llama_engine


def main(argv: list[str]) -> int:
    specs, folder, prompt_len, new_tokens, threads, rounds = (json.loads(argv[0]), argv[1], int(argv[2]),
                                                              int(argv[3]), int(argv[4]), int(argv[5]))
    torch.set_num_threads(threads)
    random.seed(0)
    ids = [random.randint(100, 30000) for _ in range(prompt_len)]  # one prompt for every engine
    engines = [llama_engine(w, ids, prompt_len + new_tokens + 8, threads) if e == "llama.cpp"
               else torch_engine(load_model(e, folder, w), torch.tensor([ids])) for e, w in specs]
    for run in engines:
        run(2)  # warm-up: kernels, allocator, page cache
    out = [{"decode_tok_s": [], "prefill_tok_s": []} for _ in specs]
    for r in range(rounds):
        for i in (range(len(specs)) if r % 2 == 0 else reversed(range(len(specs)))):  # alternate who goes first
            start, times = engines[i](new_tokens + 1)
            out[i]["prefill_tok_s"].append(prompt_len / (times[0] - start))
            out[i]["decode_tok_s"].append((len(times) - 1) / (times[-1] - times[0]))
            time.sleep(0.2)  # the other engine's threads go idle before this one starts
        print("  round %d: " % (r + 1) + "  ".join("%.2f" % o["decode_tok_s"][-1] for o in out) + " tok/s",
              file=sys.stderr, flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
