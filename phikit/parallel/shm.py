"""A shared-memory all-reduce for ranks on one machine: gloo's all-reduce of one decode step's hidden state (8 KB)
took 1.2-1.7 ms on a 2-core VM whose loopback round trip is 22 us, 24-48 times per token. Here each rank copies its
partial sum into its own slot of a shared buffer, raises its "arrived" counter, waits for every rank's, and sums
the slots in rank order (so every rank gets the same bits), then raises its "done" counter. Two buffers alternate;
a rank writes into one only after every rank is done reading it from two calls before.

    slot layout (bytes):  counters [2, tp] int64 (arrived, done)  |  data [2 parities, tp ranks, capacity] fp32

Chosen at load (`TensorParallel.choose_reducer`) where every rank is on this host and the CPU orders stores as
x86-64 does (a counter is raised only after the data it announces is visible); anywhere else, and for tensors past
the capacity, gloo runs as before. PHIKIT_TP_SHM=0 turns it off.
"""

from __future__ import annotations

import mmap
import os
import socket
import time
import uuid

import torch
import torch.distributed as dist

CAPACITY = 1 << 20  # fp32 elements per slot (4 MB): a prefill chunk of 341 tokens at hidden 3072
SPINS_BEFORE_YIELD = 2000
DEAD_PEER_S = 120.0  # inside one forward every rank is busy: a wait this long means a rank is gone


def same_machine(group) -> bool:
    """Whether every rank of `group` runs on this machine (same host name and boot id)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    mine = (socket.gethostname(), boot)
    everyone: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, mine, group=group)
    return all(o == mine for o in everyone)


def create(group, rank: int, tp: int, capacity: int = CAPACITY) -> "ShmAllReduce | None":
    """The shared buffer for `group`, or None where a rank could not create or map it (every rank agrees)."""
    header = 2 * tp * 8
    data_offset = (header + 63) // 64 * 64
    size = data_offset + 2 * tp * capacity * 4
    path = None
    if rank == 0:
        try:
            path = f"/dev/shm/phikit-tp-{uuid.uuid4().hex}"
            with open(path, "wb") as f:
                f.truncate(size)
        except OSError:
            path = None
    box = [path]
    dist.broadcast_object_list(box, src=dist.get_global_rank(group, 0), group=group)
    path = box[0]
    mapped = None
    if path is not None:
        try:
            with open(path, "r+b") as f:
                mapped = mmap.mmap(f.fileno(), size)
        except OSError:
            mapped = None
    ok: list = [None] * tp
    dist.all_gather_object(ok, mapped is not None, group=group)
    if rank == 0 and path is not None:
        os.unlink(path)  # every rank has mapped it (or given up): nothing is left behind whatever happens next
    if not all(ok):
        if mapped is not None:
            mapped.close()
        return None
    return ShmAllReduce(mapped, rank, tp, capacity, header, data_offset)


class ShmAllReduce:
    def __init__(self, mapped: mmap.mmap, rank: int, tp: int, capacity: int, header: int, data_offset: int) -> None:
        self.rank, self.tp, self.capacity = rank, tp, capacity
        self._map = mapped
        self._counters = memoryview(mapped)[:header].cast("q")  # [arrived x tp, done x tp]
        data = torch.frombuffer(mapped, dtype=torch.float32, count=2 * tp * capacity, offset=data_offset)
        self._slots = data.view(2, tp, capacity)
        self._seq = 0

    def fits(self, x: torch.Tensor) -> bool:
        return x.dtype == torch.float32 and x.device.type == "cpu" and x.numel() <= self.capacity

    def _wait(self, base: int, at_least: int) -> None:
        counters, spins, start = self._counters, 0, None
        for r in range(self.tp):
            while counters[base + r] < at_least:
                spins += 1
                if spins % SPINS_BEFORE_YIELD == 0:
                    os.sched_yield()
                    now = time.monotonic()
                    start = start or now
                    if now - start > DEAD_PEER_S:
                        raise RuntimeError(f"tensor-parallel rank {r} has not reached all-reduce {at_least} after "
                                           f"{DEAD_PEER_S:g} s; it has died or hangs")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x fp32 (numel <= capacity) -> the sum over ranks, written into x and returned."""
        self._seq += 1
        seq, tp, n = self._seq, self.tp, x.numel()
        parity = seq % 2
        self._wait(tp, seq - 2)  # every rank has finished reading this parity's slots from two calls ago
        flat = x.reshape(-1)
        slots = self._slots[parity, :, :n]
        slots[self.rank].copy_(flat)
        self._counters[self.rank] = seq  # x86-64 keeps stores in order: the data is visible before the counter
        self._wait(0, seq)
        torch.sum(slots, dim=0, out=flat) if tp > 2 else torch.add(slots[0], slots[1], out=flat)
        self._counters[tp + self.rank] = seq
        return x

    def close(self) -> None:
        self._slots = None
        self._counters.release()
        self._map.close()
