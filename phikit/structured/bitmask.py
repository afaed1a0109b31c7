"""Token bitmasks: int32 words [B, ceil(V / 32)], bit j of word w allowing id 32 w + j (llguidance's layout).

phikit applies them with its own code (a vectorised unpack), not llguidance's `apply_token_bitmask_inplace`,
which is a `torch.compile`d function: an inductor C++ build on its first CPU call.
"""

from __future__ import annotations

import sys

import torch

NEG_INF = float("-inf")
_LITTLE_ENDIAN = sys.byteorder == "little"
_SHIFTS = torch.arange(32, dtype=torch.int32)  # [32]
_BYTE_BITS = ((torch.arange(256)[:, None] >> torch.arange(8)) & 1).bool()  # [256, 8]: bit j of byte value b


def words(vocab_size: int) -> int:
    """Words per row of a bitmask for `vocab_size` ids."""
    return (vocab_size + 31) // 32


def allocate(rows: int, vocab_size: int) -> torch.Tensor:
    """An all-allowed bitmask [rows, words(vocab_size)] int32."""
    return torch.full((rows, words(vocab_size)), -1, dtype=torch.int32)


def limit_row(vocab_size: int, allowed_ids: int) -> torch.Tensor:
    """A bitmask row [words(vocab_size)] int32 that allows exactly the ids below `allowed_ids`: ANDed into every mask,
    it keeps the ids past the tokenizer (Phi's embedding is padded past its vocabulary) banned whatever the grammar
    library answers."""
    bits = torch.arange(words(vocab_size) * 32) < allowed_ids
    return pack(bits)


def pack(allowed: torch.Tensor) -> torch.Tensor:
    """allowed [..., 32 W] bool -> [..., W] int32 bitmask."""
    shaped = allowed.reshape(*allowed.shape[:-1], -1, 32).to(torch.int64)
    value = (shaped << _SHIFTS.to(torch.int64)).sum(-1)  # [..., W] in [0, 2^32)
    return torch.where(value >= 2**31, value - 2**32, value).to(torch.int32)


def unpack(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """bitmask [B, W] int32 -> allowed [B, vocab_size] bool: each byte looked up in a 256 x 8 table (ids 32 w + 8 k
    + j are bit j of byte k of word w, little-endian, as llguidance writes them)."""
    as_bytes = bitmask.contiguous().view(torch.uint8)  # [B, 4 W]
    if not _LITTLE_ENDIAN:
        as_bytes = as_bytes.view(bitmask.shape[0], -1, 4).flip(-1).reshape(bitmask.shape[0], -1)
    bits = _BYTE_BITS.index_select(0, as_bytes.reshape(-1).int())  # [B * 4 W, 8]
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab_size]


def apply_(scores: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """scores [B, V] float, bitmask [B, >= words(V)] -> scores with every disallowed id at -inf, in place."""
    if scores.dim() != 2 or bitmask.dim() != 2 or bitmask.shape[0] != scores.shape[0]:
        raise ValueError(f"apply_: scores [B, V] and bitmask [B, W] must have the same rows, got "
                         f"{tuple(scores.shape)} and {tuple(bitmask.shape)}")
    if bitmask.shape[1] * 32 < scores.shape[1]:
        raise ValueError(f"apply_: a bitmask of {bitmask.shape[1]} words covers {bitmask.shape[1] * 32} ids, fewer "
                         f"than the {scores.shape[1]} scores")
    banned = unpack(bitmask, scores.shape[1]).to(scores.device).logical_not_()
    return scores.masked_fill_(banned, NEG_INF)
