"""Hostile generate() / forward() / resize / transition-score arguments: each a clear GenerationArgumentError (a
ValueError) naming the argument and the value, raised before anything runs (model and config unchanged)."""

from __future__ import annotations

import math

import pytest
import torch

import phikit
from phikit.generation_config import GenerationArgumentError

from .harness import Case, assert_model_unchanged, expect_clear_error, model_snapshot, params, tiny_config

E = GenerationArgumentError
IDS = torch.tensor([[5, 6, 7, 8]])
MASK = torch.ones(1, 4, dtype=torch.long)


def gen(**kw):
    return lambda m: m.generate(IDS, attention_mask=MASK, **{"max_new_tokens": 3, **kw})


def fwd(**kw):
    return lambda m: m(**{"input_ids": IDS, **kw})


def _option_cases() -> list[Case]:
    rows = [
        ("top_p", 1.5, "(0, 1]"), ("top_p", 0.0, "(0, 1]"), ("top_p", -0.1, "(0, 1]"), ("top_p", math.nan, "nan"),
        ("top_p", "0.9", "'0.9'"), ("temperature", math.nan, "nan"), ("temperature", math.inf, "inf"),
        ("temperature", -1.0, "-1.0"), ("top_k", -1, "-1"), ("top_k", 2.5, "2.5"), ("top_k", True, "True"),
        ("repetition_penalty", 0.0, "(0, inf)"), ("repetition_penalty", -1.2, "-1.2"),
        ("repetition_penalty", math.nan, "nan"), ("num_beams", 0, ">= 1"), ("num_beams", 2.0, "2.0"),
        ("num_return_sequences", 0, ">= 1"), ("min_p", 1.5, "[0, 1]"), ("typical_p", 0.0, "(0, 1]"),
        ("no_repeat_ngram_size", -2, "-2"), ("length_penalty", math.inf, "inf"), ("guidance_scale", math.nan, "nan"),
        ("max_new_tokens", 0, ">= 1"), ("max_new_tokens", -5, "-5"), ("max_new_tokens", "5", "'5'"),
        ("max_new_tokens", 2.0, "2.0"), ("max_length", 0, ">= 1"), ("min_new_tokens", -1, "-1"),
        ("do_sample", "yes", "'yes'"), ("do_sample", 1, "bool"), ("output_scores", "true", "'true'"),
        ("return_dict_in_generate", 1, "bool"), ("use_cache", "no", "'no'"), ("early_stopping", "sometimes", "never"),
        ("cache_implementation", "paged", "'paged'"), ("max_time", -1.0, "-1.0"),
        ("eos_token_id", [1, "x"], "'x'"), ("eos_token_id", -1, "-1"), ("eos_token_id", 2 ** 40, "1099511627776"),
        ("eos_token_id", [[1, 2]], "[1, 2]"), ("pad_token_id", 3.5, "3.5"), ("pad_token_id", True, "True"),
        ("bad_words_ids", [1, 2], "list of non-empty lists"), ("bad_words_ids", [[]], "non-empty"),
        ("bad_words_ids", [[200]], "200"), ("suppress_tokens", 5, "list of token ids"),
        ("stop_strings", "", "stop_strings"), ("stop_strings", ["ok", 3], "stop_strings"),
    ]
    mode = {"temperature": dict(do_sample=True), "top_k": dict(do_sample=True)}
    out = []
    for name, value, shown in rows:
        extra = mode.get(name, {}) if name != "temperature" or value != -1.0 else {}
        out.append(Case(f"{name}={value!r}", gen(**{name: value, **extra}), E, (name, shown)))
    return out


CASES: list[Case] = _option_cases() + [
    Case("num_return_sequences-greedy", gen(num_return_sequences=2), E, ("num_return_sequences=2", "do_sample")),
    Case("num_return_sequences>num_beams", gen(num_beams=2, num_return_sequences=3), E, ("num_beams=2",)),
    Case("min_new>max_new", gen(min_new_tokens=5), E, ("min_new_tokens=5", "max_new_tokens=3")),
    Case("static-without-cache", gen(cache_implementation="static", use_cache=False), E, ("use_cache",)),
    Case("stop_strings-without-tokenizer", gen(stop_strings=["\n"]), E, ("stop_strings", "tokenizer")),
    Case("unknown-kwarg", gen(max_tokens=5), E, ("max_tokens",)),
    Case("float-ids", lambda m: m.generate(IDS.float(), max_new_tokens=2), E, ("torch.float32", "integers")),
    Case("bool-ids", lambda m: m.generate(IDS > 5, max_new_tokens=2), E, ("torch.bool",)),
    Case("id-past-vocab", lambda m: m.generate(torch.tensor([[5, 96]]), max_new_tokens=2), E, ("96", "[0, 95]")),
    Case("negative-id", lambda m: m.generate(torch.tensor([[5, -3]]), max_new_tokens=2), E, ("-3", "[0, 95]")),
    Case("ragged-list", lambda m: m.generate([[1, 2], [3]], max_new_tokens=2), E, ("rectangular",)),
    Case("string-prompt", lambda m: m.generate("hello", max_new_tokens=2), E, ("str", "tokenizer")),
    Case("empty-prompt", lambda m: m.generate(torch.zeros(1, 0, dtype=torch.long), max_new_tokens=2), E,
         ("(1, 0)",)),
    Case("3d-prompt", lambda m: m.generate(IDS[None], max_new_tokens=2), E, ("(1, 1, 4)",)),
    Case("mask-shape", lambda m: m.generate(IDS, attention_mask=torch.ones(1, 3), max_new_tokens=2), E,
         ("(1, 3)", "(1, 4)")),
    Case("mask-batch", lambda m: m.generate(IDS, attention_mask=torch.ones(2, 4), max_new_tokens=2), E,
         ("(2, 4)", "(1, 4)")),
    Case("mask-values", lambda m: m.generate(IDS, attention_mask=MASK * 2, max_new_tokens=2), E, ("1s", "0s")),
    Case("mask-all-zero", lambda m: m.generate(IDS, attention_mask=MASK * 0, max_new_tokens=2), E, ("row 0",)),
    Case("dict-without-ids", lambda m: m.generate({"attention_mask": MASK}, max_new_tokens=2), E, ("input_ids",)),
    Case("ids-twice", lambda m: m.generate(IDS, input_ids=IDS, max_new_tokens=2), E, ("once",)),
    Case("max_length-counts-prompt", lambda m: m.generate(IDS, max_length=4), E, ("max_length=4", "max_new_tokens")),
    Case("past-context", gen(max_new_tokens=500), E, ("max_new_tokens=500", "at most 124")),
    Case("prompt-fills-context", lambda m: m.generate(torch.full((1, 128), 5)), E, ("fills", "128")),
    Case("logits_processor-not-callable", gen(logits_processor=[3]), E, ("logits_processor",)),
    Case("streamer-without-put", gen(streamer=object()), E, ("streamer", "put")),
    Case("generation_config-dict", lambda m: m.generate(IDS, generation_config={"max_new_tokens": 2}), E,
         ("generation_config", "dict")),
    Case("forward-float-ids", fwd(input_ids=IDS.float()), E, ("torch.float32",)),
    Case("forward-id-past-vocab", fwd(input_ids=torch.tensor([[1, 100]])), E, ("100", "vocab_size is 96")),
    Case("forward-negative-id", fwd(input_ids=torch.tensor([[1, -1]])), E, ("-1",)),
    Case("forward-list-ids", fwd(input_ids=[[1, 2]]), E, ("list",)),
    Case("forward-mask-batch", fwd(attention_mask=torch.ones(3, 4)), E, ("(3, 4)", "batch=1")),
    Case("forward-mask-short", fwd(attention_mask=torch.ones(1, 2)), E, ("(1, 2)",)),
    Case("forward-mask-3d", fwd(attention_mask=torch.ones(1, 1, 4)), E, ("2-D",)),
    Case("forward-position-shape", fwd(position_ids=torch.arange(3)[None]), E, ("position_ids", "(1, 3)")),
    Case("forward-position-negative", fwd(position_ids=torch.tensor([[-1, 0, 1, 2]])), E, ("-1",)),
    Case("forward-labels-shape", fwd(labels=torch.ones(1, 3, dtype=torch.long)), E, ("labels", "(1, 3)")),
    Case("forward-labels-range", fwd(labels=torch.tensor([[1, 2, 3, 500]])), E, ("500", "-100")),
    Case("forward-labels-float", fwd(labels=IDS.float()), E, ("labels", "float32")),
    Case("forward-embeds-width", lambda m: m(inputs_embeds=torch.zeros(1, 4, 7)), E, ("hidden_size=32",)),
    Case("forward-both-inputs", lambda m: m(input_ids=IDS, inputs_embeds=torch.zeros(1, 4, 32)), E,
         ("exactly one",)),
    Case("forward-unknown-arg", fwd(input_lengths=3), E, ("input_lengths",)),
    Case("forward-bad-cache", fwd(past_key_values=[(1, 2)]), E, ("past_key_values", "list")),
    Case("resize-zero", lambda m: m.resize_token_embeddings(0), E, ("new_num_tokens=0",)),
    Case("resize-float", lambda m: m.resize_token_embeddings(100.0), E, ("100.0",)),
    Case("resize-pad", lambda m: m.resize_token_embeddings(100, pad_to_multiple_of=0), E, ("pad_to_multiple_of",)),
    Case("resize-mean", lambda m: m.resize_token_embeddings(100, mean_resizing=None), E, ("mean_resizing",)),
    Case("transition-no-scores", lambda m: m.compute_transition_scores(IDS, ()), E, ("scores",)),
    Case("transition-width", lambda m: m.compute_transition_scores(IDS, (torch.zeros(1, 7),)), E,
         ("vocab_size=96",)),
    Case("transition-rows", lambda m: m.compute_transition_scores(IDS, (torch.zeros(2, 96),)), E,
         ("beam_indices",)),
    Case("transition-steps", lambda m: m.compute_transition_scores(IDS, (torch.zeros(1, 96),) * 5), E,
         ("5 steps",)),
]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return phikit.Phi3ForCausalLM(tiny_config("phi3", vocab_size=96, pad_token_id=0, eos_token_id=1)).eval()


@pytest.mark.parametrize("case", params(CASES))
def test_bad_generate_and_forward_arguments(case: Case, model) -> None:
    before = model_snapshot(model)
    generation = model.generation_config.to_dict()
    expect_clear_error(case, model)
    assert_model_unchanged(model, before)
    assert model.generation_config.to_dict() == generation


def test_the_seeds_static_cache_snippet_generates_like_transformers() -> None:
    """`model.generate(**inputs, cache_implementation="static")` with a prompt past 20 tokens: 20 new tokens."""
    from ..oracle import pair

    ours, ref = pair("phi-3-mini-4k")
    ids = torch.randint(3, 96, (1, 30), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with pytest.warns(UserWarning):
        want = ref.generate(**inputs, cache_implementation="static")
    got = ours.generate(**inputs, cache_implementation="static")
    assert got.shape == (1, 50) and torch.equal(got, want)
    ours, ref = pair("phi-2", max_position_embeddings=40)
    near = torch.randint(3, 96, (1, 35), generator=torch.Generator().manual_seed(1))  # capped at the context
    with pytest.warns(UserWarning):
        want = ref.generate(near)
    got = ours.generate(near)
    assert got.shape == (1, 40) and torch.equal(got, want)
