"""Tokenizer idioms on the real phi-2 and phi-3-mini tokenizer files: encoding options, padding, truncation,
offsets, decoding, special tokens and chat templates."""

from __future__ import annotations

import tempfile

import pytest

from tests.dropin.common import Idiom, check, params, tokenizer

TEXTS = ["Hello world, this is   phikit!", "def f(x):\n    return x  # naïve ünïcode ✓"]
MESSAGES = [{"role": "system", "content": "You are a plant biologist."},
            {"role": "user", "content": "Can you explain how plants create energy?"},
            {"role": "assistant", "content": "Through photosynthesis."},
            {"role": "user", "content": "What are the key components?"}]
TOKENIZER_FOLDERS = ("phi", "phi3")  # phi-2's and phi-3-mini's tokenizer files


def _tok(lib, folder):
    return tokenizer(lib, folder)


def plain_call(_, lib, folder):
    return dict(_tok(lib, folder)(TEXTS[0]))


def return_tensors(_, lib, folder):
    enc = _tok(lib, folder)(TEXTS[1], return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"], enc.input_ids.dtype


def batch_padding(_, lib, folder):
    tok = _tok(lib, folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    return enc.input_ids, enc.attention_mask


def padding_max_length(_, lib, folder):
    tok = _tok(lib, folder)
    tok.pad_token = tok.eos_token
    return dict(tok(TEXTS, padding="max_length", max_length=32))


def padding_side_left(_, lib, folder):
    tok = _tok(lib, folder)
    tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    return tok.padding_side, enc.input_ids, enc.attention_mask


def padding_side_right(_, lib, folder):
    tok = _tok(lib, folder)
    tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return dict(tok(TEXTS, padding="longest"))


def truncation(_, lib, folder):
    return dict(_tok(lib, folder)(TEXTS, truncation=True, max_length=5))


def truncation_padding(_, lib, folder):
    tok = _tok(lib, folder)
    tok.pad_token = tok.eos_token
    enc = tok(TEXTS, truncation=True, padding="max_length", max_length=12, return_tensors="pt")
    return enc.input_ids, enc.attention_mask


def pad_to_multiple(_, lib, folder):
    tok = _tok(lib, folder)
    tok.pad_token = tok.eos_token
    return dict(tok(TEXTS, padding=True, pad_to_multiple_of=8))


def offsets_mapping(_, lib, folder):
    enc = _tok(lib, folder)(TEXTS[1], return_offsets_mapping=True)
    return enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]


def add_special_tokens_false(_, lib, folder):
    tok = _tok(lib, folder)
    return tok(TEXTS[0], add_special_tokens=False).input_ids, tok.encode(TEXTS[0], add_special_tokens=False)


def return_attention_mask_false(_, lib, folder):
    return sorted(_tok(lib, folder)(TEXTS[0], return_tensors="pt", return_attention_mask=False).keys())


def encode_decode(_, lib, folder):
    tok = _tok(lib, folder)
    ids = tok.encode(TEXTS[1])
    return ids, tok.decode(ids), tok.decode(ids, skip_special_tokens=True)


def decode_clean_up(_, lib, folder):
    tok = _tok(lib, folder)
    ids = tok.encode("Hello , world . It 's")
    return (tok.decode(ids, clean_up_tokenization_spaces=False), tok.decode(ids, clean_up_tokenization_spaces=True))


def batch_decode(_, lib, folder):
    tok = _tok(lib, folder)
    ids = [tok.encode(t) + [tok.eos_token_id] for t in TEXTS]
    return tok.batch_decode(ids), tok.batch_decode(ids, skip_special_tokens=True)


def batch_decode_tensor(_, lib, folder):
    tok = _tok(lib, folder)
    tok.pad_token = tok.eos_token
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    return tok.batch_decode(enc.input_ids, skip_special_tokens=True), tok.decode(enc.input_ids[0])


def special_tokens(_, lib, folder):
    tok = _tok(lib, folder)
    return (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token, tok.bos_token_id, tok.eos_token_id,
            tok.pad_token_id, sorted(tok.all_special_tokens))


def set_pad_token(_, lib, folder):
    tok = _tok(lib, folder)
    tok.pad_token = tok.eos_token
    return tok.pad_token, tok.pad_token_id


def sizes(_, lib, folder):
    tok = _tok(lib, folder)
    return len(tok), tok.vocab_size, tok.model_max_length, len(tok.get_vocab())


def tokens_and_ids(_, lib, folder):
    tok = _tok(lib, folder)
    tokens = tok.tokenize(TEXTS[1])
    ids = tok.convert_tokens_to_ids(tokens)
    return tokens, ids, tok.convert_ids_to_tokens(ids)


def add_tokens(_, lib, folder):
    tok = _tok(lib, folder)
    added = tok.add_tokens(["<my_tok>", "phikitword"])
    return added, len(tok), tok("say <my_tok> phikitword").input_ids


def add_special_tokens_dict(_, lib, folder):
    tok = _tok(lib, folder)
    added = tok.add_special_tokens({"pad_token": "<PAD>"})
    return added, tok.pad_token, tok.pad_token_id, len(tok)


def save_round_trip(_, lib, folder):
    tok = _tok(lib, folder)
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        again = tokenizer(lib, tmp)
        return again(TEXTS).input_ids, again.eos_token, again.padding_side, len(again)


def batch_encoding_to(_, lib, folder):
    enc = _tok(lib, folder)(TEXTS[0], return_tensors="pt").to("cpu")
    return enc.input_ids.device.type, sorted(enc.keys()), enc["input_ids"]


def chat_text(_, lib, folder):
    return _tok(lib, folder).apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)


def chat_text_no_prompt(_, lib, folder):
    return _tok(lib, folder).apply_chat_template(MESSAGES, tokenize=False)


def chat_tokenize(_, lib, folder):
    out = _tok(lib, folder).apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True,
                                                  return_dict=False)
    return list(out)


def chat_return_tensors(_, lib, folder):
    out = _tok(lib, folder).apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt")
    return sorted(out.keys()), out["input_ids"]


def chat_return_dict(_, lib, folder):
    out = _tok(lib, folder).apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True,
                                                  return_dict=True)
    return sorted(out.keys()), out["input_ids"], out["attention_mask"]


def chat_batch(_, lib, folder):
    tok = _tok(lib, folder)
    out = tok.apply_chat_template([MESSAGES[:2], MESSAGES], add_generation_prompt=True, padding=True,
                                  return_tensors="pt")
    return out["input_ids"], out["attention_mask"]


def chat_template_attr(_, lib, folder):
    tok = _tok(lib, folder)
    return tok.chat_template == tok.get_chat_template()


def on_both(fn, **kwargs):
    return [Idiom(f"{fn.__name__}/{f}", fn, model=f, **kwargs) for f in TOKENIZER_FOLDERS]


IDIOMS: list[Idiom] = [
    *on_both(plain_call), *on_both(return_tensors), *on_both(batch_padding), *on_both(padding_max_length),
    *on_both(padding_side_left), *on_both(padding_side_right), *on_both(truncation), *on_both(truncation_padding),
    *on_both(pad_to_multiple), *on_both(offsets_mapping),
    *on_both(add_special_tokens_false), *on_both(return_attention_mask_false), *on_both(encode_decode),
    *on_both(decode_clean_up), *on_both(batch_decode), *on_both(batch_decode_tensor), *on_both(special_tokens),
    *on_both(set_pad_token), *on_both(sizes), *on_both(tokens_and_ids), *on_both(add_tokens),
    *on_both(add_special_tokens_dict), *on_both(save_round_trip), *on_both(batch_encoding_to),
    Idiom("chat_text", chat_text), Idiom("chat_text_no_prompt", chat_text_no_prompt),
    Idiom("chat_tokenize", chat_tokenize), Idiom("chat_return_tensors", chat_return_tensors),
    Idiom("chat_return_dict", chat_return_dict), Idiom("chat_batch", chat_batch),
    Idiom("chat_template_attr", chat_template_attr),
]


@pytest.mark.parametrize("idiom", params(IDIOMS))
def test_tokenizer_idiom(idiom, folders):
    check(idiom, folders)


def test_phi2_has_no_chat_template(folders):
    """phi-2's tokenizer_config.json has no chat_template: transformers refuses to render a chat, so does phikit."""
    import phikit
    import transformers

    for lib in (transformers, phikit):
        with pytest.raises(ValueError, match="chat.template|chat_template"):
            tokenizer(lib, folders["phi"]).apply_chat_template(MESSAGES, tokenize=False)
