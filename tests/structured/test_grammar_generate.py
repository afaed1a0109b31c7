"""generate(..., grammar=...) on the bundled model: schemas, regexes and choices always hold, every sampled id was
allowed, the embedding's padding ids are never allowed, and a grammar that never bites changes nothing."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch

from phikit.generation_config import GenerationArgumentError
from phikit.structured import Grammar, GrammarError, GrammarLogitsProcessor

from .common import SCHEMA, bundled


def _new_ids(out, prompt_len: int) -> list[list[int]]:
    return [row[prompt_len:].tolist() for row in out]


def _prompt(tok, text: str = "The answer, as JSON:"):
    return tok(text, return_tensors="pt")


def test_twenty_seeds_at_temperature_one_give_json_that_validates() -> None:
    model, tok = bundled()
    inputs = _prompt(tok)
    grammar = Grammar.json_schema(SCHEMA, strict=True)
    eos = model.generation_config.eos_token_id
    for seed in range(20):
        torch.manual_seed(seed)
        out = model.generate(**inputs, tokenizer=tok, grammar=grammar, do_sample=True, temperature=1.0,
                             max_new_tokens=200)
        [new] = _new_ids(out, inputs["input_ids"].shape[1])
        assert new[-1] == eos, f"seed {seed}: the row must end on the stop id once the grammar is complete"
        value = json.loads(tok.decode(new, skip_special_tokens=True))
        jsonschema.validate(value, {**SCHEMA, "additionalProperties": False})
        assert set(value) == {"mood", "score", "detail"}


class _Recorder:
    """A processor after the grammar's: keeps each step's scores, so the test can check the sampled ids."""

    def __init__(self) -> None:
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids, scores):
        self.steps.append(scores.clone())
        return scores


@pytest.mark.parametrize("kind,build,check", [
    ("regex", lambda: Grammar.regex(r"\d{3}-\d{4}"), lambda s: re.fullmatch(r"\d{3}-\d{4}", s)),
    ("choice", lambda: Grammar.choice(["yes", "no", "maybe later"]), lambda s: s in ("yes", "no", "maybe later")),
    ("lark", lambda: Grammar.lark('start: "(" NUM ("," NUM)* ")"\nNUM: /[0-9]{1,3}/'),
     lambda s: re.fullmatch(r"\(\d{1,3}(,\d{1,3})*\)", s)),
])
def test_regex_choice_and_lark_match_fully_and_every_sampled_id_was_allowed(kind, build, check) -> None:
    model, tok = bundled()
    inputs = tok(["Call me at", "Is it so? Answer:"], return_tensors="pt", padding=True)
    grammar = build()
    for seed in range(4):
        torch.manual_seed(seed)
        recorder = _Recorder()
        out = model.generate(**inputs, tokenizer=tok, grammar=grammar, logits_processor=[recorder], do_sample=True,
                             num_return_sequences=2, max_new_tokens=60)
        rows = _new_ids(out, inputs["input_ids"].shape[1])
        for r, row in enumerate(rows):
            text = tok.decode(row, skip_special_tokens=True)
            assert check(text), f"{kind}, seed {seed}, row {r}: {text!r}"
            for step, token in enumerate(row[:len(recorder.steps)]):
                if step and row[step - 1] in tok.all_special_ids:
                    break  # padding after the row ended
                assert torch.isfinite(recorder.steps[step][r, token]), (kind, seed, r, step, token)


def test_ids_past_the_tokenizer_are_never_allowed() -> None:
    # a vocabulary of 4096 tokens behind logits 4160 wide, as Phi's padded embeddings are
    model, tok = bundled()
    proc = GrammarLogitsProcessor(Grammar.regex(r"(?s:.{0,40})"), tok, vocab_size=4160, stop_ids=[0])
    ids = tok(["x"], return_tensors="pt")["input_ids"]
    scores = proc(ids, torch.zeros(1, 4160))
    assert torch.isinf(scores[0, 4096:]).all() and scores[0, 4096:].max() < 0
    assert torch.isfinite(scores[0, :4096]).sum() > 1000  # the grammar allows nearly everything below


def test_greedy_under_a_grammar_that_allows_the_argmax_equals_unconstrained_greedy() -> None:
    model, tok = bundled()
    inputs = _prompt(tok, "def add(a, b):")
    free = model.generate(**inputs, do_sample=False, max_new_tokens=16)
    free_new = free[0, inputs["input_ids"].shape[1]:].tolist()
    text = tok.decode(free_new)
    assert tok.eos_token_id not in free_new
    permissive = Grammar.regex(r"(?s:.*)")
    same = model.generate(**inputs, tokenizer=tok, grammar=permissive, do_sample=False, max_new_tokens=16)
    assert same.tolist() == free.tolist()
    # a grammar that allows exactly the greedy text (or another string): greedy follows it, then stops
    exact = model.generate(**inputs, tokenizer=tok, grammar=Grammar.choice([text, "zzz"]), do_sample=False,
                           max_new_tokens=20)
    exact_new = exact[0, inputs["input_ids"].shape[1]:].tolist()
    assert exact_new[:len(free_new)] == free_new and exact_new[len(free_new)] == tok.eos_token_id
    # and a grammar the greedy text breaks does change it
    other = model.generate(**inputs, tokenizer=tok, grammar=Grammar.choice(["zzz"]), do_sample=False,
                           max_new_tokens=20)
    assert tok.decode(other[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True) == "zzz"


def test_stop_strings_still_end_a_row_under_a_grammar() -> None:
    model, tok = bundled()
    inputs = _prompt(tok)
    out = model.generate(**inputs, tokenizer=tok, grammar=Grammar.regex(r"abc[0-9]{20}"), stop_strings=["c"],
                         do_sample=False, max_new_tokens=30)
    text = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert text.startswith("ab") and text.endswith("c") and len(text) <= 4


@pytest.mark.parametrize("build", [
    lambda: Grammar.json_schema({"type": 5}),
    lambda: Grammar.json_schema("{not json"),
    lambda: Grammar.regex("(("),
    lambda: Grammar.lark("start: undefined_rule"),
    lambda: Grammar.choice([]),
])
def test_a_grammar_that_does_not_compile_is_a_value_error_with_the_reason(build) -> None:
    with pytest.raises(GrammarError) as info:
        build()
    assert isinstance(info.value, ValueError) and len(str(info.value)) > 20


def test_generate_refuses_what_a_grammar_cannot_work_with() -> None:
    model, tok = bundled()
    inputs = _prompt(tok)
    grammar = Grammar.json_object()
    with pytest.raises(GenerationArgumentError, match="tokenizer="):
        model.generate(**inputs, grammar=grammar, max_new_tokens=4)
    with pytest.raises(GenerationArgumentError, match="num_beams"):
        model.generate(**inputs, tokenizer=tok, grammar=grammar, num_beams=2, max_new_tokens=4)
    with pytest.raises(TypeError, match="Grammar"):
        model.generate(**inputs, tokenizer=tok, grammar='{"type": "object"}', max_new_tokens=4)


def test_strict_adds_additional_properties_false_where_unset() -> None:
    from phikit.structured import strict_schema

    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {}},
                                               "b": {"type": "object", "additionalProperties": True},
                                               "c": {"enum": [{"type": "object"}]}}}
    out = strict_schema(schema)
    assert out["additionalProperties"] is False and out["properties"]["a"]["additionalProperties"] is False
    assert out["properties"]["b"]["additionalProperties"] is True
    assert out["properties"]["c"] == {"enum": [{"type": "object"}]}
    assert "additionalProperties" not in schema  # the input is untouched


def test_a_missing_llguidance_names_the_extra(monkeypatch) -> None:
    import sys

    from phikit.structured import StructuredOutputUnavailable

    monkeypatch.setitem(sys.modules, "llguidance", None)  # import llguidance now raises ImportError
    with pytest.raises(StructuredOutputUnavailable, match=r"phikit\[structured\]"):
        Grammar.json_object()


def test_the_text_generation_pipeline_passes_a_grammar_through() -> None:
    from phikit import pipeline

    model, tok = bundled()
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    [out] = pipe("The colour is", grammar=Grammar.choice([" red", " green"]), max_new_tokens=10, do_sample=True,
                 return_full_text=False)
    assert out["generated_text"] in (" red", " green")
