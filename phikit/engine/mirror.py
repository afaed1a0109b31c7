"""Every rank of a tensor-parallel model runs the same step: the engine (rank 0) broadcasts each operation on its
KV pool and model before running it, and each worker rank runs the same operation on its own pool, in the same
order. Scheduling, sampling and HTTP stay on rank 0; a worker holds only its shard and its slice of the cache.

    rank 0:   Engine(model, tokenizer, mirror=Broadcast(group))   # each prefill / decode / pool change sent first
    rank k:   follow(Engine(model, None, parallel=..., ctx_size=...), group)   # until rank 0 sends "stop"
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
import torch.distributed as dist

from .forward import decode, packed, prefill
from .slots import SlotPool

log = logging.getLogger("phikit.engine")

STOP = "stop"


def _pin(model, pool: SlotPool, slot: int, long: bool) -> None:
    pool.pinned_long[slot] = long


# the operations that change a pool or run the model, by name: rank 0's engine calls them through `Engine._run`
OPERATIONS: dict[str, Callable[..., Any]] = {
    "prefill": prefill,
    "decode": decode,
    "packed": packed,
    "copy_prefix": lambda model, pool, src, dst, n: pool.copy_prefix(src, dst, n),
    "reset": lambda model, pool, slot, keep=0: pool.reset(slot, keep),
    "pin": _pin,
}


class Broadcast:
    """Rank 0's mirror: sends (operation, arguments) to every rank of `group` (plain Python values)."""

    def __init__(self, group: Any = None, src: int = 0) -> None:
        self.group, self.src = group, src

    def __call__(self, op: str, args: tuple) -> None:
        dist.broadcast_object_list([(op, args)], src=self.src, group=self.group)


@torch.no_grad()
def follow(engine, group: Any = None, src: int = 0) -> int:
    """A worker rank: run what rank `src` broadcasts on this engine's model and pool until it sends "stop";
    returns how many operations ran. A failing operation fails here as it does on rank 0, which reports it."""
    count = 0
    while True:
        message: list = [None]
        dist.broadcast_object_list(message, src=src, group=group)
        op, args = message[0]
        if op == STOP:
            return count
        try:
            OPERATIONS[op](engine.model, engine.pool, *args)
        except Exception as e:  # noqa: BLE001 - the same input fails on rank 0, which ends that request
            log.debug("mirrored %s failed: %s", op, e)
        count += 1
