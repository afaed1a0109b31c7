"""`pipeline("text-generation")` idioms: strings, lists of strings, chat messages, `return_full_text`,
`max_new_tokens`, loaded model objects, and the decoding a pipeline does when told nothing."""

from __future__ import annotations

import pytest
import torch

from tests.dropin.common import Idiom, check, load, params, tokenizer

TEXT = "Plants create energy through a process known as photosynthesis."
CHAT = [{"role": "system", "content": "You are a plant biologist."},
        {"role": "user", "content": "What are the key components needed for photosynthesis?"}]


def _pipe(lib, folder, **kwargs):
    return lib.pipeline("text-generation", model=str(folder), **kwargs)


def text_greedy(lib, _, folder):
    return _pipe(lib, folder)(TEXT, max_new_tokens=8, do_sample=False)


def text_new_only(lib, _, folder):
    return _pipe(lib, folder)(TEXT, max_new_tokens=8, do_sample=False, return_full_text=False)


def text_batch(lib, _, folder):
    return _pipe(lib, folder)([TEXT, "Hello"], max_new_tokens=5, do_sample=False)


def _seeded(pipe, inputs, seeds=(0, 0, 1), **kwargs):
    outs = []
    for seed in seeds:
        torch.manual_seed(seed)
        outs.append(str(pipe(inputs, **kwargs)[0]["generated_text"]))
    return outs


def text_default_decoding(lib, _, folder):
    """No decoding arguments (as in the seeds): transformers 5's pipeline samples (do_sample=True,
    temperature=0.7) unless the checkpoint's generation_config says otherwise; greedy would not depend on the seed."""
    a, b, c = _seeded(_pipe(lib, folder), TEXT, max_new_tokens=16)
    return a == b, a == c


def chat_greedy(lib, _, folder):
    return _pipe(lib, folder)(CHAT, max_new_tokens=8, do_sample=False)


def chat_new_only(lib, _, folder):
    return _pipe(lib, folder)(CHAT, max_new_tokens=8, do_sample=False, return_full_text=False)


def chat_default_decoding(lib, _, folder):
    a, b, c = _seeded(_pipe(lib, folder), CHAT, max_new_tokens=16)
    return a == b, a == c


def loaded_objects(lib, tok_lib, folder):
    pipe = lib.pipeline("text-generation", model=load(lib, folder), tokenizer=tokenizer(tok_lib, folder))
    return pipe(TEXT, max_new_tokens=6, do_sample=False)


def num_return_sequences(lib, _, folder):
    return _pipe(lib, folder)(TEXT, max_new_tokens=5, do_sample=False, num_beams=2, num_return_sequences=2)


IDIOMS: list[Idiom] = [
    Idiom("text_greedy/phi", text_greedy, model="phi"),
    *[Idiom(f"text_greedy/{f}", text_greedy, model=f) for f in ("phi3", "phimoe")],
    Idiom("text_new_only", text_new_only),
    Idiom("text_batch", text_batch),
    Idiom("text_default_decoding", text_default_decoding),
    *[Idiom(f"chat_greedy/{f}", chat_greedy, model=f) for f in ("phi3", "phimoe")],
    Idiom("chat_new_only", chat_new_only),
    Idiom("chat_default_decoding", chat_default_decoding, model="phimoe"),
    Idiom("loaded_objects", loaded_objects),
    Idiom("num_return_sequences", num_return_sequences),
]


@pytest.mark.parametrize("idiom", params(IDIOMS))
def test_pipeline_idiom(idiom, folders):
    check(idiom, folders)
