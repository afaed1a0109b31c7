"""Logprobs in OpenAI's two shapes, from the engine's `TokenLogprob`s (log-softmax of the model's raw logits).

    chat:         {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]}
    completions:  {"tokens": [..], "token_logprobs": [..], "top_logprobs": [{token: logprob}], "text_offset": [..]}

A token's text is `tokenizer.decode([id])` (special tokens shown); its bytes are the token's own bytes (byte-level
BPE's byte alphabet and SentencePiece's `<0xNN>` byte tokens undone), so a character split over tokens keeps its
bytes. `return_tokens_as_token_ids` (vLLM's extension) writes tokens as "token_id:<id>".
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

from ..engine.outputs import TokenLogprob
from ..tokenizer.byte_level import unicode_to_byte

LOGPROB_FLOOR = -9999.0  # stands in for -inf (JSON has no infinities)
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _clean(value: float) -> float:
    return value if math.isfinite(value) else LOGPROB_FLOOR


class TokenTexts:
    """Each token id's text and bytes, computed once per id."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self.byte_level = "ByteLevel" in (decoder.__getstate__().decode() if decoder is not None and hasattr(
            decoder, "__getstate__") else "")
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def get(self, token_id: int) -> tuple[str, list[int]]:
        hit = self._cache.get(token_id)
        if hit is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            hit = self._cache[token_id] = (text, self._bytes(token_id, text))
        return hit

    def _bytes(self, token_id: int, text: str) -> list[int]:
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if isinstance(piece, str):
            byte = _BYTE_TOKEN.match(piece)
            if byte:
                return [int(byte.group(1), 16)]
            alphabet = unicode_to_byte()
            if self.byte_level and piece and all(c in alphabet for c in piece):
                return [alphabet[c] for c in piece]
            if not self.byte_level and "\u2581" in piece:  # SentencePiece's word-boundary mark is a space
                return list(piece.replace("\u2581", " ").encode("utf-8"))
        return list(text.encode("utf-8"))

    def token(self, token_id: int, as_ids: bool) -> str:
        return f"token_id:{token_id}" if as_ids else self.get(token_id)[0]


def chat_logprobs(items: Sequence[TokenLogprob], texts: TokenTexts, as_ids: bool = False) -> dict[str, Any]:
    """`choices[i].logprobs` of a chat completion (or of one stream chunk)."""
    content = []
    for item in items:
        top = [{"token": texts.token(i, as_ids), "logprob": _clean(lp), "bytes": texts.get(i)[1]} for i, lp in item.top]
        content.append({"token": texts.token(item.token_id, as_ids), "logprob": _clean(item.logprob),
                        "bytes": texts.get(item.token_id)[1], "top_logprobs": top})
    return {"content": content}


def completion_logprobs(items: Sequence[TokenLogprob], texts: TokenTexts, offset: int = 0,
                        as_ids: bool = False) -> dict[str, Any]:
    """`choices[i].logprobs` of a completion (or of one stream chunk); `offset` is the text offset of the first
    token (characters of text already sent for this choice)."""
    tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
    for item in items:
        token = texts.token(item.token_id, as_ids)
        tokens.append(token)
        token_logprobs.append(_clean(item.logprob))
        top = {texts.token(i, as_ids): _clean(lp) for i, lp in item.top}
        top.setdefault(token, _clean(item.logprob))
        top_logprobs.append(top)
        text_offset.append(offset)
        offset += len(texts.get(item.token_id)[0])
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
            "text_offset": text_offset}
