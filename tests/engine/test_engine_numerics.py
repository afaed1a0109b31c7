"""The engine's numbers: every family's ragged decode batch, chunked prefill and LongRoPE rows equal an uncached
forward of the same tokens at every step; deterministic greedy requests equal `model.generate(do_sample=False)`
token for token whatever runs beside them."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from phikit.engine import Engine, SamplingParams

from .common import VARIANTS, bundled, random_ids, tiny, uncached_logprobs

STEPS = 14


def _check_steps(model, prompt: list[int], choice, atol: float = 2e-4) -> None:
    """Each generated token's logprob equals the uncached forward's at that step, and it was an argmax there."""
    ids = list(prompt)
    assert len(choice.logprobs) == len(choice.token_ids)
    for token, lp in zip(choice.token_ids, choice.logprobs):
        ref = uncached_logprobs(model, ids)
        assert_close(torch.tensor(lp.logprob), ref[token], atol=atol, rtol=0)
        assert float(ref[token]) >= float(ref.max()) - atol  # greedy: the best token (up to rounding ties)
        ids.append(token)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_ragged_decode_batch_equals_the_uncached_forward_every_step(name: str) -> None:
    """Three rows of different lengths decode together (deterministic off: one ragged forward per step); the
    LongRoPE variants (original 24 positions) cross into the long regime while generating."""
    model = tiny(name)
    engine = Engine(model, parallel=3, deterministic=False)
    prompts = [random_ids(model.config.vocab_size, n, seed) for n, seed in ((5, 1), (9, 2), (13, 3))]
    params = SamplingParams(temperature=0, max_tokens=STEPS, ignore_eos=True, logprobs=0)
    results = engine.generate(prompts, params)
    assert max(engine.stats().decode_rows_histogram) == 3  # the rows did run together
    for prompt, result in zip(prompts, results):
        _check_steps(model, prompt, result.choices[0])


def test_a_decode_batch_past_max_decode_rows_runs_in_groups() -> None:
    """5 rows with max_decode_rows=2: forwards of 2, 2 and 1 rows (the 1 through the batch-1 step), each row equal
    to the uncached forward."""
    model = tiny("phi-4-mini")
    engine = Engine(model, parallel=5, deterministic=False, max_decode_rows=2)
    prompts = [random_ids(96, 4 + 2 * i, 20 + i) for i in range(5)]
    results = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=0))
    assert max(engine.stats().decode_rows_histogram) == 5
    for prompt, result in zip(prompts, results):
        _check_steps(model, prompt, result.choices[0])


@pytest.mark.parametrize("name", ["phi-3-128k", "phi-3.5-moe"])
def test_a_long_prompt_in_chunks_keeps_the_long_regime_of_its_whole_length(name: str) -> None:
    """A 30-token prompt (past the original 24) prefilled in 8-token chunks: the row's regime is fixed from the whole
    prompt at admission, so every chunk uses the long factors, as one uncached forward of the prompt does."""
    model = tiny(name)
    prompt = random_ids(model.config.vocab_size, 30, 7)
    engine = Engine(model, parallel=1, max_num_batched_tokens=8)
    result = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, logprobs=0))[0]
    assert engine.stats().prompt_tokens == 30
    _check_steps(model, prompt, result.choices[0])


def test_deterministic_greedy_equals_generate_beside_other_requests() -> None:
    model, tokenizer = bundled()
    prompts = ["def fibonacci(n):", "class Stack:\n    def push(self", "import os\nimport sys\n", "for i in"]
    solo = []
    for text in prompts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=24, do_sample=False)
        solo.append(out[0, ids.shape[1]:].tolist())
    engine = Engine(model, tokenizer, parallel=4)
    greedy = SamplingParams(temperature=0, max_tokens=24)
    noise = SamplingParams(temperature=1.0, max_tokens=30, seed=5)
    mixed = engine.generate([prompts[0], "x = 1", prompts[1], prompts[2], "while", prompts[3]],
                            [greedy, noise, greedy, greedy, noise, greedy])
    got = [mixed[i].choices[0].token_ids for i in (0, 2, 3, 5)]
    assert got == solo
    assert [mixed[i].choices[0].text for i in (0, 2, 3, 5)] == [
        tokenizer.decode(s, skip_special_tokens=True) for s in solo]


def test_chunked_prefill_of_a_long_prompt_gives_the_same_greedy_tokens() -> None:
    model, tokenizer = bundled()
    text = (BUNDLED_TEXT * 40)
    ids = tokenizer(text)["input_ids"][:480]
    outs = []
    for budget in (512, 64):
        engine = Engine(model, tokenizer, parallel=1, max_num_batched_tokens=budget)
        outs.append(engine.generate([ids], SamplingParams(temperature=0, max_tokens=16))[0].choices[0].token_ids)
    assert outs[0] == outs[1]


BUNDLED_TEXT = "def parse(line):\n    key, _, value = line.partition('=')\n    return key.strip(), value.strip()\n"


def test_logprobs_are_the_log_softmax_of_the_models_logits() -> None:
    model = tiny("phi-3-mini-4k")
    prompt = random_ids(96, 6, 11)
    engine = Engine(model, parallel=1)
    choice = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True,
                                                      logprobs=5))[0].choices[0]
    ids = list(prompt)
    for token, lp in zip(choice.token_ids, choice.logprobs):
        ref = uncached_logprobs(model, ids)
        values, idx = torch.topk(ref, 5)
        assert [t for t, _ in lp.top] == idx.tolist()
        assert_close(torch.tensor([v for _, v in lp.top]), values, atol=1e-5, rtol=0)
        ids.append(token)


def test_prefix_reuse_skips_the_shared_prefill_and_keeps_the_numbers() -> None:
    model = tiny("phi-4-mini")
    shared = random_ids(96, 12, 4)
    first, second = shared + [5, 6, 7], shared + [8, 9]
    engine = Engine(model, parallel=2)
    sampled = SamplingParams(temperature=1.0, seed=3, max_tokens=6, ignore_eos=True, logprobs=0)
    engine.generate([first], sampled)
    before = engine.stats()
    result = engine.generate([second], sampled)[0]
    after = engine.stats()
    assert after.prefix_hits - before.prefix_hits == 1 and after.prefix_hit_tokens - before.prefix_hit_tokens == 12
    assert after.prompt_tokens - before.prompt_tokens == 2  # only the new tail was prefilled
    _check_sampled_steps(model, second, result.choices[0])
    # deterministic (greedy) requests never reuse a prefix: their prefill is the one generate() runs
    engine.generate([shared + [8, 10]], SamplingParams(temperature=0, max_tokens=2))
    assert engine.stats().prefix_hits == after.prefix_hits


def _check_sampled_steps(model, prompt, choice) -> None:
    ids = list(prompt)
    for token, lp in zip(choice.token_ids, choice.logprobs):
        assert_close(torch.tensor(lp.logprob), uncached_logprobs(model, ids)[token], atol=2e-4, rtol=0)
        ids.append(token)
