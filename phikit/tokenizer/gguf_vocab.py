"""Read the metadata of a GGUF file with the `gguf` package's `GGUFReader` and turn its `tokenizer.ggml.*` vocabulary
into a `tokenizers.Tokenizer`.

The `gguf` package (`pip install phikit[gguf]`) parses the file; `_CheckedReader` refuses what would make it read
past the end of the file (truncated values, counts larger than the file could hold, nesting deeper than
`MAX_NESTING`), and every failure, whatever raised it, becomes a `GGUFError` naming the file. Only the metadata is
used: the tensors are memory-mapped, never read, so a vocabulary-only file and a multi-GB checkpoint cost the same.

Two vocabulary kinds exist for Phi:

* `tokenizer.ggml.model == "llama"` (Phi-3): SentencePiece BPE. Pieces carry scores and token types; BPE merges are
  rebuilt from the scores (SentencePiece merges the adjacent pair whose union has the highest score), with byte
  fallback through the `<0xNN>` pieces, the `▁` space marker and a `▁` prefix, exactly as Phi-3's `tokenizer.json`.
* `tokenizer.ggml.model == "gpt2"` (phi-1/1.5/2): byte-level BPE with explicit `tokenizer.ggml.merges`.
"""

from __future__ import annotations

import math
import os
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from .sentencepiece_model import (BYTE, CONTROL, MODEL_BPE, NORMAL, USER_DEFINED, SentencePieceModel,
                                  build_sentencepiece_tokenizer)

GGUF_MAGIC = b"GGUF"
MAX_NESTING = 4  # arrays of arrays deeper than this are refused (vocabularies use none)
_ARRAY_TYPE = 9
_NO_RSTRIP = {"<unk>", "<s>", "<|endoftext|>"}


class GGUFError(ValueError):
    """A GGUF file is malformed or holds a vocabulary phikit cannot convert; the message names the file."""


def _gguf_reader_class() -> type:
    try:
        import numpy as np
        from gguf import GGUFReader
        from gguf.constants import GGUFValueType
    except ImportError as exc:
        raise ImportError("reading a .gguf tokenizer needs the gguf package: pip install phikit[gguf] "
                          f"(import failed: {exc}).") from exc

    min_size = {t: np.dtype(d).itemsize for t, d in GGUFReader.gguf_scalar_to_np.items()}
    min_size.update({GGUFValueType.STRING: 8, GGUFValueType.ARRAY: 12})

    class CheckedReader(GGUFReader):
        """GGUFReader that refuses short reads, impossible counts and deep nesting instead of misreading."""

        _depth = 0

        def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> Any:
            # GGUFReader._get, on a plain ndarray view of the map (slicing the memmap itself is 20x slower), and
            # refusing a read past the end instead of returning fewer items
            count, dtype = int(count), np.dtype(dtype)
            size = dtype.itemsize * count
            if count < 0 or offset < 0 or offset + size > len(self.data):
                raise GGUFError(f"needs {size} bytes at offset {offset}, past the end of the file "
                                f"({len(self.data)} bytes): the file is truncated or corrupt")
            plain = self.__dict__.get("_plain")
            if plain is None:
                plain = self.__dict__["_plain"] = self.data.view(np.ndarray)
            arr = plain[offset:offset + size].view(dtype)
            return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

        def _get_field_parts(self, orig_offs: int, raw_type: int) -> Any:
            if int(raw_type) == _ARRAY_TYPE:
                item_type, count = int(self._get(orig_offs, np.uint32)[0]), int(self._get(orig_offs + 4, np.uint64)[0])
                each = min_size.get(GGUFValueType(item_type), 1) if item_type in _VALUE_TYPES else 1
                if count * each > len(self.data) - orig_offs - 12:
                    raise GGUFError(f"an array at offset {orig_offs} claims {count} items, more than the rest of "
                                    "the file can hold: the file is truncated or corrupt")
                if self._depth >= MAX_NESTING:
                    raise GGUFError(f"arrays nested deeper than {MAX_NESTING} at offset {orig_offs}: the file is "
                                    "corrupt")
            self._depth += 1
            try:
                return super()._get_field_parts(orig_offs, raw_type)
            finally:
                self._depth -= 1

        def _build_fields(self, offs: int, count: int) -> int:
            if int(count) * 13 > len(self.data) - offs:
                raise GGUFError(f"the header claims {int(count)} metadata entries, more than the file can hold: "
                                "the file is truncated or corrupt")
            return super()._build_fields(offs, count)

        def _build_tensor_info(self, offs: int, count: int) -> Any:
            if int(count) * 24 > len(self.data) - offs:
                raise GGUFError(f"the header claims {int(count)} tensors, more than the file can hold: the file is "
                                "truncated or corrupt")
            return super()._build_tensor_info(offs, count)

    _VALUE_TYPES = {int(t) for t in GGUFValueType}
    return CheckedReader


def read_gguf_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Return the key/value metadata of the GGUF file at `path` as Python values (tensor data is not read).

    Strings are `str`, numbers `int` / `float` / `bool`, arrays lists (nested arrays flattened, as `gguf` reads
    them). Raises `GGUFError` naming the file when anything about it is wrong; `ImportError` naming
    `pip install phikit[gguf]` when the `gguf` package is missing.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise GGUFError(f"path={path!r} must be the path of a .gguf file (a str or path).")
    path = os.fspath(path)
    reader_class = _gguf_reader_class()
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise GGUFError(f"not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
        reader = reader_class(path, "r")
        metadata = {name: field.contents() for name, field in reader.fields.items()
                    if not name.startswith("GGUF.") or name == "GGUF.version"}
    except GGUFError as exc:
        raise GGUFError(f"{path}: {exc}. Re-download or re-convert the file.") from exc
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - gguf/numpy raise many types on a broken file; name the file
        raise GGUFError(f"{path}: cannot read this GGUF file ({type(exc).__name__}: {exc}). Re-download or "
                        "re-convert it (GGUF versions 2 and 3 are supported).") from exc
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
    merges = []
    for i, m in enumerate(_require(meta, "tokenizer.ggml.merges", path)):
        pair = tuple(m.split(" ", 1)) if isinstance(m, str) else ()
        if len(pair) != 2 or not all(pair):
            raise GGUFError(f"{path}: tokenizer.ggml.merges[{i}] is {m!r}; each merge must be two tokens separated "
                            "by one space. The file is corrupt.")
        merges.append(pair)
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _typed(meta: dict[str, Any], key: str, kind: type | tuple[type, ...], path: str, want: str) -> Any:
    value = meta.get(key)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool) and bool not in (
            kind if isinstance(kind, tuple) else (kind,))):
        raise GGUFError(f"{path}: {key} is {str(value)[:60]!r} ({type(value).__name__}); it must be {want}. The "
                        "file is corrupt.")
    return value


def _check_vocab(meta: dict[str, Any], path: str) -> tuple[str, list[str], list[int]]:
    """The model kind, tokens and token types, checked for type and length."""
    kind = _typed(meta, "tokenizer.ggml.model", str, path, "a string such as 'llama' or 'gpt2'")
    _require(meta, "tokenizer.ggml.model", path)
    tokens = _typed(meta, "tokenizer.ggml.tokens", list, path, "a list of token strings")
    if not tokens or not all(isinstance(t, str) for t in _require(meta, "tokenizer.ggml.tokens", path)):
        raise GGUFError(f"{path}: tokenizer.ggml.tokens must be a non-empty list of strings. The file is corrupt.")
    types = _typed(meta, "tokenizer.ggml.token_type", list, path, "a list of ints") or [NORMAL] * len(tokens)
    scores = _typed(meta, "tokenizer.ggml.scores", list, path, "a list of numbers")
    for key, values in (("token_type", types), ("scores", scores)):
        if values is not None and len(values) != len(tokens):
            raise GGUFError(f"{path}: {len(tokens)} tokens but {len(values)} tokenizer.ggml.{key}; the file is "
                            "corrupt.")
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in types):
        raise GGUFError(f"{path}: tokenizer.ggml.token_type must hold ints. The file is corrupt.")
    if scores is not None and not all(isinstance(x, (int, float)) and math.isfinite(x) for x in scores):
        raise GGUFError(f"{path}: tokenizer.ggml.scores must hold finite numbers. The file is corrupt.")
    for key in ("bos", "eos", "unknown", "padding"):
        _typed(meta, f"tokenizer.ggml.{key}_token_id", int, path, "an int token id")
    for key in ("tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token", "tokenizer.ggml.add_space_prefix"):
        _typed(meta, key, (bool, int), path, "true or false")
    _typed(meta, "tokenizer.chat_template", str, path, "a jinja template string")
    _typed(meta, "general.name", str, path, "a string")
    _typed(meta, "general.architecture", str, path, "a string")
    return kind, tokens, types


def gguf_to_tokenizer(path: str | os.PathLike) -> tuple[Tokenizer, dict[str, Any]]:
    """Build a `tokenizers.Tokenizer` from a GGUF vocabulary; return it with the tokenizer settings found.

    The settings dict has `bos_token`, `eos_token`, `unk_token`, `pad_token` (strings or None), `add_bos_token`,
    `add_eos_token`, `chat_template` (None when absent) and `model_max_length` (the architecture's context length,
    when given), in the form `PhiTokenizer` takes. Any failure is a `GGUFError` naming the file.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise GGUFError(f"path={path!r} must be the path of a .gguf file (a str or path).")
    path = os.fspath(path)
    meta = read_gguf_metadata(path)
    kind, tokens, types = _check_vocab(meta, path)
    try:
        tok = _build(meta, kind, tokens, types, path)
    except GGUFError:
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - tokenizers raises Exception or a Rust PanicException
        raise GGUFError(f"{path}: its vocabulary cannot be built ({type(exc).__name__}: {exc}). The file is corrupt "
                        "or of a kind phikit does not support.") from exc

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
    if isinstance(context, int) and not isinstance(context, bool) and context > 0:
        settings["model_max_length"] = context
    return tok, settings


def _build(meta: dict[str, Any], kind: str, tokens: list[str], types: list[int], path: str) -> Tokenizer:
    if kind == "llama":
        return _spm_tokenizer(meta, tokens, types)
    if kind == "gpt2":
        tok = _bpe_tokenizer(meta, tokens, path)
        # Control and user-defined tokens are matched before the model runs, like added tokens in tokenizer.json.
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, ty in zip(tokens, types) if ty == CONTROL and t])
        tok.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, ty in zip(tokens, types) if ty == USER_DEFINED and t])
        return tok
    raise GGUFError(f"{path}: tokenizer.ggml.model {kind!r} is not supported (supported: 'llama' "
                    "(SentencePiece, Phi-3) and 'gpt2' (byte-level BPE, phi-1/1.5/2)).")
