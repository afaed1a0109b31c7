"""Which attention heads each tensor-parallel rank holds.

Rank r of tp takes the query heads [r * H/tp, (r + 1) * H/tp). Under grouped-query attention query head h reads kv
head h // g (g = H / KV). Where kv heads divide evenly (KV % tp == 0) every rank holds KV/tp of them. Where they do
not (Phi-4-mini: 24 query / 8 kv heads at tp=3; Phi-3-medium: 40 / 10 at tp=4) a rank still needs a uniform local
grouping, so that its attention is plain GQA over local heads: local query head i reads local kv head i // g'. The
largest g' for which consecutive runs of g' query heads never straddle a kv group on any rank is gcd(g, H/tp); a
rank then holds H/tp / g' kv heads, a kv head shared by two ranks (or by two local groups) is replicated.

    assign_heads(40, 10, tp=4, rank=0)  ->  q heads 0-9, kv heads [0, 0, 1, 1, 2] (g' = 2)
    assign_heads(24, 8, tp=3, rank=1)   ->  q heads 8-15, kv heads [2, 3, 3, 3, 4, 4, 4, 5] (g' = 1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class TensorParallelError(ValueError):
    """A tensor-parallel setting that cannot work: names the value, the limit and the fix."""


@dataclass(frozen=True)
class HeadShard:
    rank: int
    tp: int
    q_heads: range  # global query heads this rank holds, consecutive
    kv_heads: tuple[int, ...]  # global kv head of each local kv head (repeats where kv heads are replicated)

    @property
    def group(self) -> int:
        """Local query heads per local kv head."""
        return len(self.q_heads) // len(self.kv_heads)


def valid_tp_values(num_heads: int, limit: int | None = None) -> list[int]:
    """Every tp that splits `num_heads` query heads evenly (up to `limit`)."""
    top = num_heads if limit is None else min(num_heads, limit)
    return [t for t in range(1, top + 1) if num_heads % t == 0]


def check_tp(num_heads: int, num_kv_heads: int, tp: int) -> None:
    if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
        raise TensorParallelError(f"tp={tp!r} must be a positive integer")
    if num_kv_heads < 1 or num_heads % num_kv_heads:
        raise TensorParallelError(f"num_attention_heads={num_heads} is not a multiple of num_key_value_heads="
                                  f"{num_kv_heads}; the config is inconsistent")
    if num_heads % tp:
        raise TensorParallelError(
            f"tp={tp} does not divide num_attention_heads={num_heads} (num_key_value_heads={num_kv_heads}); valid tp "
            f"values for this model: {', '.join(map(str, valid_tp_values(num_heads)))}")


def assign_heads(num_heads: int, num_kv_heads: int, tp: int, rank: int) -> HeadShard:
    check_tp(num_heads, num_kv_heads, tp)
    if not 0 <= rank < tp:
        raise TensorParallelError(f"rank={rank} is outside [0, {tp})")
    local = num_heads // tp
    groups = num_heads // num_kv_heads  # g: query heads per kv head
    local_group = math.gcd(groups, local)  # g'
    first = rank * local
    kv = tuple((first + j * local_group) // groups for j in range(local // local_group))
    return HeadShard(rank, tp, range(first, first + local), kv)


def split_sizes(total: int, tp: int, align: int = 1) -> list[int]:
    """`total` rows in tp near-equal consecutive parts, the larger ones first, each a multiple of `align` (which
    must divide `total`)."""
    base, extra = divmod(total // align, tp)
    return [(base + (1 if r < extra else 0)) * align for r in range(tp)]


def alignment(total: int, tp: int) -> int:
    """The block an intermediate size is split in, so each part keeps whole int4 groups and the kernels' column
    multiples: the largest of 128, 64, 32, 16 that gives every rank an equal part; else the largest that divides it
    into at least tp blocks (parts differ by one block: 8192 at tp=3 -> 2816, 2688, 2688); else 1."""
    blocks = (128, 64, 32, 16)
    return next((a for a in blocks if total % (a * tp) == 0),
                next((a for a in blocks if total % a == 0 and total // a >= tp), 1))


def part(total: int, tp: int, rank: int, align: int = 1) -> tuple[int, int]:
    """[start, stop) of rank's part of `total` rows (`split_sizes`)."""
    sizes = split_sizes(total, tp, align)
    start = sum(sizes[:rank])
    return start, start + sizes[rank]
