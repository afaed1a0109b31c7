"""Model-level drop-in methods against transformers on the same weights: resize_token_embeddings (tied and untied
heads, mean and plain initialisation, padding to a multiple) and compute_transition_scores (greedy, sampling, beam)."""

from __future__ import annotations

import pytest
import torch

from phikit.generation_config import GenerationArgumentError

from .oracle import pair


def _resize_both(name: str, n, pad, mean, seed=0, **overrides):
    ours, ref = pair(name, **overrides)
    torch.manual_seed(seed)
    a = ours.resize_token_embeddings(n, pad_to_multiple_of=pad, mean_resizing=mean)
    torch.manual_seed(seed)
    b = ref.resize_token_embeddings(n, pad_to_multiple_of=pad, mean_resizing=mean)
    return ours, ref, a, b


@pytest.mark.parametrize("name", ["phi-2", "phi-3-mini-4k", "phi-4-mini", "phi-3.5-moe"])
@pytest.mark.parametrize("n, pad, mean", [(120, None, True), (120, None, False), (100, 64, True), (80, None, True),
                                          (None, 50, True)])
def test_resize_token_embeddings_equals_transformers(name: str, n, pad, mean) -> None:
    ours, ref, a, b = _resize_both(name, n, pad, mean)
    assert a is ours.get_input_embeddings()
    assert a.weight.shape == b.weight.shape and ours.config.vocab_size == ref.config.vocab_size == a.weight.shape[0]
    assert ours.vocab_size == ref.vocab_size
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)
    torch.testing.assert_close(ours.lm_head.weight, ref.lm_head.weight, rtol=0, atol=0)
    if ours.lm_head.bias is not None:
        torch.testing.assert_close(ours.lm_head.bias, ref.lm_head.bias, rtol=0, atol=1e-6)
    assert (ours.lm_head.weight is a.weight) == bool(ours.config.tie_word_embeddings)
    ids = torch.randint(3, min(80, a.weight.shape[0]), (2, 9), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours(ids).logits, ref(ids).logits, rtol=1e-4, atol=1e-4)
    assert ours.generate(ids, max_new_tokens=4).shape == (2, 13)


def test_resize_keeps_old_rows_and_new_rows_sit_near_the_mean() -> None:
    ours, _ = pair("phi-3-mini-4k")
    old = ours.get_input_embeddings().weight.detach().clone()
    ours.resize_token_embeddings(200)
    new = ours.get_input_embeddings().weight.detach()
    assert torch.equal(new[:96], old)
    torch.testing.assert_close(new[96:].mean(0), old.mean(0), atol=1e-3, rtol=0)
    assert ours.lm_head.weight.shape == (200, 64)


@pytest.mark.parametrize("mode", [dict(do_sample=False), dict(do_sample=True, top_k=20, temperature=0.8),
                                  dict(num_beams=3, num_return_sequences=2)])
@pytest.mark.parametrize("normalize", [False, True])
def test_compute_transition_scores_equals_transformers(mode: dict, normalize: bool) -> None:
    ours, ref = pair("phi-3-mini-4k")
    ids = torch.randint(3, 96, (2, 6), generator=torch.Generator().manual_seed(3))
    kw = dict(max_new_tokens=8, output_scores=True, return_dict_in_generate=True, **mode)
    torch.manual_seed(5)
    out = ours.generate(ids, **kw)
    torch.manual_seed(5)
    want = ref.generate(ids, **kw)
    assert torch.equal(out.sequences, want.sequences)
    beams = getattr(out, "beam_indices", None)
    got = ours.compute_transition_scores(out.sequences, out.scores, beams, normalize_logits=normalize)
    theirs = ref.compute_transition_scores(want.sequences, want.scores,
                                           getattr(want, "beam_indices", None), normalize_logits=normalize)
    torch.testing.assert_close(got, theirs, rtol=1e-5, atol=1e-5)
    assert got.shape[0] == out.sequences.shape[0]


def test_bad_resize_and_transition_arguments_change_nothing() -> None:
    ours, _ = pair("phi-2")
    before = ours.get_input_embeddings().weight.detach().clone()
    for args in (dict(new_num_tokens=0), dict(new_num_tokens=2.5), dict(pad_to_multiple_of=-8),
                 dict(new_num_tokens=100, mean_resizing="yes")):
        with pytest.raises(GenerationArgumentError, match=list(args)[-1]):
            ours.resize_token_embeddings(**args)
    assert torch.equal(ours.get_input_embeddings().weight, before) and ours.config.vocab_size == 96
