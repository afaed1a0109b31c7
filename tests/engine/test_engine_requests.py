"""The engine's request handling: seeds and n, stop strings and ids, lengths and limits, penalties and biases,
aborts, the queue, draining, and one request's fault staying that request's."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from phikit.engine import (ContextLengthError, Engine, EngineArgumentError, EngineClosedError, QueueFullError,
                           SamplingParams)
from phikit.engine.requests import StopText
from phikit.engine.sampling import RowSampler

from .common import bundled, random_ids, tiny


def _texts(results) -> list[list[str]]:
    return [[c.text for c in r.choices] for r in results]


def test_seeded_choices_are_reproducible_and_seeds_differ() -> None:
    model, tokenizer = bundled()
    engine = Engine(model, tokenizer, parallel=4)
    params = SamplingParams(temperature=1.0, n=3, seed=7, max_tokens=16)
    first = engine.generate(["def main():"], params)
    again = engine.generate(["def main():"], params)
    other = engine.generate(["def main():"], params.with_updates(seed=8))
    assert _texts(first) == _texts(again)
    assert _texts(first) != _texts(other)
    assert len(set(_texts(first)[0])) > 1  # the three choices are distinct draws
    assert [c.index for c in first[0].choices] == [0, 1, 2]


def test_n_choices_share_one_prefill() -> None:
    model = tiny("phi-1.5")
    engine = Engine(model, parallel=3)
    prompt = random_ids(96, 10, 2)
    engine.generate([prompt], SamplingParams(temperature=1.0, n=3, seed=1, max_tokens=4, ignore_eos=True))
    assert engine.stats().prompt_tokens == 10


def test_a_seeded_sample_does_not_depend_on_its_neighbours_where_rows_are_independent() -> None:
    """In a decode batch (2 rows or 4) a row's draws are its own; a row alone takes the faster batch-1 step."""
    model, tokenizer = bundled()
    linear = model.model.layers[0].self_attn.qkv_proj
    x = torch.randn(4, 1, linear.in_features, generator=torch.Generator().manual_seed(0)).to(linear.weight.dtype)
    with torch.no_grad():
        if not torch.equal(linear(x), torch.cat([linear(x[i:i + 1]) for i in range(4)])):
            pytest.skip("this CPU level's bf16 linear rounds a row differently beside other rows (MKL's fp32 GEMM "
                        "on widened weights): seeded samples are reproducible, not neighbour-independent, here")
    engine = Engine(model, tokenizer, parallel=4)
    params = SamplingParams(temperature=1.0, seed=11, max_tokens=20, ignore_eos=True)
    pair = engine.generate(["x = [", "def area(r):"], [params.with_updates(seed=1), params])
    crowd = engine.generate(["x", "def area(r):", "import re", "class"],
                            [params.with_updates(seed=s) for s in (1, 11, 2, 3)])
    assert crowd[1].choices[0].token_ids == pair[1].choices[0].token_ids


def test_stop_strings_end_the_choice_and_are_not_in_the_text() -> None:
    model, tokenizer = bundled()
    engine = Engine(model, tokenizer, parallel=1)
    free = engine.generate(["class Stack:\n"], SamplingParams(temperature=0, max_tokens=40))[0].choices[0]
    assert "self" in free.text
    stop = free.text[free.text.index("self"):][:6]  # a stop that spans tokens in the free run
    cut = engine.generate(["class Stack:\n"], SamplingParams(temperature=0, max_tokens=40, stop=[stop]))[0].choices[0]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert cut.text == free.text[:free.text.index(stop)]


def test_stop_text_holds_back_what_could_start_a_stop_string() -> None:
    class Chars:  # a tokenizer whose ids are characters: shows the hold-back logic alone
        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(i) for i in ids)

    text = StopText(Chars(), ["END", "\n\n"], True)
    shown = [text.push(ord(c)) for c in "ab E"]
    assert [s for s, _ in shown] == ["a", "b", " ", ""]  # "E" could start "END"
    assert text.push(ord("x")) == ("Ex", None)
    assert text.push(ord("\n")) == ("", None)
    assert text.push(ord("\n")) == ("", "\n\n")
    tail = StopText(Chars(), ["END"], True)
    tail.push(ord("E"))
    assert tail.finish() == "E"  # a held-back start that never became a stop is shown at the end


def test_stop_ids_eos_and_ignore_eos() -> None:
    model = tiny("phi-3-mini-4k")  # eos_token_id 1
    prompt = random_ids(96, 5, 3)
    engine = Engine(model, parallel=1)
    free = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[0].choices[0]
    target = free.token_ids[3]
    hit = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True,
                                                   stop_token_ids=[target]))[0].choices[0]
    cut = free.token_ids.index(target)
    assert hit.token_ids == free.token_ids[:cut + 1] and hit.finish_reason == "stop" and hit.stop_reason == target
    forced = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=3, logit_bias={1: 100.0}))[0]
    assert forced.choices[0].token_ids == [1] and forced.choices[0].finish_reason == "stop"
    assert forced.choices[0].stop_reason is None  # the model's own eos: no stop_reason, as vLLM reports it
    ignored = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=3, logit_bias={1: 100.0},
                                                       ignore_eos=True))[0].choices[0]
    assert ignored.token_ids == [1, 1, 1] and ignored.finish_reason == "length"


def test_max_tokens_and_the_context_bound_the_length() -> None:
    model = tiny("phi-1.5", max_position_embeddings=32)
    prompt = random_ids(96, 20, 5)
    engine = Engine(model, parallel=1, ctx_size=32)
    five = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))[0].choices[0]
    assert len(five.token_ids) == 5 and five.finish_reason == "length"
    rest = engine.generate([prompt], SamplingParams(temperature=0, ignore_eos=True))[0].choices[0]
    assert len(rest.token_ids) == 12 and rest.finish_reason == "length"  # the rest of the 32-position context
    with pytest.raises(ContextLengthError) as e:
        engine.submit(prompt, SamplingParams(max_tokens=13), lambda out: None)
    assert e.value.code == "context_length_exceeded" and "32" in str(e.value) and "33" in str(e.value)
    with pytest.raises(ContextLengthError, match="32"):
        engine.submit(random_ids(96, 32, 1), SamplingParams(), lambda out: None)


@pytest.mark.parametrize("field, value, named", [
    ("temperature", 5.0, "5.0"), ("top_p", 0.0, "0.0"), ("n", 9, "--parallel"), ("top_logprobs", 21, "21"),
    ("logit_bias", {96: 1.0}, "96"), ("stop_token_ids", [-1], "-1"), ("max_tokens", 0, "0"),
    ("presence_penalty", float("nan"), "nan"), ("stop", ["a"] * 17, "16")])
def test_bad_parameters_name_their_field_value_and_limit(field: str, value, named: str) -> None:
    engine = Engine(tiny("phi-1.5"), parallel=4)
    key = "logprobs" if field == "top_logprobs" else field
    with pytest.raises(EngineArgumentError) as e:
        engine.submit([3, 4], SamplingParams(**{key: value}), lambda out: None)
    assert e.value.param == field and field in str(e.value) and named in str(e.value)


def test_penalties_and_bias_act_as_defined() -> None:
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0])
    params = SamplingParams(temperature=0, frequency_penalty=0.6, presence_penalty=0.5, logit_bias={3: 2.2},
                            logprobs=1)
    sampler = RowSampler(params, 0, 4, None, [])
    sampler.counts[0] = 2  # token 0 generated twice: 2 - 2 * 0.6 - 0.5 = 0.3
    sampler.counts[1] = 1  # token 1 once: 1 - 0.6 - 0.5 = -0.1
    token, lp = sampler.next_token(logits, [9, 0, 1, 0], 3)
    assert token == 3  # 0 + 2.2 beats 0.3, -0.1 and 0.5
    assert lp.logprob == pytest.approx(float(torch.log_softmax(logits, -1)[3]))  # logprobs: the model's, raw
    assert lp.top[0][0] == 0


def test_a_draw_follows_the_distribution_and_never_takes_a_token_without_mass() -> None:
    """`draw` (the exponential race on vectorized uniforms) samples the categorical distribution: 20,000 draws
    land within 4 standard deviations of each token's expected count, tokens of probability 0 (first, inner,
    last) are never drawn, and the same generator seed gives the same draws."""
    from phikit.engine.sampling import draw

    probs = torch.tensor([0.0, 0.1, 0.0, 0.25, 0.6, 0.05, 0.0])
    gen = torch.Generator().manual_seed(3)
    n = 20_000
    counts = torch.bincount(torch.tensor([draw(probs, gen) for _ in range(n)]), minlength=7).double()
    expected = probs.double() * n
    sd = (expected * (1 - probs.double())).sqrt()
    assert torch.all((counts - expected).abs() <= 4 * sd + 1e-9)
    assert counts[0] == counts[2] == counts[6] == 0
    again = [draw(probs, torch.Generator().manual_seed(5)) for _ in range(3)]
    assert again == [draw(probs, torch.Generator().manual_seed(5)) for _ in range(3)]
    unnormalised = torch.tensor([0.0, 3.0, 1.0])  # any positive total
    gen = torch.Generator().manual_seed(4)
    picks = [draw(unnormalised, gen) for _ in range(4000)]
    assert 0 not in picks and abs(picks.count(1) / 4000 - 0.75) < 0.04
    for bad in (torch.tensor([0.5, float("nan")]), torch.zeros(3), torch.tensor([0.7, -0.1])):
        with pytest.raises(RuntimeError, match="cannot sample from these probabilities"):
            draw(bad, gen)  # refused, as torch.multinomial refuses them, never a silent pick


def test_a_frequency_penalty_repeats_less() -> None:
    model, tokenizer = bundled()
    engine = Engine(model, tokenizer, parallel=2)
    prompt = ["import os\nimport os\nimport os\n"]
    plain, penalised = (engine.generate(prompt, SamplingParams(temperature=0, max_tokens=40, frequency_penalty=f))[0]
                        .choices[0].token_ids for f in (0.0, 2.0))
    assert len(set(penalised)) > len(set(plain))


def test_an_abort_frees_the_slot_and_is_counted() -> None:
    model = tiny("phi-1.5")
    engine = Engine(model, parallel=1)
    engine.start()
    try:
        outs, first = [], threading.Event()

        def seen(out):
            outs.append(out)
            first.set()

        rid = engine.submit(random_ids(96, 4, 1), SamplingParams(ignore_eos=True, max_tokens=400), seen)
        assert first.wait(10)
        engine.abort(rid)
        deadline = time.monotonic() + 5
        while engine.stats().running and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = engine.stats()
        assert stats.running == 0 and stats.aborted == 1
        assert outs[-1].finish_reason == "abort" and len(outs) < 400
        after = engine.generate([[5, 6]], SamplingParams(temperature=0, max_tokens=2))  # the slot is free again
        assert after[0].choices[0].finish_reason == "length"
    finally:
        engine.shutdown()


def test_a_full_queue_refuses_and_a_draining_engine_admits_nothing() -> None:
    model = tiny("phi-1.5")
    engine = Engine(model, parallel=1, max_queue=1)
    engine.start()
    try:
        long = SamplingParams(ignore_eos=True, max_tokens=60)
        ends = []
        engine.submit([3, 4], long, lambda o: ends.append(o) if o.finished else None)
        time.sleep(0.2)  # the first is running; the next one waits, the third finds the queue full
        engine.submit([3, 5], long, lambda o: ends.append(o) if o.finished else None)
        with pytest.raises(QueueFullError, match="max-queue 1"):
            engine.submit([3, 6], long, lambda o: None)
        assert engine.drain(timeout=60)
        assert [o.finish_reason for o in ends] == ["length", "length"]
        with pytest.raises(EngineClosedError):
            engine.submit([3, 7], long, lambda o: None)
    finally:
        engine.shutdown()


def test_a_failing_processor_fails_its_request_only() -> None:
    model = tiny("phi-3-mini-4k")
    engine = Engine(model, parallel=2)

    def broken(ids, scores):
        raise RuntimeError("processor bug")

    good = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    results = engine.generate([[3, 4, 5], [6, 7]], [good.with_updates(processors=[broken]), good])
    assert results[0].choices[0].finish_reason == "error"
    assert results[1].choices[0].finish_reason == "length" and len(results[1].choices[0].token_ids) == 4
    assert engine.stats().errors == 1


def test_text_prompts_and_processors_in_generate() -> None:
    model, tokenizer = bundled()
    engine = Engine(model, tokenizer, parallel=2)
    banned = tokenizer("def")["input_ids"][0]

    def ban(ids, scores):
        scores[:, banned] = -float("inf")
        return scores

    result = engine.generate("class A:\n    ", SamplingParams(temperature=0, max_tokens=12, processors=[ban]))[0]
    assert banned not in result.choices[0].token_ids
    assert result.prompt_token_ids == tokenizer("class A:\n    ")["input_ids"]
