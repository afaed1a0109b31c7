"""Cost of constrained decoding per token: llguidance's mask computation and phikit's bitmask application, on a real
Phi vocabulary (../shared/fixtures/tokenizers), against llguidance's own `torch.compile`d apply as the peer.

    .venv/bin/python benchmarks/grammar_mask.py [--tokenizer phi-3-mini] [--width 32064] [--rounds 5]

The grammar is the JSON schema below; the text walked through it is a fixed object, tokenized by llguidance (its
canonical tokens), so every step is a real mid-grammar state. Reported: medians over rounds of the per-token mean, and
the worst token, in microseconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from phikit import PhiTokenizer  # noqa: E402
from phikit.structured import Grammar, GrammarMatcher, bitmask, grammar_tokenizer  # noqa: E402

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 40}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}},
    "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                "required": ["city"]}}, "required": ["name", "age", "address"]}
TEXT = '{"name": "Ada Lovelace", "age": 36, "tags": ["a", "c"], "address": {"city": "London", "zip": "W1"}}'


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", default="phi-3-mini")
    ap.add_argument("--width", type=int, default=32064, help="logits width (the config's vocab_size)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    folder = REPO.parent / "shared" / "fixtures" / "tokenizers" / args.tokenizer
    tok = PhiTokenizer.from_pretrained(folder)
    stops = sorted({tok.eos_token_id, *(i for i in [tok.convert_tokens_to_ids("<|end|>")] if i is not None)})
    t0 = time.perf_counter()
    llt = grammar_tokenizer(tok, args.width, stops)
    build_s = time.perf_counter() - t0
    grammar = Grammar.json_schema(SCHEMA)
    tokens = llt.tokenize_str(TEXT)
    try:
        from llguidance.torch import apply_token_bitmask_inplace as peer_apply
    except ImportError:
        peer_apply = None
    fills, applies, peers, worst = [], [], [], []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        matcher = GrammarMatcher(grammar, llt, len(tok), stops)
        compile_s = time.perf_counter() - t0
        mask = bitmask.allocate(1, args.width)
        scores = torch.randn(1, args.width)
        f, a, p = [], [], []
        for token in tokens:
            work = scores.clone()
            t0 = time.perf_counter()
            matcher.fill(mask[0])
            t1 = time.perf_counter()
            bitmask.apply_(work, mask)
            t2 = time.perf_counter()
            if peer_apply is not None:
                s = scores.clone()
                t3 = time.perf_counter()
                peer_apply(s, mask)
                p.append(time.perf_counter() - t3)
            f.append(t1 - t0)
            a.append(t2 - t1)
            assert matcher.consume(token), matcher.error
        fills.append(statistics.mean(f))
        applies.append(statistics.mean(a))
        worst.append(max(f))
        if p:
            peers.append(statistics.mean(p[1:]))  # the first call compiles
    us = 1e6
    print(f"vocabulary {args.tokenizer} ({len(tok)} tokens, logits {args.width}); {len(tokens)} tokens of JSON; "
          f"llguidance tokenizer built in {build_s:.2f} s, grammar + matcher in {compile_s * 1e3:.2f} ms")
    print(f"mask (llguidance fill): {statistics.median(fills) * us:.1f} us/token median, worst token "
          f"{statistics.median(worst) * us:.0f} us")
    print(f"apply (phikit unpack):  {statistics.median(applies) * us:.1f} us/token")
    if peers:
        print(f"apply (llguidance torch.compile): {statistics.median(peers) * us:.1f} us/token; phikit / llguidance "
              f"time {statistics.median(applies) / statistics.median(peers):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
