"""Check what a user hands a tokenizer call (texts, token ids, lengths) and assemble what it returns.

Wrong input is a `ValueError` naming the argument, the position and the fix, the way transformers words it ("text
input must be of type `str` ..."); ids outside the vocabulary are refused, not silently dropped.
"""

from __future__ import annotations

from typing import Any

class UnknownArgumentError(ValueError, TypeError):
    """A keyword argument the method does not take (a TypeError in Python's terms, a ValueError for phikit)."""


_TEXT_SHAPES = ("text input must be of type `str` (one text) or `list[str]` (a batch of texts)")


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def check_texts(text: Any, name: str = "text") -> tuple[bool, list[str]]:
    """(batched, texts) of a text argument: one `str`, or a list/tuple of `str`. Raises `ValueError` otherwise."""
    if isinstance(text, str):
        return False, [text]
    if text is None:
        raise ValueError(f"{name} is None; {_TEXT_SHAPES}. Pass the text to tokenize.")
    if isinstance(text, (bytes, bytearray)):
        raise ValueError(f"{name} is bytes; {_TEXT_SHAPES}. Decode it first, e.g. {name}.decode('utf-8').")
    if not isinstance(text, (list, tuple)):
        raise ValueError(f"{name} is a {_describe(text)}; {_TEXT_SHAPES}. Convert it, e.g. str(...).")
    for i, item in enumerate(text):
        if not isinstance(item, str):
            hint = (" To turn token ids into text, use tokenizer.decode(ids)." if isinstance(item, int) else
                    " Pre-tokenized input (lists of words) is not supported; join the words into one string."
                    if isinstance(item, (list, tuple)) else "")
            raise ValueError(f"{name}[{i}] is a {_describe(item)}; {_TEXT_SHAPES}.{hint}")
    return True, list(text)


def check_one_text(text: Any, name: str = "text") -> str:
    """A single `str` argument (`encode`, `tokenize`); raises `ValueError` naming the argument otherwise."""
    if isinstance(text, str):
        return text
    batched, _ = check_texts(text, name)  # raises for anything that is not text at all
    raise ValueError(f"{name} is a list of {len(text)} texts; this method takes one str. Call the tokenizer "
                     "itself, tokenizer(texts), for a batch.")


def check_encodable(texts: list[str], name: str = "text") -> None:
    """Refuse text the tokenizers library cannot take: lone surrogates (e.g. "\\ud800"), which are not Unicode."""
    for i, t in enumerate(texts):
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as exc:
            where = f"{name}[{i}]" if len(texts) > 1 else name
            raise ValueError(f"{where} holds {t[exc.start]!r} at character {exc.start}, a lone surrogate that is not "
                             "valid Unicode text; remove it or repair the text (e.g. "
                             "s.encode('utf-16', 'surrogatepass').decode('utf-16')).") from None


def check_positive(name: str, value: Any, allow_none: bool = True) -> None:
    """`max_length`, `pad_to_multiple_of`: a positive int (or None)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive int (or None), e.g. {name}=512.")


def _as_ids(ids: Any) -> Any:
    if isinstance(ids, dict):
        if "input_ids" not in ids:
            raise ValueError(f"decode got a dict without 'input_ids' (keys: {sorted(map(str, ids))}); pass the ids.")
        ids = ids["input_ids"]
    return ids.tolist() if hasattr(ids, "tolist") else ids


def check_ids(ids: Any, size: int, name: str = "token_ids") -> list[int]:
    """A flat list of token ids, each an int in [0, size). Raises `ValueError` naming the id and its position."""
    ids = _as_ids(ids)
    if isinstance(ids, int) and not isinstance(ids, bool):
        ids = [ids]
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (list, tuple)):
        raise ValueError(f"{name} must be token ids (an int, a list of ints or a tensor); got {_describe(ids)}.")
    out = []
    for i, idx in enumerate(ids):
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise ValueError(f"{name}[{i}] is a {_describe(idx)}; token ids must be ints in 0..{size - 1}.")
        if not 0 <= idx < size:
            raise ValueError(f"token id {idx} ({name}[{i}]) is not in this tokenizer's vocabulary: valid ids are "
                             f"0..{size - 1} (len(tokenizer) = {size}). A model whose embedding is padded past the "
                             "vocabulary (Phi-3: 32064 rows for 32011 tokens) can produce such ids from untrained "
                             "weights; drop them, or mask those logits before sampling.")
        out.append(idx)
    return out


def id_rows(token_ids: Any) -> tuple[bool, list[Any]]:
    """(batched, rows) of decode's input: a 2-D input (list of lists, [B, T] tensor) is a batch."""
    ids = _as_ids(token_ids)
    if isinstance(ids, (list, tuple)) and ids and isinstance(ids[0], (list, tuple)):
        return True, list(ids)
    return False, [ids]


def pad_rows(rows: list[list[Any]], target: int, value: Any, side: str) -> list[list[Any]]:
    """Pad each row to `target` with `value` on `side` (rows already longer stay)."""
    out = []
    for row in rows:
        pad = [value] * max(target - len(row), 0)
        out.append(row + pad if side == "right" else pad + row)
    return out


def extra_fields(encodings: list[Any], target: int | None, side: str, offsets: bool, special: bool,
                 length: bool, ids: list[list[int]]) -> dict[str, list]:
    """`offset_mapping`, `special_tokens_mask` and `length` as transformers' fast tokenizers return them: padding
    positions get (0, 0) offsets and special mask 1; `length` is the (padded) length of each row."""
    out: dict[str, list] = {}
    if special:
        rows = [list(e.special_tokens_mask) for e in encodings]
        out["special_tokens_mask"] = rows if target is None else pad_rows(rows, target, 1, side)
    if offsets:
        rows = [[tuple(o) for o in e.offsets] for e in encodings]
        out["offset_mapping"] = rows if target is None else pad_rows(rows, target, (0, 0), side)
    if length:
        out["length"] = [len(r) for r in ids]
    return out


__all__ = ["UnknownArgumentError", "check_encodable", "check_one_text", "check_ids", "check_positive", "check_texts", "extra_fields", "id_rows", "pad_rows"]
