"""Read the metadata of a GGUF file and turn its `tokenizer.ggml.*` vocabulary into a `tokenizers.Tokenizer`.

GGUF layout (little endian): magic `b"GGUF"`, uint32 version (2 or 3), uint64 tensor count, uint64 key/value count,
then that many `(string key, uint32 type, value)` triples. A string is a uint64 byte length and UTF-8 bytes; an
array is a uint32 element type, a uint64 count and the elements. Only the metadata is read: the tensors after it
are never touched, so a vocabulary-only file and a multi-GB checkpoint cost the same.

Two vocabulary kinds exist for Phi:

* `tokenizer.ggml.model == "llama"` (Phi-3): SentencePiece BPE. Pieces carry scores and token types; BPE merges are
  rebuilt from the scores (SentencePiece merges the adjacent pair whose union has the highest score), with byte
  fallback through the `<0xNN>` pieces, the `▁` space marker and a `▁` prefix, exactly as Phi-3's `tokenizer.json`.
* `tokenizer.ggml.model == "gpt2"` (phi-1/1.5/2): byte-level BPE with explicit `tokenizer.ggml.merges`.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from .sentencepiece_model import (BYTE, CONTROL, MODEL_BPE, NORMAL, USER_DEFINED, SentencePieceModel,
                                  build_sentencepiece_tokenizer)

GGUF_MAGIC = b"GGUF"

# value type id -> struct format of one scalar (strings (8) and arrays (9) are handled apart)
_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9

_NO_RSTRIP = {"<unk>", "<s>", "<|endoftext|>"}


class GGUFError(ValueError):
    """A GGUF file is malformed or holds a vocabulary phikit cannot convert; the message names the file."""


class _Reader:
    """Sequential little-endian reader over the bytes of a GGUF header, with errors that name the file."""

    def __init__(self, data: bytes, path: str) -> None:
        self.data, self.path, self.pos = data, path, 0

    def _take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise GGUFError(
                f"{self.path}: GGUF metadata is truncated or corrupt (needs {n} bytes at offset {self.pos}, the file "
                f"has {len(self.data)}). Re-download or re-convert the file.")
        view = memoryview(self.data)[self.pos:self.pos + n]
        self.pos += n
        return view

    def scalar(self, type_id: int) -> Any:
        fmt = "<" + _SCALAR_FORMATS[type_id]
        return struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar(10)
        try:
            return bytes(self._take(n)).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GGUFError(f"{self.path}: a GGUF string at offset {self.pos - n} is not valid UTF-8 ({exc}).") from exc

    def value(self, type_id: int) -> Any:
        if type_id in _SCALAR_FORMATS:
            return self.scalar(type_id)
        if type_id == _STRING:
            return self.string()
        if type_id == _ARRAY:
            elem_type, count = self.scalar(4), self.scalar(10)
            if elem_type in _SCALAR_FORMATS:
                # one struct call for the whole array: 32k scores read in microseconds
                fmt = f"<{count}{_SCALAR_FORMATS[elem_type]}"
                return list(struct.unpack(fmt, self._take(struct.calcsize(fmt))))
            if elem_type == _STRING:
                return [self.string() for _ in range(count)]
            if elem_type == _ARRAY:
                return [self.value(_ARRAY) for _ in range(count)]
            raise GGUFError(f"{self.path}: unknown GGUF array element type {elem_type} at offset {self.pos}.")
        raise GGUFError(f"{self.path}: unknown GGUF value type {type_id} at offset {self.pos}; the file is corrupt "
                        "or newer than this reader (GGUF versions 2 and 3 are supported).")


def read_gguf_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Return the key/value metadata of the GGUF file at `path` (tensor data is not read).

    Raises `GGUFError` naming the file when the magic, version or any field is wrong or the file is truncated.
    """
    path = os.fspath(path)
    # The header is at most a few MB (vocabularies); read growing chunks instead of the whole (maybe huge) file.
    with open(path, "rb") as f:
        data = f.read(1 << 24)
    reader = _Reader(data, path)
    magic = bytes(reader._take(4)) if len(data) >= 4 else data
    if magic != GGUF_MAGIC:
        raise GGUFError(f"{path}: not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r}).")
    version = reader.scalar(4)
    if version not in (2, 3):
        raise GGUFError(f"{path}: GGUF version {version} is not supported (supported: 2, 3).")
    reader.scalar(10)  # tensor count: unused, only the metadata is read
    kv_count = reader.scalar(10)
    if kv_count > 1_000_000:
        raise GGUFError(f"{path}: implausible GGUF key/value count {kv_count}; the file is corrupt.")
    metadata: dict[str, Any] = {"GGUF.version": version}
    for _ in range(kv_count):
        while True:
            start = reader.pos
            try:
                key = reader.string()
                metadata[key] = reader.value(reader.scalar(4))
                break
            except GGUFError:
                # a header larger than the first chunk: read more of the file and retry this key
                with open(path, "rb") as f:
                    more = f.read(len(reader.data) * 4)
                if len(more) == len(reader.data):
                    raise
                reader.data, reader.pos = more, start
    return metadata


def _require(meta: dict[str, Any], key: str, path: str) -> Any:
    if key not in meta:
        raise GGUFError(f"{path}: GGUF metadata has no {key!r}; it holds no tokenizer phikit can import "
                        f"(keys present: {sorted(k for k in meta if k.startswith('tokenizer.'))}).")
    return meta[key]


def _spm_tokenizer(meta: dict[str, Any], tokens: list[str], types: list[int]) -> Tokenizer:
    model = SentencePieceModel(
        pieces=tokens, scores=meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens), types=types,
        model_type=MODEL_BPE, byte_fallback=BYTE in types, unk_id=meta.get("tokenizer.ggml.unknown_token_id", 0),
        add_dummy_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)), remove_extra_whitespaces=False)
    # GGUF stores no rstrip flags. llama.cpp's rule for Phi-3 vocabularies (llama-vocab.cpp): control tokens swallow
    # the whitespace after them, except <unk>, <s>, <|endoftext|> (equal to Phi-3-mini's tokenizer.json).
    attrs: dict[str, dict] = {}
    if any(s in str(meta.get("general.name", "")).lower() for s in ("phi-3", "phi3")):
        attrs = {t: {"rstrip": t not in _NO_RSTRIP} for t, ty in zip(tokens, types)
                 if ty in (CONTROL, USER_DEFINED)}
    return build_sentencepiece_tokenizer(model, attrs)


def _bpe_tokenizer(meta: dict[str, Any], tokens: list[str], path: str) -> Tokenizer:
    merges = [tuple(m.split(" ", 1)) for m in _require(meta, "tokenizer.ggml.merges", path)]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def gguf_to_tokenizer(path: str | os.PathLike) -> tuple[Tokenizer, dict[str, Any]]:
    """Build a `tokenizers.Tokenizer` from a GGUF vocabulary; return it with the tokenizer settings found.

    The settings dict has `bos_token`, `eos_token`, `unk_token`, `pad_token` (strings or None), `add_bos_token`,
    `add_eos_token`, `chat_template` (None when absent) and `model_max_length` (the architecture's context length,
    when given), in the form `PhiTokenizer` takes.
    """
    path = os.fspath(path)
    meta = read_gguf_metadata(path)
    kind = _require(meta, "tokenizer.ggml.model", path)
    tokens: list[str] = _require(meta, "tokenizer.ggml.tokens", path)
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise GGUFError(f"{path}: {len(tokens)} tokens but {len(types)} token types; the file is corrupt.")
    if kind == "llama":
        tok = _spm_tokenizer(meta, tokens, types)
    elif kind == "gpt2":
        tok = _bpe_tokenizer(meta, tokens, path)
        # Control and user-defined tokens are matched before the model runs, like added tokens in tokenizer.json.
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, ty in zip(tokens, types) if ty == CONTROL])
        tok.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, ty in zip(tokens, types) if ty == USER_DEFINED])
    else:
        raise GGUFError(f"{path}: tokenizer.ggml.model {kind!r} is not supported (supported: 'llama' "
                        "(SentencePiece, Phi-3) and 'gpt2' (byte-level BPE, phi-1/1.5/2)).")

    def token_at(key: str) -> str | None:
        idx = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[idx] if idx is not None and 0 <= idx < len(tokens) else None

    settings = {
        "bos_token": token_at("bos"), "eos_token": token_at("eos"), "unk_token": token_at("unknown"),
        "pad_token": token_at("padding"),
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "chat_template": meta.get("tokenizer.chat_template"),
    }
    context = meta.get(f"{meta.get('general.architecture')}.context_length")
    if isinstance(context, int) and context > 0:
        settings["model_max_length"] = context
    return tok, settings
