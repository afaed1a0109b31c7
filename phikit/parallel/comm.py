"""The collectives a tensor-parallel forward runs: one all-reduce per residual branch (the layer's `reduce`) and
the gather of the vocabulary-sharded logits (a forward hook on `lm_head`). Each counts its calls and seconds, so a
benchmark can state what communication costs per token."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from . import shm
from .heads import split_sizes
from .shm import ShmAllReduce


@dataclass
class CommStats:
    all_reduce_calls: int = 0
    all_reduce_s: float = 0.0
    gather_calls: int = 0
    gather_s: float = 0.0

    def reset(self) -> None:
        self.all_reduce_calls = self.gather_calls = 0
        self.all_reduce_s = self.gather_s = 0.0


@dataclass
class TensorParallel:
    """A model's place in its tensor-parallel group (`model.tp`)."""

    group: object  # a torch.distributed ProcessGroup
    rank: int
    tp: int
    # parameter -> (checkpoint bytes this rank copied while loading it, bytes of the whole tensor)
    reads: dict[str, tuple[int, int]] = field(default_factory=dict)
    stats: CommStats = field(default_factory=CommStats)
    shm: ShmAllReduce | None = None  # the shared-memory all-reduce where it was chosen at load (shm.py)

    def choose_reducer(self, device: torch.device) -> None:
        """At load: the shared-memory all-reduce where every rank is on this x86-64 machine (all ranks decide
        alike), else gloo / NCCL's."""
        if (self.tp > 1 and device.type == "cpu" and platform.machine().lower() in ("x86_64", "amd64")
                and os.environ.get("PHIKIT_TP_SHM", "1") != "0" and shm.same_machine(self.group)):
            self.shm = shm.create(self.group, self.rank, self.tp)

    @property
    def reducer(self) -> str:
        return "shared memory" if self.shm is not None else dist.get_backend(self.group)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of each rank's partial x [..., hidden] (a new tensor where autograd needs one)."""
        start = time.perf_counter()
        dtype = x.dtype
        if dtype in (torch.bfloat16, torch.float16) and x.device.type == "cpu":
            x = x.float()  # summed in fp32 and rounded once, as a whole model's fp32-accumulated product is
        if x.requires_grad:
            from torch.distributed.nn.functional import all_reduce

            x = all_reduce(x, group=self.group)
        elif self.shm is not None and self.shm.fits(x):
            x = self.shm(x.contiguous())
        else:
            x = x.contiguous()
            dist.all_reduce(x, group=self.group)
        x = x.to(dtype)
        self.stats.all_reduce_calls += 1
        self.stats.all_reduce_s += time.perf_counter() - start
        return x

    def row_absmax(self, columns: torch.Tensor) -> torch.Tensor:
        """columns [N, K/tp] of a column-sharded weight -> each whole row's largest magnitude [N] (fp32), so a
        rank's int8 scales equal the whole model's."""
        absmax = columns.detach().abs().amax(dim=1).float().contiguous()
        dist.all_reduce(absmax, op=dist.ReduceOp.MAX, group=self.group)
        return absmax

    def gather_last(self, x: torch.Tensor, total: int) -> torch.Tensor:
        """x [..., this rank's part of `total`] -> [..., total]: the parts of every rank in rank order."""
        start = time.perf_counter()
        sizes = split_sizes(total, self.tp)
        width = sizes[0]
        if x.shape[-1] < width:  # parts differ by at most one: pad to the widest for the collective
            x = torch.nn.functional.pad(x, (0, width - x.shape[-1]))
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.tp)]
        dist.all_gather(parts, x, group=self.group)
        out = torch.cat([p[..., :n] for p, n in zip(parts, sizes)], dim=-1)
        self.stats.gather_calls += 1
        self.stats.gather_s += time.perf_counter() - start
        return out


class BranchReduce:
    """A decoder layer's `reduce`: the all-reduce of one residual branch's partial sums."""

    def __init__(self, tp: TensorParallel) -> None:
        self.tp = tp

    def __call__(self, partial: torch.Tensor) -> torch.Tensor:
        return self.tp.all_reduce(partial)


class VocabGather:
    """A forward hook on `lm_head` (whatever class its swap made it): this rank's logits [..., V/tp] -> [..., V]."""

    def __init__(self, tp: TensorParallel, vocab: int) -> None:
        self.tp, self.vocab = tp, vocab

    def __call__(self, module, inputs, output: torch.Tensor) -> torch.Tensor:
        return self.tp.gather_last(output, self.vocab)
