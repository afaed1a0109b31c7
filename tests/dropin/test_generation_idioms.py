"""generate() idioms: greedy and beam outputs, dict outputs with scores and logits, transition scores, stopping,
caches, and forward-pass idioms (loss, hidden states, past_key_values)."""

from __future__ import annotations

import pytest
import torch

import phikit
from tests.dropin.common import FAMILIES, VOCAB_LIMIT, deliberate, transformers, Idiom, check, load, params, tokenizer

PROMPT = "Hey, are you conscious? Can you talk to me?"
LONG_PROMPT = ("def print_prime(n):\n   \"\"\"\n   Print all primes between 1 and n, one per line, in increasing "
               "order, and return how many there were.\n   \"\"\"")


def _enc(tok_lib, folder, text=PROMPT, **kwargs):
    return tokenizer(tok_lib, folder)(text, return_tensors="pt", **kwargs)


def greedy(lib, tok_lib, folder):
    return load(lib, folder).generate(**_enc(tok_lib, folder), max_new_tokens=12, do_sample=False)


def greedy_max_length(lib, tok_lib, folder):
    return load(lib, folder).generate(_enc(tok_lib, folder).input_ids, max_length=30, do_sample=False)


def greedy_no_cache(lib, tok_lib, folder):
    model = load(lib, folder)
    enc = _enc(tok_lib, folder)
    cached = model.generate(**enc, max_new_tokens=8, do_sample=False, use_cache=True)
    return cached, torch.equal(cached, model.generate(**enc, max_new_tokens=8, do_sample=False, use_cache=False))


def dict_scores(lib, tok_lib, folder):
    out = load(lib, folder).generate(**_enc(tok_lib, folder), max_new_tokens=6, do_sample=False,
                                     return_dict_in_generate=True, output_scores=True)
    return type(out).__name__, out.sequences, len(out.scores), out.scores[0].shape


def dict_scores_values(lib, tok_lib, folder):
    """Every id's score, including the model's ids past the tokenizer's (32011..32063 for Phi-3)."""
    out = load(lib, folder).generate(**_enc(tok_lib, folder), max_new_tokens=6, do_sample=False,
                                     return_dict_in_generate=True, output_scores=True)
    return torch.stack(out.scores)


def test_scores_equal_transformers_below_the_tokenizer_and_ban_the_padding(folders):
    """What phikit does instead of `dict_scores_values` (deliberately): the same scores for every id the tokenizer
    has, -inf for the embedding's padding rows past it, so no id the tokenizer cannot decode is ever emitted."""
    folder = folders["phi3"]
    size = len(tokenizer(phikit, folder))
    ours = torch.stack(load(phikit, folder).generate(**_enc(phikit, folder), max_new_tokens=1, do_sample=False,
                                                     return_dict_in_generate=True, output_scores=True).scores)
    ref = torch.stack(load(transformers, folder).generate(**_enc(transformers, folder), max_new_tokens=1,
                                                          do_sample=False, return_dict_in_generate=True,
                                                          output_scores=True).scores)
    assert ours.shape == ref.shape and ref.shape[-1] > size
    torch.testing.assert_close(ours[..., :size], ref[..., :size])
    assert torch.isneginf(ours[..., size:]).all() and torch.isfinite(ref[..., size:]).all()


def dict_logits(lib, tok_lib, folder):
    out = load(lib, folder).generate(**_enc(tok_lib, folder), max_new_tokens=6, do_sample=False,
                                     return_dict_in_generate=True, output_logits=True)
    return out.sequences, len(out.logits), torch.stack(out.logits)


def scores_processed(lib, tok_lib, folder):
    """Scores are after processing (here a repetition penalty and top-k), logits before."""
    out = load(lib, folder).generate(**_enc(tok_lib, folder), max_new_tokens=5, do_sample=False,
                                     repetition_penalty=1.5, return_dict_in_generate=True, output_scores=True,
                                     output_logits=True)
    usable = len(tokenizer(tok_lib, folder))
    return out.sequences, torch.stack(out.scores)[..., :usable], torch.stack(out.logits)


def transition_scores(lib, tok_lib, folder):
    model = load(lib, folder)
    out = model.generate(**_enc(tok_lib, folder), max_new_tokens=6, do_sample=False, return_dict_in_generate=True,
                         output_scores=True)
    return model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)


def transition_scores_beam(lib, tok_lib, folder):
    model = load(lib, folder)
    out = model.generate(**_enc(tok_lib, folder), max_new_tokens=5, num_beams=3, do_sample=False,
                         return_dict_in_generate=True, output_scores=True)
    return model.compute_transition_scores(out.sequences, out.scores, out.beam_indices, normalize_logits=False)


def batch_shapes(lib, tok_lib, folder):
    tok = tokenizer(tok_lib, folder)
    tok.padding_side = "left"
    enc = tok([PROMPT, "Hello"], return_tensors="pt", padding=True)
    out = load(lib, folder).generate(**enc, max_new_tokens=7, do_sample=False)
    return enc.input_ids.shape, out.shape, out


def beam_search(lib, tok_lib, folder):
    return load(lib, folder).generate(**_enc(tok_lib, folder), max_new_tokens=8, num_beams=3, num_return_sequences=2,
                                      do_sample=False)


def beam_search_dict(lib, tok_lib, folder):
    out = load(lib, folder).generate(**_enc(tok_lib, folder), max_new_tokens=6, num_beams=2, do_sample=False,
                                     return_dict_in_generate=True, output_scores=True)
    return type(out).__name__, out.sequences, out.sequences_scores


def stop_strings(lib, tok_lib, folder):
    """Stop at the text of the 4th generated token (found by a first greedy run)."""
    model, tok = load(lib, folder), tokenizer(tok_lib, folder)
    enc = _enc(tok_lib, folder)
    full = model.generate(**enc, max_new_tokens=12, do_sample=False)
    n = enc.input_ids.shape[1]
    stop = tok.decode(full[0, n:n + 4])[-3:]
    out = model.generate(**enc, max_new_tokens=12, do_sample=False, stop_strings=[stop], tokenizer=tok)
    return stop, out.shape[1] < full.shape[1], out


def eos_override(lib, tok_lib, folder):
    model = load(lib, folder)
    enc = _enc(tok_lib, folder)
    full = model.generate(**enc, max_new_tokens=10, do_sample=False)
    eos = int(full[0, enc.input_ids.shape[1] + 3])
    return model.generate(**enc, max_new_tokens=10, do_sample=False, eos_token_id=eos)


def min_new_tokens(lib, tok_lib, folder):
    model = load(lib, folder)
    enc = _enc(tok_lib, folder)
    full = model.generate(**enc, max_new_tokens=10, do_sample=False)
    eos = int(full[0, enc.input_ids.shape[1] + 1])
    return model.generate(**enc, max_new_tokens=10, min_new_tokens=6, do_sample=False, eos_token_id=eos)


def max_new_tokens_exact(lib, tok_lib, folder):
    model = load(lib, folder)
    enc = _enc(tok_lib, folder)
    prompt = enc.input_ids.shape[1]
    return [model.generate(**enc, max_new_tokens=k, do_sample=False, eos_token_id=None).shape[1] - prompt
            for k in (1, 3, 9)]


def static_cache_short(lib, tok_lib, folder):
    return load(lib, folder).generate(**_enc(tok_lib, folder, "Hello there"), max_new_tokens=6, do_sample=False,
                                      cache_implementation="static")


def static_cache_long(lib, tok_lib, folder):
    """The seed's call: a prompt longer than 20 tokens, no length given (transformers: 20 new tokens)."""
    enc = _enc(tok_lib, folder, LONG_PROMPT)
    assert enc.input_ids.shape[1] > 20
    return load(lib, folder).generate(**enc, do_sample=False, cache_implementation="static")


def static_cache_long_max_new(lib, tok_lib, folder):
    enc = _enc(tok_lib, folder, LONG_PROMPT)
    return load(lib, folder).generate(**enc, max_new_tokens=6, do_sample=False, cache_implementation="static")


def default_length(lib, tok_lib, folder):
    """No max_length / max_new_tokens anywhere: transformers 5 generates 20 new tokens past the prompt."""
    enc = _enc(tok_lib, folder)
    return load(lib, folder).generate(**enc, do_sample=False).shape[1] - enc.input_ids.shape[1]


def top_k_one_sampling(lib, tok_lib, folder):
    return load(lib, folder).generate(**_enc(tok_lib, folder), max_new_tokens=8, do_sample=True, top_k=1)


def repetition_penalty(lib, tok_lib, folder):
    return load(lib, folder).generate(**_enc(tok_lib, folder), max_new_tokens=10, do_sample=False,
                                      repetition_penalty=1.3)


def no_repeat_ngram(lib, tok_lib, folder):
    return load(lib, folder).generate(**_enc(tok_lib, folder), max_new_tokens=10, do_sample=False,
                                      no_repeat_ngram_size=2)


def bad_words(lib, tok_lib, folder):
    model = load(lib, folder)
    enc = _enc(tok_lib, folder)
    full = model.generate(**enc, max_new_tokens=6, do_sample=False)
    banned = [[int(t)] for t in full[0, enc.input_ids.shape[1]:enc.input_ids.shape[1] + 2]]
    return model.generate(**enc, max_new_tokens=6, do_sample=False, bad_words_ids=banned)


def generation_config_object(lib, tok_lib, folder):
    config = lib.GenerationConfig(max_new_tokens=5, do_sample=False, num_beams=1)
    return load(lib, folder).generate(**_enc(tok_lib, folder), generation_config=config)


def forward_loss(lib, tok_lib, folder):
    enc = _enc(tok_lib, folder)
    out = load(lib, folder)(**enc, labels=enc.input_ids)
    return out.loss, out.logits


def forward_hidden_states(lib, tok_lib, folder):
    out = load(lib, folder)(**_enc(tok_lib, folder), output_hidden_states=True)
    return len(out.hidden_states), out.hidden_states[0], out.hidden_states[-1]


def past_key_values_step(lib, tok_lib, folder):
    model = load(lib, folder)
    ids = _enc(tok_lib, folder).input_ids
    with torch.no_grad():
        first = model(ids[:, :-1], use_cache=True)
        step = model(ids[:, -1:], past_key_values=first.past_key_values, use_cache=True)
        full = model(ids)
    return step.logits[:, -1], torch.allclose(step.logits[:, -1], full.logits[:, -1], atol=1e-4)


def return_dict_false(lib, tok_lib, folder):
    out = load(lib, folder)(**_enc(tok_lib, folder), return_dict=False)
    return type(out).__name__, out[0]


IDIOMS: list[Idiom] = [
    *[Idiom(f"greedy/{f}", greedy, model=f) for f in FAMILIES],
    *[Idiom(f"greedy_max_length/{f}", greedy_max_length, model=f) for f in FAMILIES],
    Idiom("greedy_no_cache", greedy_no_cache),
    Idiom("dict_scores", dict_scores),
    Idiom("dict_scores_values", dict_scores_values, marks=(deliberate(VOCAB_LIMIT),)),
    Idiom("dict_logits", dict_logits),
    Idiom("scores_processed", scores_processed),
    Idiom("transition_scores", transition_scores, marks=(deliberate(
        "compute_transition_scores(normalize_logits=True) normalises over the ids the tokenizer has (the padding rows "
        "score -inf in phikit), transformers over every embedding row"),)),
    Idiom("transition_scores_beam", transition_scores_beam),
    Idiom("batch_shapes", batch_shapes),
    Idiom("beam_search/phi", beam_search, model="phi"),
    *[Idiom(f"beam_search/{f}", beam_search, model=f) for f in ("phi3", "phimoe")],
    Idiom("beam_search_dict", beam_search_dict),
    Idiom("stop_strings", stop_strings),
    Idiom("eos_override", eos_override),
    Idiom("min_new_tokens", min_new_tokens),
    Idiom("max_new_tokens_exact", max_new_tokens_exact),
    Idiom("static_cache_short", static_cache_short),
    *[Idiom(f"static_cache_long/{f}", static_cache_long, model=f,) for f in FAMILIES],
    Idiom("static_cache_long_max_new", static_cache_long_max_new),
    Idiom("default_length", default_length),
    Idiom("top_k_one_sampling", top_k_one_sampling),
    Idiom("repetition_penalty", repetition_penalty),
    Idiom("no_repeat_ngram", no_repeat_ngram),
    Idiom("bad_words", bad_words),
    Idiom("generation_config_object", generation_config_object),
    *[Idiom(f"forward_loss/{f}", forward_loss, model=f) for f in FAMILIES],
    Idiom("forward_hidden_states", forward_hidden_states),
    *[Idiom(f"past_key_values_step/{f}", past_key_values_step, model=f) for f in FAMILIES],
    Idiom("return_dict_false", return_dict_false),
]


@pytest.mark.parametrize("idiom", params(IDIOMS))
def test_generation_idiom(idiom, folders):
    check(idiom, folders)
