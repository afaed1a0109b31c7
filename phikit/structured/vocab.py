"""llguidance's view of a phikit tokenizer: an `LLTokenizer` over the model's logits width, with the model's merged
stop ids as the grammar's only end.

Two routes, the same table of token bytes either way (tests compare their masks):
  - `tokenizer.json`: llguidance reads the backend's JSON itself (what `PhiTokenizer` loaded from a folder holds);
  - phikit's token table: every id's bytes worked out here from the backend's vocabulary (byte-level BPE through
    GPT-2's byte alphabet; SentencePiece pieces with `▁` as a space and `<0xNN>` byte pieces; special tokens marked
    with a leading 0xFF byte, llguidance's convention), for vocabularies that did not come from a tokenizer.json
    (GGUF, SentencePiece `.model`, tiktoken ranks) or that llguidance cannot parse.

Building one takes ~0.1-1 s for a 32k-200k vocabulary, so they are cached per (tokenizer, width, stop ids).
"""

from __future__ import annotations

import json
import threading
import weakref
from pathlib import Path
from typing import Any, Sequence

from ..tokenizer.byte_level import unicode_to_byte
from .backend import llguidance

_CACHE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _is_byte_level(spec: dict) -> bool:
    """Does the backend (tokenizer.json as a dict) spell tokens in GPT-2's byte alphabet?"""
    def has(node: Any) -> bool:
        if isinstance(node, dict):
            if node.get("type") == "ByteLevel":
                return True
            return any(has(v) for v in node.values())
        if isinstance(node, list):
            return any(has(v) for v in node)
        return False
    return has(spec.get("decoder")) or has(spec.get("pre_tokenizer"))


def token_table(tokenizer: Any, n_vocab: int, spec: dict | None = None) -> tuple[list[bytes], list[int]]:
    """(bytes of ids 0 .. n_vocab - 1, the special ids). Ids the tokenizer lacks (gaps, the embedding's padding)
    are b"": a grammar can never allow them. `spec`: the backend's tokenizer.json as a dict, if already parsed."""
    backend = tokenizer.backend_tokenizer
    spec = spec if spec is not None else json.loads(backend.to_str())
    byte_level = _is_byte_level(spec)
    decoder = unicode_to_byte() if byte_level else None
    special = {t["id"]: t["content"] for t in spec.get("added_tokens", []) if t.get("special")}
    added = {t["id"]: t["content"] for t in spec.get("added_tokens", [])}
    table: list[bytes] = []
    for i in range(n_vocab):
        if i in special:
            table.append(b"\xff" + special[i].encode("utf-8"))
            continue
        if i in added:  # matched literally, not through the model's alphabet
            table.append(added[i].encode("utf-8"))
            continue
        piece = backend.id_to_token(i)
        if piece is None:
            table.append(b"")
        elif byte_level:
            table.append(bytes(decoder[c] for c in piece) if all(c in decoder for c in piece)
                         else piece.encode("utf-8"))
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            byte = int(piece[3:5], 16)  # 0xFF never occurs in UTF-8 and marks special tokens to llguidance
            table.append(bytes([byte]) if byte != 0xFF else b"")
        else:
            table.append(piece.replace("\u2581", " ").encode("utf-8"))
    return table, sorted(i for i in special if i < n_vocab)


def _without_prefix_space(node: Any) -> Any:
    """A tokenizer.json node with the dummy-prefix space switched off (SentencePiece's `Prepend("▁")` normalizer,
    Metaspace's prepend scheme, ByteLevel's add_prefix_space): llguidance tokenizes pieces of text, not whole
    prompts, and " x" must not come back for "x"."""
    if isinstance(node, list):
        return [_without_prefix_space(n) for n in node if not (isinstance(n, dict) and n.get("type") == "Prepend")]
    if not isinstance(node, dict):
        return node
    out = {k: _without_prefix_space(v) for k, v in node.items()}
    if out.get("type") == "ByteLevel":
        out["add_prefix_space"] = False
    if out.get("type") == "Metaspace":
        out["prepend_scheme"] = "never"
        out.pop("add_prefix_space", None)
    return out


class _TableTokenizer:
    """What llguidance's `TokenizerWrapper` reads: the token bytes, and an encoder of text pieces (the backend's own
    model without a dummy-prefix space, post-processor or special-token parsing)."""

    def __init__(self, tokenizer: Any, n_vocab: int, eos: int) -> None:
        from tokenizers import Tokenizer

        spec = json.loads(tokenizer.backend_tokenizer.to_str())  # 1-2 s for a 200k vocabulary: parsed once
        self.tokens, self.special_token_ids = token_table(tokenizer, n_vocab, spec)
        self.eos_token_id = eos
        self.bos_token_id = getattr(tokenizer, "bos_token_id", None)
        spec["post_processor"] = None
        for key in ("normalizer", "pre_tokenizer"):
            spec[key] = _without_prefix_space(spec.get(key))
            if isinstance(spec[key], dict) and spec[key].get("type") == "Sequence" and not next(
                    iter(v for k, v in spec[key].items() if k != "type"), None):
                spec[key] = None  # a Sequence left empty
        self._backend = Tokenizer.from_str(json.dumps(spec))
        self._backend.encode_special_tokens = True  # "<|end|>" in a grammar's text is text, not the token

    def __call__(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError("text only")  # llguidance probes for bytes support with b"test", then passes str
        return self._backend.encode(text, add_special_tokens=False).ids


def _from_tokenizer_json(tokenizer: Any) -> bool:
    folder = Path(str(getattr(tokenizer, "name_or_path", "") or ""))
    return bool(str(folder)) and folder.is_dir() and (folder / "tokenizer.json").is_file()


def grammar_tokenizer(tokenizer: Any, n_vocab: int, stop_ids: Sequence[int], route: str = "auto") -> Any:
    """The cached `llguidance.LLTokenizer` for `tokenizer` over logits of width `n_vocab`, ending on `stop_ids`.

    route: "json" (the backend's tokenizer.json), "table" (phikit's token table) or "auto": json for a tokenizer
    loaded from a folder's tokenizer.json, the table for the rest (GGUF, SentencePiece .model, tiktoken ranks, hub
    ids) and wherever llguidance cannot read the JSON.
    """
    llg = llguidance()
    stops = tuple(int(i) for i in stop_ids)
    if not stops:
        raise ValueError("a grammar needs the model's stop ids to end on, got none; set eos_token_id in the "
                         "generation config or pass the tokenizer")
    if any(not 0 <= i < n_vocab for i in stops):
        raise ValueError(f"stop ids {list(stops)} must lie in [0, {n_vocab}) (the logits' width)")
    if route not in ("auto", "json", "table"):
        raise ValueError(f"route={route!r}: choose 'auto', 'json' or 'table'")
    key = (n_vocab, stops, route)
    with _LOCK:
        per = _CACHE.setdefault(tokenizer, {})
        if key in per:
            return per[key]
    built = None
    if route == "json" or (route == "auto" and _from_tokenizer_json(tokenizer)):
        try:
            built = llg.LLTokenizer(tokenizer.backend_tokenizer.to_str(), n_vocab=n_vocab, eos_token=list(stops))
        except Exception:  # noqa: BLE001 - llguidance raises ValueError / RuntimeError on a JSON it cannot read
            if route == "json":
                raise
    if built is None:
        wrapper = llg.TokenizerWrapper(_TableTokenizer(tokenizer, n_vocab, stops[0]))
        built = llg.LLTokenizer(wrapper, n_vocab=n_vocab, eos_token=list(stops))
    with _LOCK:
        _CACHE.setdefault(tokenizer, {})[key] = built
    return built
