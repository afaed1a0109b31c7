"""One row's grammar state: which ids may come next, and the ids it has taken."""

from __future__ import annotations

from typing import Any

import torch

from . import bitmask
from .backend import llguidance
from .grammar import Grammar, GrammarError


class GrammarMatcher:
    """An `llguidance.LLMatcher` for one row.

    `fill(row)` writes the allowed ids into a bitmask row [W] int32; `consume(token)` takes the sampled id. Once the
    grammar is complete only the stop ids are allowed; a row whose matcher failed (an id it did not allow
    reached it, e.g. a stop string cut the text) allows only the stop ids too, so it ends instead of sampling from
    nothing (`error` says why).
    """

    def __init__(self, grammar: Grammar, grammar_tokenizer: Any, vocab_limit: int, stop_ids: list[int]) -> None:
        llg = llguidance()
        self.matcher = llg.LLMatcher(grammar_tokenizer, grammar.source, log_level=0)
        if self.matcher.is_error():
            raise GrammarError(f"the {grammar.kind} grammar does not compile: {self.matcher.get_error()}",
                               grammar.param)
        n_vocab = grammar_tokenizer.vocab_size
        self.limit = bitmask.limit_row(n_vocab, vocab_limit)  # [W]: ids past the tokenizer never allowed
        self.stops = bitmask.pack(torch.isin(torch.arange(bitmask.words(n_vocab) * 32),
                                             torch.tensor(stop_ids, dtype=torch.long)))
        self.failed = False

    @property
    def error(self) -> str | None:
        return self.matcher.get_error() or None if self.matcher.is_error() else None

    def fill(self, row: torch.Tensor) -> None:
        """row [W] int32, contiguous, on the CPU: the ids allowed next."""
        if self.matcher.is_error():
            row.copy_(self.stops)
            return
        self.matcher.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * row.element_size())
        row &= self.limit

    def consume(self, token: int) -> bool:
        """Take the sampled id; False if the grammar did not allow it (the matcher is then in error)."""
        if self.matcher.is_error():
            return False
        if self.matcher.is_stopped():  # a stop id already ended it: anything after is padding
            return True
        return bool(self.matcher.consume_token(int(token)))
