"""Bad input at the tokenizer boundary: wrong texts and ids in calls, wrong JSON shapes in a tokenizer folder's
files, hostile GGUF vocabularies. Each row must raise a clear, non-generic error naming what is wrong, and a failed
`save_pretrained` must leave the folder as it was."""

from __future__ import annotations

import copy
import json
import shutil
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import torch

from phikit.tokenizer.gguf_vocab import GGUFError
from phikit.tokenizer.settings_check import TokenizerFileError
from phikit.tokenizer.tokenization import AutoTokenizer, PhiTokenizer
from tests.bad_inputs.harness import (TOKENIZERS, Case, expect_clear_error, folder_snapshot, params,
                                      require_tokenizers, run_isolated)

PHI3 = TOKENIZERS / "phi-3-mini"
PHI3_GGUF = TOKENIZERS / "llama.cpp" / "ggml-vocab-phi-3.gguf"
PHI3_LEN = 32011  # len(tokenizer) of phi-3-mini (its embedding has 32064 rows)


@lru_cache(maxsize=None)
def _shared() -> PhiTokenizer:
    return AutoTokenizer.from_pretrained(PHI3)


@dataclass
class Ctx:
    tmp: Path

    @property
    def tok(self) -> PhiTokenizer:  # a fresh copy: a case that wrongly mutated it cannot leak into the next
        return copy.deepcopy(_shared())


@pytest.fixture
def ctx(tmp_path: Path) -> Ctx:
    require_tokenizers()
    return Ctx(tmp_path)


# ----------------------------------------------------------------------------- calls with the wrong input

def call(*args: Any, **kwargs: Any):
    return lambda c: c.tok(*args, **kwargs)


CALL_CASES = [
    Case("text-int", call(12345), ValueError, ("text", "int", "str")),
    Case("text-list-of-ints", call([1, 2]), ValueError, ("text[0]", "int", "decode")),
    Case("text-none", call(None), ValueError, ("text is None",)),
    Case("text-bytes", call(b"bytes"), ValueError, ("bytes", "decode")),
    Case("text-bytearray", call(bytearray(b"x")), ValueError, ("bytes",)),
    Case("text-dict", call({"text": "hi"}), ValueError, ("dict", "str")),
    Case("text-float", call(1.5), ValueError, ("float",)),
    Case("text-pretokenized", call([["a", "b"]]), ValueError, ("text[0]", "Pre-tokenized")),
    Case("text-list-with-none", call(["ok", None]), ValueError, ("text[1]", "NoneType")),
    Case("text-tuple-with-int", call(("ok", 3)), ValueError, ("text[1]", "int")),
    Case("text-lone-surrogate", call("a\ud800b"), ValueError, ("surrogate", "character 1")),
    Case("text-surrogate-in-batch", call(["fine", "x\udfffy"]), ValueError, ("text[1]", "character 1")),
    Case("pair-surrogate", call("fine", "\ud800"), ValueError, ("text_pair", "surrogate")),
    Case("pair-int", call("a", 5), ValueError, ("text_pair", "int")),
    Case("pair-batch-mismatch", call(["a", "b"], ["c"]), ValueError, ("2 entries", "text_pair 1")),
    Case("pair-list-for-one-text", call("a", ["b"]), ValueError, ("text_pair",)),
    Case("max-length-zero", call("hi", max_length=0, truncation=True), ValueError, ("max_length=0", "positive")),
    Case("max-length-negative", call("hi", max_length=-1), ValueError, ("max_length=-1",)),
    Case("max-length-str", call("hi", max_length="5"), ValueError, ("max_length='5'",)),
    Case("max-length-float", call("hi", max_length=5.0), ValueError, ("max_length=5.0",)),
    Case("pad-multiple-zero", call("hi", padding=True, pad_to_multiple_of=0), ValueError, ("pad_to_multiple_of=0",)),
    Case("padding-side", call("hi", padding_side="middle"), ValueError, ("padding_side='middle'", "left")),
    Case("padding-value", call("hi", padding="yes"), ValueError, ("padding='yes'",)),
    Case("truncation-value", call("hi", truncation="sideways"), ValueError, ("truncation='sideways'",)),
    Case("return-tensors", call("hi", return_tensors="tf"), ValueError, ("return_tensors='tf'",)),
    Case("unknown-kwarg", call("hi", return_overflowing_tokens=True), ValueError, ("return_overflowing_tokens",)),
    Case("encode-list", lambda c: c.tok.encode(["a", "b"]), ValueError, ("one str", "tokenizer(texts)")),
    Case("encode-none", lambda c: c.tok.encode(None), ValueError, ("text is None",)),
    Case("tokenize-int", lambda c: c.tok.tokenize(5), ValueError, ("text", "int")),
    Case("tokenize-pair-int", lambda c: c.tok.tokenize("a", 3), ValueError, ("pair", "int")),
    Case("tokenize-surrogate", lambda c: c.tok.tokenize("\ud83d"), ValueError, ("surrogate",)),
    Case("chat-tokenizer-kwargs", lambda c: c.tok.apply_chat_template([{"role": "user", "content": "x"}],
                                                                     tokenizer_kwargs=[1]),
         ValueError, ("tokenizer_kwargs", "list")),
]

DECODE_CASES = [
    Case("decode-past-vocab", lambda c: c.tok.decode([1, 15043, PHI3_LEN]), ValueError,
         (str(PHI3_LEN), f"len(tokenizer) = {PHI3_LEN}", "token_ids[2]")),
    Case("decode-padded-embedding-id", lambda c: c.tok.decode([32063]), ValueError, ("32063", f"0..{PHI3_LEN - 1}")),
    Case("decode-negative", lambda c: c.tok.decode([15043, -1]), ValueError, ("-1", "token_ids[1]")),
    Case("decode-float", lambda c: c.tok.decode([1.5]), ValueError, ("token_ids[0]", "float")),
    Case("decode-str", lambda c: c.tok.decode("hello"), ValueError, ("str",)),
    Case("decode-none-item", lambda c: c.tok.decode([1, None]), ValueError, ("token_ids[1]", "NoneType")),
    Case("decode-tensor-past-vocab", lambda c: c.tok.decode(torch.tensor([40000])), ValueError, ("40000",)),
    Case("decode-2d-row", lambda c: c.tok.decode([[1], [2, 99999]]), ValueError, ("99999", "sequences[1]")),
    Case("decode-dict-without-ids", lambda c: c.tok.decode({"ids": [1]}), ValueError, ("input_ids",)),
    Case("batch-decode-past-vocab", lambda c: c.tok.batch_decode([[1, 2], [3, 99999]]), ValueError,
         ("99999", "sequences[1]")),
    Case("batch-decode-int", lambda c: c.tok.batch_decode(5), ValueError, ("batch_decode", "int")),
    Case("ids-to-tokens-past-vocab", lambda c: c.tok.convert_ids_to_tokens(40000), ValueError, ("40000",)),
    Case("ids-to-tokens-negative", lambda c: c.tok.convert_ids_to_tokens([-3]), ValueError, ("-3",)),
    Case("ids-to-tokens-str", lambda c: c.tok.convert_ids_to_tokens([1, "x"]), ValueError, ("ids[1]", "str")),
]


def _set(attr: str, value: Any):
    def run(c: Ctx) -> None:
        setattr(c.tok, attr, value)
    return run


SETTING_CASES = [
    Case("pad-token-empty", _set("pad_token", ""), ValueError, ("pad_token",)),
    Case("pad-token-int", _set("pad_token", 5), ValueError, ("pad_token=5",)),
    Case("pad-token-unknown", _set("pad_token", "<not-a-token>"), ValueError, ("<not-a-token>", "add_special_tokens")),
    Case("pad-token-id-past-vocab", _set("pad_token_id", 99999), ValueError, ("99999",)),
    Case("add-special-not-dict", lambda c: c.tok.add_special_tokens("<x>"), ValueError, ("dict", "str")),
    Case("add-special-unknown-key", lambda c: c.tok.add_special_tokens({"foo_token": "<x>"}), ValueError,
         ("foo_token",)),
    Case("add-special-int", lambda c: c.tok.add_special_tokens({"pad_token": 5}), ValueError, ("pad_token=5",)),
    Case("add-special-list-str", lambda c: c.tok.add_special_tokens({"additional_special_tokens": "<x>"}),
         ValueError, ("additional_special_tokens", "list")),
    Case("add-tokens-int", lambda c: c.tok.add_tokens(5), ValueError, ("add_tokens", "int")),
    Case("add-tokens-list-none", lambda c: c.tok.add_tokens(["a", None]), ValueError, ("new_tokens[1]",)),
    Case("from-pretrained-max-length-str", lambda c: AutoTokenizer.from_pretrained(PHI3, model_max_length="x"),
         ValueError, ("model_max_length", "'x'", "positive integer")),
    Case("from-pretrained-padding-side", lambda c: AutoTokenizer.from_pretrained(PHI3, padding_side="up"),
         ValueError, ("padding_side", "'up'", "left")),
    Case("from-pretrained-int-path", lambda c: AutoTokenizer.from_pretrained(123), ValueError,
         ("pretrained_model_name_or_path=123",)),
    Case("from-pretrained-empty-path", lambda c: AutoTokenizer.from_pretrained(""), ValueError,
         ("pretrained_model_name_or_path=''",)),
    Case("from-gguf-none", lambda c: PhiTokenizer.from_gguf(None), GGUFError, ("path=None",)),
    Case("from-pretrained-chat-template-int", lambda c: AutoTokenizer.from_pretrained(PHI3, chat_template=5),
         ValueError, ("chat_template", "5")),
]


# ----------------------------------------------------------------------------- wrong shapes in the folder's files

def folder(c: Ctx, **files: Any) -> Path:
    """A copy of phi-3-mini's tokenizer folder with `files` written over it (name -> text, bytes, or JSON value;
    for tokenizer_config.json also a function config -> config)."""
    out = c.tmp / "tok"
    if not out.exists():
        out.mkdir()
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(PHI3 / name, out / name)
    for name, content in files.items():
        name = name.replace("__", "/").replace("_json", ".json").replace("_jinja", ".jinja")
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content = content(json.loads(path.read_text(encoding="utf-8")))
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return out


def load(**files: Any):
    return lambda c: AutoTokenizer.from_pretrained(folder(c, **files))


def cfg(**fields: Any):
    return lambda config: {**config, **fields}


def decoder(fn):
    def edit(config: dict) -> dict:
        config["added_tokens_decoder"] = fn(config["added_tokens_decoder"])
        return config
    return edit


TC = "tokenizer_config.json"
FILE_CASES = [
    Case("config-list", load(tokenizer_config_json=[1, 2]), TokenizerFileError, (TC, "JSON object", "a list")),
    Case("config-corrupt", load(tokenizer_config_json='{"a": 1,'), TokenizerFileError, (TC, "not valid JSON", "line 1")),
    Case("config-not-utf8", load(tokenizer_config_json=b'{"a": "\xff"}'), TokenizerFileError, (TC, "UTF-8")),
    Case("config-deep", load(tokenizer_config_json="[" * 100000 + "]" * 100000), TokenizerFileError, (TC,)),
    Case("config-max-length-str", load(tokenizer_config_json=cfg(model_max_length="x")), TokenizerFileError,
         (TC, "model_max_length", "'x'", "positive integer")),
    Case("config-max-length-negative", load(tokenizer_config_json=cfg(model_max_length=-5)), TokenizerFileError,
         ("model_max_length", "-5")),
    Case("config-max-length-nan", load(tokenizer_config_json='{"model_max_length": NaN}'), TokenizerFileError,
         ("model_max_length", "nan")),
    Case("config-max-length-bool", load(tokenizer_config_json=cfg(model_max_length=True)), TokenizerFileError,
         ("model_max_length", "True")),
    Case("config-chat-template-int", load(tokenizer_config_json=cfg(chat_template=5)), TokenizerFileError,
         (TC, "chat_template", "5")),
    Case("config-chat-template-list-bad", load(tokenizer_config_json=cfg(chat_template=[{"name": "x"}])),
         TokenizerFileError, ("chat_template[0]", "template")),
    Case("config-padding-side", load(tokenizer_config_json=cfg(padding_side="up")), TokenizerFileError,
         ("padding_side", "'up'")),
    Case("config-add-bos-str", load(tokenizer_config_json=cfg(add_bos_token="yes")), TokenizerFileError,
         ("add_bos_token", "'yes'", "true, false")),
    Case("config-bos-int", load(tokenizer_config_json=cfg(bos_token=5)), TokenizerFileError, ("bos_token", "5")),
    Case("config-bos-dict-no-content", load(tokenizer_config_json=cfg(bos_token={"lstrip": False})),
         TokenizerFileError, ("bos_token", "content")),
    Case("config-extra-tokens-str", load(tokenizer_config_json=cfg(additional_special_tokens="<x>")),
         TokenizerFileError, ("additional_special_tokens", "list")),
    Case("config-extra-tokens-item", load(tokenizer_config_json=cfg(additional_special_tokens=["<x>", 3])),
         TokenizerFileError, ("additional_special_tokens[1]",)),
    Case("config-input-names-str", load(tokenizer_config_json=cfg(model_input_names="input_ids")),
         TokenizerFileError, ("model_input_names",)),
    Case("config-clean-up-str", load(tokenizer_config_json=cfg(clean_up_tokenization_spaces="no")),
         TokenizerFileError, ("clean_up_tokenization_spaces",)),
    Case("decoder-list", load(tokenizer_config_json=decoder(lambda d: list(d.values()))), TokenizerFileError,
         (TC, "added_tokens_decoder")),
    Case("decoder-bad-id", load(tokenizer_config_json=decoder(lambda d: {"abc": {"content": "<x>"}})),
         TokenizerFileError, ("added_tokens_decoder['abc']", "integer")),
    Case("decoder-no-content", load(tokenizer_config_json=decoder(lambda d: {**d, "32000": {"special": True}})),
         TokenizerFileError, ("added_tokens_decoder['32000']", "content")),
    Case("decoder-content-int", load(tokenizer_config_json=decoder(lambda d: {**d, "32000": {"content": 7}})),
         TokenizerFileError, ("added_tokens_decoder['32000']", "content")),
    Case("decoder-entry-str", load(tokenizer_config_json=decoder(lambda d: {**d, "32000": "<x>"})),
         TokenizerFileError, ("added_tokens_decoder['32000']",)),
    Case("decoder-flag-str", load(tokenizer_config_json=decoder(
        lambda d: {**d, "32000": {**d["32000"], "special": "yes"}})), TokenizerFileError, ("'special'", "'yes'")),
    Case("decoder-id-mismatch", load(tokenizer_config_json=decoder(lambda d: {**d, "40000": {"content": "<new>"}})),
         TokenizerFileError, ("<new>", "40000", "32011")),
    Case("special-map-list", load(special_tokens_map_json=["<s>"]), TokenizerFileError,
         ("special_tokens_map.json", "JSON object")),
    Case("special-map-int", load(special_tokens_map_json={"pad_token": 7}), TokenizerFileError,
         ("special_tokens_map.json", "pad_token", "7")),
    Case("special-map-corrupt", load(special_tokens_map_json="{"), TokenizerFileError,
         ("special_tokens_map.json", "not valid JSON")),
    Case("special-map-then-bad-config", load(special_tokens_map_json={"chat_template": [{"template": "x"}]},
                                              tokenizer_config_json=cfg(chat_template=[{"template": "x"}])),
         TokenizerFileError, (TC, "chat_template[0]")),
    Case("added-tokens-list", load(added_tokens_json=["<x>"]), TokenizerFileError, ("added_tokens.json", "a list")),
    Case("added-tokens-id-str", load(added_tokens_json={"<x>": "1"}), TokenizerFileError,
         ("added_tokens.json", "<x>", "integer")),
    Case("added-tokens-id-mismatch", load(added_tokens_json={"<brand-new>": 5}), TokenizerFileError,
         ("<brand-new>", "5")),
    Case("tokenizer-json-list", load(tokenizer_json="[]"), TokenizerFileError, ("tokenizer.json",)),
    Case("tokenizer-json-corrupt", load(tokenizer_json='{"version": "1.0", "model": '), TokenizerFileError,
         ("tokenizer.json",)),
    Case("tokenizer-json-empty", load(tokenizer_json=""), TokenizerFileError, ("tokenizer.json",)),
    Case("tokenizer-json-bad-model", load(tokenizer_json=json.dumps({"model": {"type": "BPE", "vocab": [1]}})),
         TokenizerFileError, ("tokenizer.json",)),
    Case("chat-json-list", load(chat_template_json=["x"]), TokenizerFileError, ("chat_template.json", "JSON object")),
    Case("chat-json-int", load(chat_template_json={"chat_template": 5}), TokenizerFileError,
         ("chat_template.json", "chat_template", "5")),
    Case("chat-json-named-bad", load(chat_template_json={"chat_template": [{"template": "x"}]}), TokenizerFileError,
         ("chat_template.json", "chat_template[0]")),
    Case("chat-json-corrupt", load(chat_template_json='{"chat_template": "x'), TokenizerFileError,
         ("chat_template.json", "not valid JSON")),
    Case("chat-jinja-not-utf8", load(chat_template_jinja=b"{{ '\xff' }}"), TokenizerFileError,
         ("chat_template.jinja", "UTF-8")),
    Case("named-jinja-not-utf8", load(chat_templates__tool_use_jinja=b"\xfe\xff"), TokenizerFileError,
         ("tool_use.jinja", "UTF-8")),
]


# ----------------------------------------------------------------------------- hostile GGUF vocabularies

def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def gguf_file(entries: list[bytes], kv_count: int | None = None, tensor_count: int = 0) -> bytes:
    """A GGUF v3 header with the given encoded key/value entries."""
    return b"GGUF" + struct.pack("<IQQ", 3, tensor_count, len(entries) if kv_count is None else kv_count) + \
        b"".join(entries)


def kv_str(key: str, value: str) -> bytes:
    return _s(key) + struct.pack("<I", 8) + _s(value)


def kv_array(key: str, item_type: int, items: list[bytes], count: int | None = None) -> bytes:
    return _s(key) + struct.pack("<IIQ", 9, item_type, len(items) if count is None else count) + b"".join(items)


def kv_u32(key: str, value: int) -> bytes:
    return _s(key) + struct.pack("<II", 4, value)


def gguf(data: bytes | Any, name: str = "bad.gguf"):
    def run(c: Ctx):
        path = c.tmp / name
        path.write_bytes(data(PHI3_GGUF.read_bytes()) if callable(data) else data)
        return PhiTokenizer.from_gguf(path)
    return run


def _nested(depth: int) -> bytes:
    inner = struct.pack("<IQ", 4, 0)
    for _ in range(depth):
        inner = struct.pack("<IQ", 9, 1) + inner
    return _s("deep") + struct.pack("<I", 9) + inner


GPT2_OK = [kv_str("tokenizer.ggml.model", "gpt2"), kv_array("tokenizer.ggml.tokens", 8, [_s("a"), _s("b"), _s("ab")])]
GGUF_CASES = [
    Case("gguf-empty", gguf(b""), GGUFError, ("bad.gguf",)),
    Case("gguf-magic", gguf(b"GGUX" + bytes(20)), GGUFError, ("bad.gguf", "not a GGUF file")),
    Case("gguf-version", gguf(b"GGUF" + struct.pack("<IQQ", 99, 0, 0)), GGUFError, ("bad.gguf",)),
    Case("gguf-truncated-header", gguf(b"GGUF" + struct.pack("<I", 3) + b"\x00\x00"), GGUFError, ("bad.gguf",)),
    Case("gguf-truncated-fixture", gguf(lambda b: b[:5000]), GGUFError, ("bad.gguf", "truncated")),
    Case("gguf-kv-count-huge", gguf(gguf_file([], kv_count=2**63)), GGUFError, ("bad.gguf", "metadata entries")),
    Case("gguf-tensor-count-huge", gguf(gguf_file([], tensor_count=2**40)), GGUFError, ("bad.gguf", "tensors")),
    Case("gguf-array-count-huge", gguf(gguf_file([kv_array("x", 0, [], count=2**40)])), GGUFError,
         ("bad.gguf", "claims")),
    Case("gguf-string-array-huge", gguf(gguf_file([kv_array("x", 8, [_s("a")], count=2**62)])), GGUFError,
         ("bad.gguf",)),
    Case("gguf-string-length-huge", gguf(gguf_file([_s("k") + struct.pack("<IQ", 8, 2**60)])), GGUFError,
         ("bad.gguf", "past the end")),
    Case("gguf-nested-arrays", gguf(gguf_file([_nested(5000)])), GGUFError, ("bad.gguf", "nested")),
    Case("gguf-unknown-type", gguf(gguf_file([_s("k") + struct.pack("<I", 77)])), GGUFError, ("bad.gguf",)),
    Case("gguf-key-not-utf8", gguf(gguf_file([struct.pack("<Q", 2) + b"\xff\xfe" + struct.pack("<II", 4, 1)])),
         GGUFError, ("bad.gguf",)),
    Case("gguf-duplicate-key", gguf(gguf_file([kv_u32("k", 1), kv_u32("k", 2)])), GGUFError, ("bad.gguf", "k")),
    Case("gguf-no-tokenizer", gguf(gguf_file([kv_u32("general.alignment", 32)])), GGUFError,
         ("tokenizer.ggml.model",)),
    Case("gguf-model-not-str", gguf(gguf_file([kv_u32("tokenizer.ggml.model", 3)])), GGUFError,
         ("tokenizer.ggml.model", "string")),
    Case("gguf-tokens-ints", gguf(gguf_file([GPT2_OK[0], kv_array("tokenizer.ggml.tokens", 4, [struct.pack("<I", 1)])])),
         GGUFError, ("tokenizer.ggml.tokens", "strings")),
    Case("gguf-types-length", gguf(gguf_file([*GPT2_OK, kv_array("tokenizer.ggml.token_type", 5,
                                                                   [struct.pack("<i", 1)])])),
         GGUFError, ("3 tokens", "1 tokenizer.ggml.token_type")),
    Case("gguf-merge-no-space", gguf(gguf_file([*GPT2_OK, kv_array("tokenizer.ggml.merges", 8, [_s("ab")])])),
         GGUFError, ("tokenizer.ggml.merges[0]", "'ab'")),
    Case("gguf-merge-unknown-token", gguf(gguf_file([*GPT2_OK, kv_array("tokenizer.ggml.merges", 8, [_s("x y")])])),
         GGUFError, ("bad.gguf", "vocabulary cannot be built")),
    Case("gguf-bos-id-str", gguf(gguf_file([*GPT2_OK, kv_array("tokenizer.ggml.merges", 8, [_s("a b")]),
                                            kv_str("tokenizer.ggml.bos_token_id", "1")])),
         GGUFError, ("tokenizer.ggml.bos_token_id", "int")),
    Case("gguf-unsupported-model", gguf(gguf_file([kv_str("tokenizer.ggml.model", "bert"), GPT2_OK[1]])),
         GGUFError, ("'bert'", "not supported")),
    Case("gguf-missing-file", lambda c: PhiTokenizer.from_gguf(c.tmp / "missing.gguf"), GGUFError, ("missing.gguf",)),
]

CASES = CALL_CASES + DECODE_CASES + SETTING_CASES + FILE_CASES + GGUF_CASES


@pytest.mark.parametrize("case", params(CASES))
def test_bad_tokenizer_input_is_a_clear_error(case: Case, ctx: Ctx) -> None:
    expect_clear_error(case, ctx)


def test_failed_calls_leave_the_tokenizer_as_it_was(ctx: Ctx) -> None:
    tok = ctx.tok
    before = (len(tok), tok.special_tokens_map, list(tok.additional_special_tokens), tok.get_vocab())
    for bad in ({"pad_token": "<a>", "bos_token": 5}, {"additional_special_tokens": ["<b>", None]}):
        with pytest.raises(ValueError):
            tok.add_special_tokens(bad)
    with pytest.raises(ValueError):
        tok.add_tokens(["<c>", 3])
    assert (len(tok), tok.special_tokens_map, list(tok.additional_special_tokens), tok.get_vocab()) == before


# ----------------------------------------------------------------------------- save_pretrained validates first

def _save_bad(name: str, value: Any):
    def run(c: Ctx) -> None:
        tok = c.tok
        tok.chat_template = value
        tok.save_pretrained(c.tmp / "saved")
    return run


SAVE_CASES = [
    Case("save-template-name-path", _save_bad("path", {"default": "x", "../escape": "y"}), ValueError,
         ("'../escape'", "plain file name")),
    Case("save-template-name-hidden", _save_bad("hidden", {".hidden": "y"}), ValueError, ("'.hidden'",)),
    Case("save-template-value-int", _save_bad("int", {"default": 5}), ValueError, ("chat_template['default']",)),
    Case("save-template-int", _save_bad("int", 5), ValueError, ("chat_template", "int")),
]
EXTRA_CASES = SAVE_CASES


@pytest.mark.parametrize("case", params(SAVE_CASES))
def test_failed_save_leaves_the_folder_as_it_was(case: Case, ctx: Ctx) -> None:
    out = ctx.tmp / "saved"
    _shared().save_pretrained(out)  # an earlier good save
    (out / "chat_templates").mkdir(exist_ok=True)
    (out / "chat_templates" / "old.jinja").write_text("old", encoding="utf-8")
    before = folder_snapshot(out)
    expect_clear_error(case, ctx)
    assert folder_snapshot(out) == before
    assert not (ctx.tmp / "escape.jinja").exists()


def test_save_into_a_new_folder_that_fails_creates_nothing(ctx: Ctx) -> None:
    tok = ctx.tok
    tok.chat_template = {"default": "x", "a/b": "y"}
    with pytest.raises(ValueError, match="plain file name"):
        tok.save_pretrained(ctx.tmp / "new")
    assert not (ctx.tmp / "new").exists()


def test_missing_gguf_package_names_the_extra(ctx: Ctx) -> None:
    code = ("import sys; sys.modules['gguf'] = None\n"
            "from phikit.tokenizer.tokenization import PhiTokenizer\n"
            f"try:\n    PhiTokenizer.from_gguf({str(PHI3_GGUF)!r})\n"
            "except ImportError as e:\n    print('ERR', e)\n")
    proc = run_isolated(code, timeout=120)
    assert "ERR" in proc.stdout and "pip install phikit[gguf]" in proc.stdout, proc.stdout + proc.stderr
