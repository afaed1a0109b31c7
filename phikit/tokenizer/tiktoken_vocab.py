"""Build a byte-level BPE `tokenizers.Tokenizer` from a tiktoken rank file (Phi-4: cl100k_base, Phi-4-mini: o200k_base).

A `.tiktoken` file has one `base64(token bytes) rank` line per token; lower rank = earlier merge. tiktoken first looks
a whole pre-tokenized piece up in the ranks, then merges the lowest-rank pair. The equivalent BPE: vocab = ranks
(bytes shown through GPT-2's byte-to-unicode table), merges = every split of a token into two tokens, ordered by the
token's rank (transformers' converter does the same), and `ignore_merges=True` for the whole-piece lookup.
"""

from __future__ import annotations

import base64
import os

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from .byte_level import byte_to_unicode


class TiktokenError(ValueError):
    """A tiktoken rank file is malformed; the message names the file and line."""


def read_tiktoken_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """Token bytes -> rank from a `.tiktoken` file."""
    path = os.fspath(path)
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError as exc:
                raise TiktokenError(f"{path}:{lineno}: expected 'base64token rank', got {line[:60]!r}.") from exc
    return ranks


def tiktoken_to_tokenizer(ranks: dict[bytes, int], pattern: str,
                          added_tokens: list[tuple[int, AddedToken]] = ()) -> Tokenizer:
    """Byte-level BPE equal to tiktoken with `ranks` and split regex `pattern`, plus `(id, AddedToken)` tokens.

    Added tokens must come at ids past the ranks in increasing order (gaps are filled by unused placeholders, so
    ids match the checkpoint's, as in Phi-4-mini's tokenizer.json).
    """
    b2u = byte_to_unicode()

    def text(token: bytes) -> str:
        return "".join(b2u[b] for b in token)

    vocab = {text(tok): rank for tok, rank in ranks.items()}
    merges = []
    for tok, rank in ranks.items():
        for cut in range(1, len(tok)):
            left, right = tok[:cut], tok[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], text(left), text(right)))
    merges.sort()
    bpe = models.BPE(vocab=vocab, merges=[(m[3], m[4]) for m in merges], ignore_merges=True)
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    next_id = max(ranks.values()) + 1
    for idx, tok in sorted(added_tokens, key=lambda x: x[0]):
        if idx < next_id:
            raise TiktokenError(f"added token {tok.content!r} has id {idx}, inside the BPE ranks (< {next_id}).")
        while next_id < idx:  # reserved ids the checkpoint leaves unnamed
            tokenizer.add_tokens([AddedToken(f"<|reserved_{next_id}|>", special=True, normalized=False)])
            next_id += 1
        (tokenizer.add_special_tokens if tok.special else tokenizer.add_tokens)([tok])
        next_id += 1
    return tokenizer
