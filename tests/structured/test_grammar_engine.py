"""The engine under a grammar: every choice of every request constrained on its own (n > 1, rows batched with
unconstrained ones), greedy equal to generate(grammar=...), and refusals that name the field."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from phikit.engine import Engine, EngineArgumentError, SamplingParams
from phikit.structured import Grammar

from .common import SCHEMA, bundled


def test_sampled_choices_batched_beside_free_requests_all_hold_their_grammar() -> None:
    model, tok = bundled()
    # strict: no properties beyond the schema's, so every sampled object ends well inside max_tokens (without it a
    # sampled row may add properties until max_tokens, and whether it does depends on the seed's draws)
    grammar = Grammar.json_schema(SCHEMA, strict=True)
    engine = Engine(model, tok, parallel=6, ctx_size=256)
    prompts = ["Reply in JSON:", "Once upon a time", "JSON please:"]
    params = [SamplingParams(grammar=grammar, n=2, seed=1, max_tokens=200),
              SamplingParams(seed=2, max_tokens=20),
              SamplingParams(grammar=Grammar.regex(r"[0-9]{4}"), n=2, seed=3, max_tokens=20)]
    results = engine.generate(prompts, params)
    for choice in results[0].choices:
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.text), SCHEMA)
    assert results[1].choices[0].finish_reason == "length"
    for choice in results[2].choices:
        assert len(choice.text) == 4 and choice.text.isdigit() and choice.finish_reason == "stop"


def test_greedy_under_a_grammar_equals_generate_with_it() -> None:
    model, tok = bundled()
    grammar = Grammar.json_schema(SCHEMA)
    prompt = "Reply in JSON:"
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, tokenizer=tok, grammar=grammar, do_sample=False, max_new_tokens=120)
    expected = out[0, ids["input_ids"].shape[1]:].tolist()
    engine = Engine(model, tok, parallel=2, ctx_size=256)
    [result] = engine.generate([prompt], SamplingParams(temperature=0.0, grammar=grammar, max_tokens=120))
    assert result.choices[0].token_ids == expected
    assert torch.tensor(expected)[-1] == tok.eos_token_id


def test_refusals_name_the_field() -> None:
    model, tok = bundled()
    engine = Engine(model, tok, parallel=2, ctx_size=128)
    with pytest.raises(EngineArgumentError) as info:
        engine.submit(tok.encode("x"), SamplingParams(grammar=Grammar.json_object(), ignore_eos=True), print)
    assert info.value.param == "ignore_eos"
    with pytest.raises(EngineArgumentError) as info:
        engine.submit(tok.encode("x"), SamplingParams(grammar="start: x"), print)
    assert info.value.param == "grammar" and "Grammar" in str(info.value)
    no_tokenizer = Engine(model, None, parallel=2, ctx_size=128)
    with pytest.raises(EngineArgumentError) as info:
        no_tokenizer.submit(tok.encode("x"), SamplingParams(grammar=Grammar.json_object(param="response_format")),
                            print)
    assert info.value.param == "response_format" and "tokenizer" in str(info.value)
