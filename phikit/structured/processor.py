"""`GrammarLogitsProcessor`: constrained decoding as a logits processor (transformers' call signature), the way
`generate(..., grammar=...)` uses it and users can pass it in `logits_processor=[...]`."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from . import bitmask
from .grammar import Grammar
from .matcher import GrammarMatcher
from .vocab import grammar_tokenizer


class GrammarLogitsProcessor:
    """Masks every step of every row to the ids `grammar` allows next.

    grammar: a `Grammar`. tokenizer: the model's (phikit) tokenizer. vocab_size: the logits' width (the config's
    vocab_size, which may exceed len(tokenizer)). stop_ids: the model's merged eos ids, the grammar's only end.

    Each call takes the ids that rows gained since the last call (the first call's width is the prompt), feeds
    them to the rows' matchers, and sets every disallowed score to -inf. Rows are independent (batches, sampling and
    num_return_sequences work); a row's matcher is made on the first call. Beam search reorders rows, so it is
    refused by `generate()`.
    """

    def __init__(self, grammar: Grammar, tokenizer: Any, vocab_size: int, stop_ids: Sequence[int]) -> None:
        if not isinstance(grammar, Grammar):
            raise TypeError(f"grammar must be a phikit.structured.Grammar (Grammar.json_schema(...), .regex(...), "
                            f"...), got {type(grammar).__name__}")
        self.grammar = grammar
        self.stop_ids = [int(i) for i in stop_ids]
        self.vocab_size = int(vocab_size)
        self.vocab_limit = min(len(tokenizer), self.vocab_size)
        self._llt = grammar_tokenizer(tokenizer, self.vocab_size, self.stop_ids)
        grammar.check(self._llt)
        self.matchers: list[GrammarMatcher] | None = None
        self.seen = 0  # ids per row already fed to the matchers
        self._mask: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows, length = input_ids.shape
        if self.matchers is None:
            self.matchers = [GrammarMatcher(self.grammar, self._llt, self.vocab_limit, self.stop_ids)
                             for _ in range(rows)]
            self.seen = length
            self._mask = bitmask.allocate(rows, self.vocab_size)
        if rows != len(self.matchers):
            raise ValueError(f"GrammarLogitsProcessor was started on {len(self.matchers)} rows and now sees {rows}; "
                             "use a new processor for each generate() call")
        new = input_ids[:, self.seen:].tolist()
        self.seen = length
        for matcher, tokens, row in zip(self.matchers, new, self._mask):
            for token in tokens:
                matcher.consume(token)
            matcher.fill(row)
        return bitmask.apply_(scores, self._mask[:, :bitmask.words(scores.shape[-1])])
