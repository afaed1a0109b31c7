"""llama.cpp for `phikit bench`, through llama-cpp-python (greedy): the runner the paired child uses, and the child
process that measures one GGUF file alone:

    python -m phikit.bench.llama PATH PROMPT_LEN NEW_TOKENS THREADS   # prints one line of JSON

It imports only the standard library at the top (llama_cpp and gguf where used), because the child runs as a bare
script, without the phikit package and torch (see the end of the file).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from typing import Callable


def llama_engine(path: str, ids: list[int], n_ctx: int, threads: int) -> Callable[[int], tuple[float, list[float]]]:
    """run(n) for the GGUF file at `path`: one greedy generation of n tokens after the prompt `ids` -> (its start,
    the time each of the n tokens arrived)."""
    from llama_cpp import Llama  # optional: only where a llama.cpp column is asked for

    llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx, n_batch=512, verbose=False,
                seed=0)

    def run(n: int) -> tuple[float, list[float]]:
        llm.reset()
        start, times = time.perf_counter(), []
        for _ in llm.generate(ids, temp=0.0, top_k=1):
            times.append(time.perf_counter())
            if len(times) == n:
                break
        return start, times
    return run


def main(argv: list[str]) -> int:
    path, prompt_len, new_tokens, threads = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    random.seed(0)
    ids = [random.randint(100, 30000) for _ in range(prompt_len)]
    generate = llama_engine(path, ids, prompt_len + new_tokens + 8, threads)

    def run(n: int) -> tuple[float, float]:
        start, times = generate(n)
        return times[0] - start, (len(times) - 1) / (times[-1] - times[0])
    run(2)
    ttft, decode = run(new_tokens + 1)
    from gguf import GGUFReader  # optional, as llama_cpp; imported after the timing, as it always was

    streamed = sum(int(t.n_bytes) for t in GGUFReader(path).tensors if t.name != "token_embd.weight")  # as phikit's
    with open("/proc/self/status") as f:  # VmHWM, as engines.peak_rss (which this bare script cannot import)
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    print(json.dumps({"engine": "llama.cpp", "ttft_s": ttft, "prefill_tok_s": prompt_len / ttft, "decode_tok_s": decode,
                      "peak_rss_gb": peak / 1e9, "bytes_per_token": streamed}))
    return 0


if __name__ == "__main__":
    if __package__:
        # Started as `python -m phikit.bench.llama`, which imported the phikit package and with it torch: about
        # 0.22 GB this engine never uses would count in its peak RSS. Run again as a plain script instead: exec gives
        # the process a fresh VmHWM, and the script imports nothing beyond the standard library, llama_cpp and gguf.
        os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]])
    here = os.path.dirname(os.path.realpath(__file__))  # a script's folder leads sys.path: keep its siblings
    sys.path[:] = [p for p in sys.path if os.path.realpath(p) != here]  # from shadowing what llama_cpp imports
    raise SystemExit(main(sys.argv[1:]))
