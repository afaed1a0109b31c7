"""One row's next token: its processors, penalties and sampler, with its own random generator.

Order (vLLM's): the vocabulary limit, the grammar's mask (structured output), min_tokens, logit_bias, the user's
processors, repetition / presence / frequency penalties, then for sampled rows temperature, top-k, top-p and min-p
(phikit's warpers, the ones `generate()` uses), and a draw from the row's own `torch.Generator` (`draw`: the
exponential race `torch.multinomial` runs, on vectorized uniforms). So a seeded request
draws the same tokens whatever runs beside it. Logprobs are the log-softmax of the model's raw logits, before any of
this (OpenAI reports the model's distribution; documented).
"""

from __future__ import annotations

import math

import torch

from ..structured import bitmask
from ..generation.logits_process import min_p_filter, repetition_penalty, top_k_filter, top_p_filter
from .outputs import TokenLogprob
from .params import SamplingParams

_GOLDEN = 0x9E3779B97F4A7C15


def choice_generator(seed: int | None, index: int) -> torch.Generator:
    """Choice `index` of a request with `seed`: a generator of its own (seeded: reproducible; else from entropy)."""
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed((seed * _GOLDEN + index * 0x632BE59BD9B4E019) % (2**63))
    return gen


def draw(probs: torch.Tensor, generator: torch.Generator) -> int:
    """One token from the categorical distribution probs [V] (non-negative, any positive total): the exponential race
    `torch.multinomial(probs, 1)` runs, argmax of probs / E with E = -log(U) exponential, U uniform in [0, 1) from
    `generator`, one per token. multinomial draws its exponentials one at a time (1.05 ms for 51,200 tokens on the
    Zen 4 host, per sampled row and step); torch.rand's vectorized uniforms and a log take 0.25 ms. A token of
    probability 0 never wins (0 / E = 0), nor one whose U is 0 (E = inf). A race, unlike one uniform against the
    running sums, is robust to the last-bit differences two forwards of the same prompt may give (a prefix-cache
    hit, a packed step): a token changes only where two tokens' ratios were within them, where an inverse CDF moves
    every draw whose running sum shifted past a boundary."""
    e = torch.rand(probs.shape, generator=generator, dtype=torch.float32).log_().neg_()
    pick = int(torch.argmax(probs / e))
    # what torch.multinomial refuses too (a NaN / inf logit upstream, or every token masked out), checked with one
    # reduction: a NaN anywhere makes the minimum NaN, a negative one makes it negative, an inf wins the race, and
    # all zeros leave a winner of probability 0
    chosen, lowest = float(probs[pick]), float(probs.min())
    if not (math.isfinite(chosen) and chosen > 0 and lowest >= 0):
        raise RuntimeError(f"cannot sample from these probabilities (sum {float(probs.sum())}, min {lowest}): they "
                           "must be finite, non-negative and not all zero; a logit is NaN or inf, or every token "
                           "was masked")
    return pick


class RowSampler:
    """The sampling state of one choice: its generator and the counts of the tokens it generated."""

    def __init__(self, params: SamplingParams, index: int, vocab_size: int, vocab_limit: int | None,
                 stop_ids: list[int], matcher=None) -> None:
        self.params = params
        self.matcher = matcher  # a GrammarMatcher (structured output) or None
        self._mask = bitmask.allocate(1, vocab_size) if matcher is not None else None
        self.generator = choice_generator(params.seed, index)
        self.vocab_size, self.vocab_limit = vocab_size, vocab_limit
        self.stop_ids = stop_ids
        self.counts: torch.Tensor | None = None  # [V] generated-token counts, for presence / frequency
        if params.presence_penalty or params.frequency_penalty:
            self.counts = torch.zeros(vocab_size)
        self.bias: torch.Tensor | None = None
        if params.logit_bias:
            self.bias = torch.zeros(vocab_size)
            for token, value in params.logit_bias.items():
                self.bias[token] = float(value)

    def next_token(self, logits: torch.Tensor, ids: list[int], generated: int
                   ) -> tuple[int, TokenLogprob | None]:
        """logits [V] fp32 (the model's raw scores), ids = prompt + generated so far -> (token, logprob or None)."""
        p = self.params
        logprob = None
        if p.logprobs is not None:
            logp = torch.log_softmax(logits, dim=-1)
        scores = logits
        if self.vocab_limit is not None and self.vocab_limit < scores.shape[-1]:
            scores = scores.clone()
            scores[self.vocab_limit:] = -float("inf")
        if self.matcher is not None:
            self.matcher.fill(self._mask[0])
            scores = bitmask.apply_(scores.clone()[None], self._mask)[0]
        if generated < p.min_tokens and self.stop_ids:
            scores = scores.clone()
            scores[self.stop_ids] = -float("inf")
        if self.bias is not None:
            scores = scores + self.bias
        if p.processors:
            history = torch.tensor([ids], dtype=torch.long)
            rows = scores[None]
            for proc in p.processors:
                rows = proc(history, rows)
            scores = rows[0]
        if p.repetition_penalty != 1.0:
            scores = repetition_penalty(torch.tensor([ids], dtype=torch.long), scores[None],
                                        p.repetition_penalty)[0]
        if self.counts is not None:
            scores = scores - self.counts * p.frequency_penalty - (self.counts > 0).float() * p.presence_penalty
        if p.greedy:
            token = int(torch.argmax(scores))
        else:
            scores = scores / p.temperature if p.temperature != 1.0 else scores
            rows = scores[None]
            if p.top_k > 0:
                rows = top_k_filter(rows, p.top_k)
            if p.top_p < 1.0:
                rows = top_p_filter(rows, p.top_p)
            if p.min_p > 0.0:
                rows = min_p_filter(rows, p.min_p)
            probs = torch.softmax(rows[0], dim=-1)
            token = draw(probs, self.generator)
        if self.matcher is not None:
            self.matcher.consume(token)
        if self.counts is not None:
            self.counts[token] += 1
        if p.logprobs is not None:
            top = []
            if p.logprobs:
                values, idx = torch.topk(logp, p.logprobs)
                top = [(int(i), float(v)) for i, v in zip(idx, values)]
            logprob = TokenLogprob(token, float(logp[token]), top)
        return token, logprob
