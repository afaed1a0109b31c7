"""One engine in a fresh process, for `phikit bench`: load the checkpoint, warm up, time one greedy generation.

    python -m phikit.bench.child ENGINE FOLDER PROMPT_LEN NEW_TOKENS THREADS WEIGHTS   # prints one line of JSON

ENGINE is phikit or transformers; WEIGHTS bf16, or (phikit) lossless / int8 / int4, quantized while loading.
"""

from __future__ import annotations

import json
import sys

import torch

from .engines import load_model, peak_rss, streamed_bytes, torch_engine


def main(argv: list[str]) -> int:
    engine, folder, prompt_len, new_tokens, threads, weights = (argv[0], argv[1], int(argv[2]), int(argv[3]),
                                                                int(argv[4]), argv[5])
    torch.set_num_threads(threads)
    model = load_model(engine, folder, weights)
    ids = torch.randint(100, 30000, (1, prompt_len), generator=torch.Generator().manual_seed(0))
    generate = torch_engine(model, ids)

    def run(n: int) -> tuple[float, float]:  # -> (time to first token, decode tok/s of the tokens after it)
        start, tokens = generate(n)
        return tokens[0] - start, (len(tokens) - 1) / (tokens[-1] - tokens[0])
    run(2)  # warm-up: kernels, allocator, page cache
    ttft, decode = run(new_tokens + 1)
    print(json.dumps({"engine": engine, "ttft_s": ttft, "prefill_tok_s": prompt_len / ttft, "decode_tok_s": decode,
                      "peak_rss_gb": peak_rss() / 1e9, "bytes_per_token": streamed_bytes(model)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
