"""Tokenizer conformance: llama.cpp's 46 hard inputs, the recorded Phi prompts and ids, and API parity with
transformers (only where transformers is right: its 5.x LlamaTokenizer loses Phi-3's `▁` after special tokens)."""

from __future__ import annotations

import copy
import json
from functools import lru_cache

import pytest
import torch
from tokenizers import Tokenizer

from phikit.tokenizer.tokenization import AutoTokenizer, BatchEncoding, PhiTokenizer
from tests.tokenizer_cases import LLAMA_CPP, TOKENIZERS, llama_cpp_cases, phi_cases, require_fixtures

require_fixtures()
transformers = pytest.importorskip("transformers", reason="transformers is the test oracle: pip install -e .[test]")

PHI2_WHITESPACE_IDS = range(50257, 50295)  # phi-2's 38 added whitespace tokens


@lru_cache(maxsize=None)
def phikit_tok(name: str) -> PhiTokenizer:
    return AutoTokenizer.from_pretrained(TOKENIZERS / name)


@lru_cache(maxsize=None)
def hf_tok(name: str):
    return transformers.AutoTokenizer.from_pretrained(str(TOKENIZERS / name))


@lru_cache(maxsize=None)
def phi2_gpt2_base() -> PhiTokenizer:
    """Phi-2's tokenizer.json without its added whitespace tokens: the plain GPT-2 vocabulary it extends."""
    data = json.loads((TOKENIZERS / "phi-2" / "tokenizer.json").read_text(encoding="utf-8"))
    data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] not in PHI2_WHITESPACE_IDS]
    return PhiTokenizer(Tokenizer.from_str(json.dumps(data)), eos_token="<|endoftext|>")


def _failures(tok: PhiTokenizer, vocab: str) -> list[str]:
    bad = []
    for text, expected in llama_cpp_cases(vocab):
        got = tok.encode(text, add_special_tokens=False)
        if got != expected:
            bad.append(f"{text!r}: got {got[:16]}, expected {expected[:16]}")
    return bad


# ----------------------------------------------------------------------------- llama.cpp's 46 inputs

def test_llama_cpp_case_files_have_46_inputs() -> None:
    assert len(llama_cpp_cases("phi-3")) == len(llama_cpp_cases("gpt-2")) == 46


@pytest.mark.parametrize("source", ["phi-3-mini", "llama.cpp/ggml-vocab-phi-3.gguf"])
def test_phi3_llama_cpp_cases(source: str) -> None:
    assert _failures(phikit_tok(source), "phi-3") == []


def test_gpt2_llama_cpp_cases_on_phi2_base() -> None:
    assert _failures(phi2_gpt2_base(), "gpt-2") == []


def test_gpt2_llama_cpp_cases_on_gguf() -> None:
    tok = PhiTokenizer.from_gguf(LLAMA_CPP / "ggml-vocab-gpt-2.gguf")
    assert _failures(tok, "gpt-2") == []
    assert len(tok) == 50257 and tok.eos_token_id == 50256


def test_phi2_whitespace_tokens_follow_its_tokenizer_json() -> None:
    tok, raw = phikit_tok("phi-2"), Tokenizer.from_file(str(TOKENIZERS / "phi-2" / "tokenizer.json"))
    assert tok.encode("  Hello") == [50286, 15496]
    differing = 0
    for text, gpt2_ids in llama_cpp_cases("gpt-2"):
        got = tok.encode(text, add_special_tokens=False)
        assert got == raw.encode(text, add_special_tokens=False).ids, text
        if got != gpt2_ids:
            differing += 1
            # only runs of spaces/tabs differ, and there phi-2 uses its whitespace tokens
            assert any(i in PHI2_WHITESPACE_IDS for i in got), text
            assert "  " in text or "\t\t" in text, text
    assert differing == 7


def test_gguf_phi3_equals_tokenizer_json_on_chat_text() -> None:
    gguf, folder = phikit_tok("llama.cpp/ggml-vocab-phi-3.gguf"), phikit_tok("phi-3-mini")
    text = "<|system|>\nBe brief.<|end|>\n<|user|>\n  Hi there\n<|end|>\n<|assistant|>\nHello!<|end|></s> x"
    assert gguf.encode(text, add_special_tokens=False) == folder.encode(text, add_special_tokens=False)


# ----------------------------------------------------------------------------- phi_cases.json

def _chat_cases(section: str) -> list[dict]:
    return phi_cases()[section]


@pytest.mark.parametrize("case", [c for c in _chat_cases("chat_template_and_ids") if c["tokenizer"].startswith("phi-3")],
                         ids=lambda c: c["name"])
def test_recorded_chat_prompts(case: dict) -> None:
    tok = phikit_tok(case["tokenizer"])
    text = tok.apply_chat_template(case["messages"], add_generation_prompt=case["add_generation_prompt"],
                                   tokenize=False)
    assert text == case["expected_text"]
    # the ids were recorded as tokenizer(text): with the tokenizer's own special tokens (Phi-3-vision adds <s>)
    assert tok(text).input_ids == case["expected_ids"]
    ids = tok.apply_chat_template(case["messages"], add_generation_prompt=case["add_generation_prompt"],
                                  return_dict=False)
    assert ids == tok.encode(text, add_special_tokens=False)  # a rendered template carries its own specials


@pytest.mark.parametrize("case", [c for c in phi_cases()["encode"] if c["tokenizer"] in ("phi-2", "phi-3", "phi-3-vision")],
                         ids=lambda c: c["name"])
def test_recorded_encodes(case: dict) -> None:
    tok = phikit_tok(case["tokenizer"])
    ids = tok.encode(case["text"], add_special_tokens=case["add_bos"])
    if "expected_ids" in case:
        assert ids == case["expected_ids"]
    else:
        assert (len(ids), ids[-1]) == (case["expected_len"], case["expected_last_id"])


@pytest.mark.parametrize("case", [c for c in phi_cases()["mlnet_phi3"]["cases"] if not c.get("mlnet_specific")],
                         ids=lambda c: c["text"][:20])
def test_mlnet_phi3_plain_text_cases(case: dict) -> None:
    # the April-2024 Phi-3 files set add_bos_token=true: <s> first, as ML.NET's Phi-3 tokenizer
    assert phikit_tok("phi-3").encode(case["text"]) == case["expected_ids"]


def test_phi3_mini_transformers_integration_prompt() -> None:
    case = phi_cases()["hf_transformers_integration"][0]
    tok = phikit_tok(case["tokenizer"])
    ids = tok.apply_chat_template(case["messages"], add_generation_prompt=True, return_tensors="pt")["input_ids"]
    assert tok.batch_decode(ids)[0] == case["expected_decoded_prefix"]


# ----------------------------------------------------------------------------- special tokens and stop tokens

def test_phi3_stop_tokens_and_special_ids() -> None:
    tok = phikit_tok("phi-3-mini")
    assert tok.eos_token_id == 32000 and tok.eos_token == "<|endoftext|>"
    assert tok.convert_tokens_to_ids("<|end|>") == 32007
    assert (tok.bos_token_id, tok.unk_token_id, tok.pad_token_id) == (1, 0, 32000)
    assert tok.convert_tokens_to_ids(["<|assistant|>", "no-such-token"]) == [32001, 0]
    generation_eos = phi_cases()["generation_config_notes"]["phi-3-mini-4k/128k-instruct eos_token_id"]
    assert [tok.convert_ids_to_tokens(i) for i in generation_eos] == ["<|endoftext|>", "<|assistant|>", "<|end|>"]


@pytest.mark.parametrize("name", ["phi-2", "phi-3", "phi-3-mini", "phi-3-medium", "phi-3-vision"])
def test_vocabulary_sizes_and_special_tokens_match_transformers(name: str) -> None:
    ours, ref = phikit_tok(name), hf_tok(name)
    assert len(ours) == len(ref)
    assert ours.vocab_size == ref.vocab_size
    assert ours.get_vocab() == ref.get_vocab()
    assert ours.all_special_tokens == ref.all_special_tokens
    assert ours.all_special_ids == ref.all_special_ids
    assert ours.special_tokens_map == ref.special_tokens_map
    assert (ours.padding_side, ours.model_max_length) == (ref.padding_side, ref.model_max_length)
    for attr in ("bos_token_id", "eos_token_id", "unk_token_id", "pad_token_id"):
        assert getattr(ours, attr) == getattr(ref, attr), attr


def test_pad_token_is_settable() -> None:
    tok = AutoTokenizer.from_pretrained(TOKENIZERS / "phi-2")
    assert tok.pad_token is None and tok.pad_token_id is None
    tok.pad_token = tok.eos_token
    assert tok.pad_token_id == 50256
    tok.pad_token_id = 50257
    assert tok.pad_token == tok.convert_ids_to_tokens(50257)
    with pytest.raises(ValueError, match="add_special_tokens"):
        tok.pad_token = "<pad-not-in-vocab>"
    assert tok.add_special_tokens({"pad_token": "<pad>"}) == 1
    assert tok.pad_token_id == 50295 and len(tok) == 50296


# ----------------------------------------------------------------------------- decode and batch parity

DECODE_IDS = {
    "phi-3-mini": [[32010, 15043, 29892, 3186, 29991, 32007, 32001, 18585, 29871, 243, 162, 155, 132],
                   [1, 29871, 13, 13, 259, 1678, 32000, 2, 0, 30672, 31522],
                   [32006, 2184, 2643, 32007]],
    "phi-2": [[15496, 11, 995, 0, 50256, 50286, 15496, 220, 764, 50294, 198], [50256], [36, 995, 837, 318, 340, 30]],
}


@pytest.mark.parametrize("name", sorted(DECODE_IDS))
@pytest.mark.parametrize("skip", [False, True])
def test_decode_matches_transformers(name: str, skip: bool) -> None:
    ours, ref = phikit_tok(name), hf_tok(name)
    rows = DECODE_IDS[name]
    for ids in rows:
        assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)
    assert ours.batch_decode(rows, skip_special_tokens=skip) == ref.batch_decode(rows, skip_special_tokens=skip)
    assert ours.decode(torch.tensor(rows[0]), skip_special_tokens=skip) == ours.decode(rows[0], skip_special_tokens=skip)
    assert ours.convert_ids_to_tokens(rows[0]) == ref.convert_ids_to_tokens(rows[0])


# Plain text only: no text directly after a special token, where transformers' Phi-3 tokenizer is wrong.
BATCH = ["Hello world", "The quick brown fox jumps over the lazy dog, twice!", "a", "code:\n\tindented  (x)"]
PAIRS = ["first", "a much longer second segment of text here", "b", "c d"]


@pytest.mark.parametrize("name", ["phi-2", "phi-3-mini", "phi-3"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_truncation_tensors_match_transformers(name: str, side: str) -> None:
    ours, ref = phikit_tok(name), hf_tok(name)
    if ref.pad_token is None:  # phi-2 has no pad token: both need one set
        with pytest.raises(ValueError, match="pad_token = tokenizer.eos_token"):
            ours(BATCH, padding=True)
        ours, ref = AutoTokenizer.from_pretrained(TOKENIZERS / name), transformers.AutoTokenizer.from_pretrained(
            str(TOKENIZERS / name))
        ours.pad_token, ref.pad_token = ours.eos_token, ref.eos_token
    add = name != "phi-3"  # transformers 5.23 drops phi-3's add_bos_token=true; compare without special tokens there
    for kwargs in (dict(padding=True), dict(padding=True, truncation=True, max_length=5),
                   dict(padding="max_length", max_length=24), dict(padding="longest", pad_to_multiple_of=8),
                   dict(truncation=True, max_length=4)):
        for args in ((BATCH,), (BATCH, PAIRS)):
            tensors = "pt" if kwargs.get("padding") else None
            got = ours(*args, padding_side=side, return_tensors=tensors, add_special_tokens=add, **kwargs)
            want = ref(*args, padding_side=side, return_tensors=tensors, add_special_tokens=add, **kwargs)
            assert isinstance(got, BatchEncoding) and set(got) == set(want), kwargs
            for key in want:
                if tensors:
                    assert torch.equal(got[key], want[key]), (key, kwargs, args)
                else:
                    assert got[key] == want[key], (key, kwargs)


def test_single_text_and_batch_encoding_api() -> None:
    tok = phikit_tok("phi-3-mini")
    enc = tok("Hello world", return_tensors="pt")
    assert enc.input_ids.shape == (1, 2) and enc["attention_mask"].tolist() == [[1, 1]]
    assert enc.to("cpu") is enc and enc.data.keys() == {"input_ids", "attention_mask"}
    assert tok("Hello world").input_ids == [15043, 3186]
    assert tok.tokenize("Hello world") == ["▁Hello", "▁world"]
    assert tok.encode("Hello world", return_tensors="pt").tolist() == [[15043, 3186]]
    with pytest.raises(ValueError, match="padding=True"):
        tok(["a b c", "a"], return_tensors="pt")
    with pytest.raises(AttributeError, match="no field"):
        enc.token_type_ids
    with pytest.raises(TypeError, match="unexpected keyword"):
        tok("x", paddding=True)


# ----------------------------------------------------------------------------- saving

def test_save_over_an_earlier_save_leaves_no_stale_template(tmp_path) -> None:
    """Saving a tokenizer into a folder that holds another one's chat templates: what loads back is what was saved,
    not the earlier templates (they would be read as this tokenizer's)."""
    ours = AutoTokenizer.from_pretrained(TOKENIZERS / "phi-3-mini")  # not the cached one: this test edits it
    ours.chat_template = {"default": "{{ 'a' }}", "tool_use": "{{ 'b' }}"}
    ours.save_pretrained(tmp_path)
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "{{ 'old' }}"}), encoding="utf-8")
    assert (tmp_path / "chat_templates" / "tool_use.jinja").is_file()
    plain = AutoTokenizer.from_pretrained(TOKENIZERS / "phi-2")
    assert plain.chat_template is None
    plain.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).chat_template is None
    assert not (tmp_path / "chat_template.jinja").exists() and not list((tmp_path / "chat_templates").glob("*"))
    ours.chat_template = "{{ 'new' }}"
    ours.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).chat_template == "{{ 'new' }}"


@pytest.mark.parametrize("name", ["phi-3-mini", "phi-3", "phi-2"])
def test_save_pretrained_loads_in_transformers_and_phikit(name: str, tmp_path) -> None:
    ours = phikit_tok(name)
    ours.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    texts = [t for t, _ in llama_cpp_cases("phi-3")] + ["<|user|>\nHi<|end|>\n<|assistant|>\n", "<s> x </s>"]
    for text in texts:
        ids = ours.encode(text)
        assert reloaded.encode(text) == ids, text
        assert ref.encode(text) == ids, text  # saved as PreTrainedTokenizerFast: no Phi-3 '▁' loss on reload
    assert len(ref) == len(ours) and ref.eos_token_id == ours.eos_token_id and ref.pad_token == ours.pad_token
    assert reloaded.chat_template == ours.chat_template
    if ours.chat_template is not None:
        msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
        assert ref.apply_chat_template(msgs, tokenize=False) == ours.apply_chat_template(msgs, tokenize=False)


# ----------------------------------------------------------------------------- errors

def test_folder_without_vocabulary_names_folder_and_files(tmp_path) -> None:
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(OSError) as info:
        AutoTokenizer.from_pretrained(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "tokenizer.json" in message and "tokenizer.model" in message


def test_missing_local_path_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(OSError, match="no such GGUF file"):
        AutoTokenizer.from_pretrained(tmp_path / "x.gguf")
    with pytest.raises(OSError, match="not a local folder"):
        AutoTokenizer.from_pretrained(tmp_path / "nope" / "deeper")


def test_unknown_from_pretrained_argument() -> None:
    with pytest.raises(TypeError, match="paddingside"):
        AutoTokenizer.from_pretrained(TOKENIZERS / "phi-2", paddingside="left")


def test_from_pretrained_overrides() -> None:
    tok = AutoTokenizer.from_pretrained(TOKENIZERS / "phi-3-mini", padding_side="right", model_max_length=8,
                                        trust_remote_code=True)
    assert tok.padding_side == "right" and tok.model_max_length == 8
    assert len(tok("word " * 20, truncation=True).input_ids) == 8


# ----------------------------------------------------------------------------- Phi-4 (tiktoken vocabularies)

@lru_cache(maxsize=None)
def phi4_tok(folder: str, vocab: str) -> PhiTokenizer:
    meta = json.loads((TOKENIZERS / "tiktoken" / f"{vocab}.meta.json").read_text(encoding="utf-8"))
    return PhiTokenizer.from_tiktoken(TOKENIZERS / "tiktoken" / f"{vocab}.tiktoken", meta["pat_str"],
                                      TOKENIZERS / folder)


PHI4_VOCABS = {"phi-4-mini-reasoning": "o200k_base", "phi-4-base": "cl100k_base"}


@pytest.mark.parametrize("case", [c for c in phi_cases()["chat_template_and_ids"] if c["tokenizer"] in PHI4_VOCABS],
                         ids=lambda c: c["name"])
def test_recorded_phi4_chat_prompts(case: dict) -> None:
    # the folders hold tokenizer_config.json only; the vocabulary is rebuilt from the tiktoken ranks
    tok = phi4_tok(case["tokenizer"], PHI4_VOCABS[case["tokenizer"]])
    text = tok.apply_chat_template(case["messages"], add_generation_prompt=True, tokenize=False)
    assert text == case["expected_text"]
    assert tok.apply_chat_template(case["messages"], add_generation_prompt=True, return_dict=False) == \
        case["expected_ids"]


def test_recorded_phi3_small_encode_on_cl100k() -> None:
    [case] = [c for c in phi_cases()["encode"] if c["tokenizer"] == "tokenizer/phi-3-small"]
    tok = phi4_tok("phi-3-small", "cl100k_base")
    assert tok.encode(case["text"], add_special_tokens=case["add_bos"]) == case["expected_ids"]
    assert tok.decode(case["expected_ids"]) == case["text"]


# ----------------------------------------------------------------------------- offsets, special mask, length
# (plain text without a leading space: transformers 5.x's Phi-3 LlamaTokenizer splits that off differently)

OFFSET_TEXTS = [*BATCH, "ünïcödé ✅ and emoji 🙂", "tabs\tand\nnewlines  ", "x" * 40]


def _as_lists(value):
    return value.tolist() if hasattr(value, "tolist") else value


@pytest.mark.parametrize("name", ["phi-2", "phi-3-mini"])
def test_offsets_special_mask_and_length_match_transformers(name: str) -> None:
    ours, ref = phikit_tok(name), hf_tok(name)
    keys = ("input_ids", "attention_mask", "offset_mapping", "special_tokens_mask", "length")
    extra = dict(return_offsets_mapping=True, return_special_tokens_mask=True, return_length=True)
    for text in OFFSET_TEXTS:
        got, want = ours(text, **extra), ref(text, **extra)
        assert {k: got[k] for k in keys} == {k: want[k] for k in keys}, text
        assert got["offset_mapping"] and all(text[a:b] or a == b for a, b in got["offset_mapping"])
    got, want = ours(OFFSET_TEXTS, **extra), ref(OFFSET_TEXTS, **extra)
    assert {k: got[k] for k in keys} == {k: want[k] for k in keys}
    got, want = ours(BATCH, PAIRS, **extra), ref(BATCH, PAIRS, **extra)
    assert {k: got[k] for k in keys} == {k: want[k] for k in keys}


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_and_truncated_offsets_match_transformers(side: str) -> None:
    ours, ref = copy.deepcopy(phikit_tok("phi-2")), hf_tok("phi-2")
    ours.pad_token = ours.eos_token
    ref_pad = ref.pad_token
    ref.pad_token, ref.padding_side = ref.eos_token, side
    try:
        extra = dict(return_offsets_mapping=True, return_special_tokens_mask=True, return_length=True)
        for kwargs in (dict(padding=True), dict(padding="max_length", max_length=24), dict(truncation=True, max_length=3),
                       dict(padding=True, pad_to_multiple_of=8)):
            got = ours(OFFSET_TEXTS, padding_side=side, **extra, **kwargs)
            want = ref(OFFSET_TEXTS, **extra, **kwargs)
            assert dict(got) == {k: want[k] for k in got}, kwargs
        got = ours(BATCH, padding=True, padding_side=side, return_tensors="pt", **extra)
        want = ref(BATCH, padding=True, return_tensors="pt", **extra)
        assert got["offset_mapping"].shape == want["offset_mapping"].shape == (len(BATCH), got["input_ids"].shape[1], 2)
        assert all(torch.equal(got[k], want[k]) for k in got)
    finally:
        ref.pad_token, ref.padding_side = ref_pad, "right"
