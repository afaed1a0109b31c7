"""generate(): token-identical to transformers' generate on the same weights (greedy, beam, guidance), plus the
things the reference does not do: per-row LongRoPE in batches, assisted decoding reports, vocab limits."""

from __future__ import annotations

import pytest
import torch

import phikit

from .oracle import left_padded_batch, pair, transformers

# LongRoPE variants get a pretraining length past prompt + 30 new tokens here, so a left-padded batch stays in one
# regime (transformers picks one regime for the whole batch; the crossing is tested separately below).
FAMILIES = {
    "phi-2": {}, "phi-3-mini-4k": {}, "phi-4-mini": {"original_max_position_embeddings": 64},
    "phi-3.5-moe": {"original_max_position_embeddings": 64},
}


def _prompts(vocab: int = 96):
    ids, mask, _, rows = left_padded_batch(vocab, [9, 5, 7], seed=11)
    return ids, mask, rows


def _pair(name: str, **kw):
    return pair(name, **FAMILIES[name], **kw)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_greedy_batch_matches_transformers(name: str) -> None:
    ours, ref = _pair(name)
    ids, mask, _ = _prompts()
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=30, do_sample=False)
    want = ref.generate(ids, attention_mask=mask, max_new_tokens=30, do_sample=False)
    assert torch.equal(got, want)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_beam_search_batch_matches_transformers(name: str) -> None:
    ours, ref = _pair(name)
    ids, mask, _ = _prompts()
    kw = dict(attention_mask=mask, max_new_tokens=30, num_beams=3, num_return_sequences=2, do_sample=False,
              return_dict_in_generate=True, output_scores=True)
    got, want = ours.generate(ids, **kw), ref.generate(ids, **kw)
    assert torch.equal(got.sequences, want.sequences)
    torch.testing.assert_close(got.sequences_scores, want.sequences_scores)
    assert torch.equal(got.beam_indices, want.beam_indices.to(got.beam_indices.dtype))


def test_beam_search_options_match_transformers() -> None:
    ours, ref = _pair("phi-3-mini-4k")
    ids, mask, _ = _prompts()
    for kw in (dict(length_penalty=0.5, early_stopping=True), dict(length_penalty=2.0, early_stopping="never"),
               dict(no_repeat_ngram_size=2, repetition_penalty=1.3)):
        args = dict(attention_mask=mask, max_new_tokens=20, num_beams=4, **kw)
        assert torch.equal(ours.generate(ids, **args), ref.generate(ids, **args)), kw


def test_processors_inside_generate_match_transformers_scores() -> None:
    ours, ref = _pair("phi-2")
    ids, mask, _ = _prompts()
    kw = dict(attention_mask=mask, max_new_tokens=12, repetition_penalty=1.5, no_repeat_ngram_size=3,
              bad_words_ids=[[5], [7, 8]], min_new_tokens=4, suppress_tokens=[9, 10], return_dict_in_generate=True,
              output_scores=True, output_logits=True)
    got, want = ours.generate(ids, **kw), ref.generate(ids, **kw)
    assert torch.equal(got.sequences, want.sequences)
    for a, b in zip(got.scores, want.scores):
        torch.testing.assert_close(a, b)
    for a, b in zip(got.logits, want.logits):
        torch.testing.assert_close(a, b)


def test_classifier_free_guidance_matches_transformers() -> None:
    ours, ref = _pair("phi-3-mini-4k")
    ids = torch.randint(3, 96, (1, 8), generator=torch.Generator().manual_seed(2))
    negative = torch.randint(3, 96, (1, 5), generator=torch.Generator().manual_seed(3))
    for kw in (dict(guidance_scale=1.5, negative_prompt_ids=negative), dict(guidance_scale=2.0)):
        got = ours.generate(ids, max_new_tokens=15, **kw)
        want = ref.generate(ids, max_new_tokens=15, **kw)
        assert torch.equal(got, want), kw


def test_greedy_crosses_the_longrope_boundary_like_transformers() -> None:
    """Batch of one across original_max_position_embeddings=24: transformers re-runs the prompt there, phikit
    recomputes the cache once; the tokens are the same."""
    ours, ref = pair("phi-3-128k")
    ids = torch.randint(3, 96, (1, 16), generator=torch.Generator().manual_seed(4))
    for cache in ("dynamic", "static"):
        got = ours.generate(ids, max_new_tokens=30, cache_implementation=cache)
        assert torch.equal(got, ref.generate(ids, max_new_tokens=30)), cache


def test_batch_rows_cross_the_boundary_independently() -> None:
    """Left-padded rows cross at different steps; every row equals the reference run on that row alone."""
    ours, ref = pair("phi-4-mini")
    ids, mask, rows = _prompts()
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=30)
    width = ids.shape[1]
    for i, row in enumerate(rows):
        alone = ref.generate(row[None], max_new_tokens=30)[0]
        produced = got[i, width:]
        stop = len(alone) - len(row)
        assert torch.equal(produced[:stop], alone[len(row):]), f"row {i}"


def test_static_cache_equals_dynamic_cache() -> None:
    ours, _ = _pair("phi-4-mini")
    ids, mask, _ = _prompts()
    a = ours.generate(ids, attention_mask=mask, max_new_tokens=20)
    b = ours.generate(ids, attention_mask=mask, max_new_tokens=20, cache_implementation="static")
    c = ours.generate(ids, attention_mask=mask, max_new_tokens=20, use_cache=False)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_seeded_sampling_reproduces() -> None:
    ours, _ = _pair("phi-2")
    ids, mask, _ = _prompts()
    kw = dict(attention_mask=mask, max_new_tokens=20, do_sample=True, temperature=0.9, top_k=20, top_p=0.9,
              min_p=0.01, num_return_sequences=2)
    torch.manual_seed(123)
    a = ours.generate(ids, **kw)
    torch.manual_seed(123)
    b = ours.generate(ids, **kw)
    torch.manual_seed(124)
    c = ours.generate(ids, **kw)
    assert a.shape == (6, ids.shape[1] + 20)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("name", ["phi-3-mini-4k", "phi-3-128k"])
def test_assisted_decoding_returns_the_target_greedy_output(name: str) -> None:
    ours, ref = pair(name)
    draft = type(ours)(phikit.Phi3Config(**{**ours.config.to_dict(), "num_hidden_layers": 1})).eval()
    ids = torch.randint(3, 96, (1, 12), generator=torch.Generator().manual_seed(5))
    out = ours.generate(ids, max_new_tokens=30, assistant_model=draft, return_dict_in_generate=True)
    assert torch.equal(out.sequences, ours.generate(ids, max_new_tokens=30))
    assert torch.equal(out.sequences, ref.generate(ids, max_new_tokens=30))
    assert out.num_assistant_tokens > 0 and 0.0 <= out.acceptance_rate <= 1.0
    itself = ours.generate(ids, max_new_tokens=30, assistant_model=ours, return_dict_in_generate=True)
    assert torch.equal(itself.sequences, out.sequences) and itself.acceptance_rate == 1.0


def test_never_emits_ids_the_tokenizer_lacks() -> None:
    ours, _ = _pair("phi-2")
    with torch.no_grad():
        ours.lm_head.bias[60:] += 100.0  # the padded rows are by far the most likely
    ids = torch.randint(3, 50, (1, 6), generator=torch.Generator().manual_seed(6))
    assert (ours.generate(ids, max_new_tokens=10)[0, 6:] >= 60).all()
    ours.tokenizer_vocab_size = 60
    for kw in ({}, {"do_sample": True}):
        assert (ours.generate(ids, max_new_tokens=10, **kw)[0, 6:] < 60).all()


def test_eos_lists_stop_each_row_and_pad_it() -> None:
    ours, _ = _pair("phi-3-mini-4k")
    ids, mask, _ = _prompts()
    free = ours.generate(ids, attention_mask=mask, max_new_tokens=10)
    stop_id = int(free[0, ids.shape[1] + 2])  # row 0's third new token becomes an eos id
    out = ours.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=[1, stop_id], pad_token_id=0)
    row = out[0, ids.shape[1]:]
    assert int(row[2]) == stop_id and (row[3:] == 0).all()


def test_generate_accepts_tokenizer_dicts_and_1d_ids() -> None:
    ours, _ = _pair("phi-2")
    ids = torch.randint(3, 96, (7,), generator=torch.Generator().manual_seed(7))
    a = ours.generate(ids, max_new_tokens=5)
    b = ours.generate({"input_ids": ids[None], "attention_mask": torch.ones(1, 7, dtype=torch.long)},
                      max_new_tokens=5)
    c = ours.generate(input_ids=ids[None], max_new_tokens=5)
    assert torch.equal(a, b) and torch.equal(a, c) and a.shape == (1, 12)


def test_bad_generate_arguments_name_the_fix() -> None:
    ours, _ = _pair("phi-2")
    ids = torch.randint(3, 96, (1, 5))
    with pytest.raises(TypeError, match="max_tokens"):
        ours.generate(ids, max_tokens=5)
    with pytest.raises(ValueError, match="context of 2048 tokens; lower max_new_tokens to at most 2043"):
        ours.generate(ids, max_new_tokens=5000)
    with pytest.raises(ValueError, match="max_position_embeddings=2048"):
        ours.generate(torch.randint(3, 96, (1, 2049)), max_new_tokens=1)
    with pytest.raises(ValueError, match="num_return_sequences"):
        ours.generate(ids, max_new_tokens=3, num_return_sequences=2)
    with pytest.raises(ValueError, match="assisted decoding"):
        ours.generate(torch.randint(3, 96, (2, 5)), max_new_tokens=3, assistant_model=ours)
