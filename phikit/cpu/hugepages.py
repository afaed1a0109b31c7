"""Ask the kernel for transparent huge pages under a large CPU tensor before it is first written.

Decoding streams every weight once per token; with 4 KB pages the hardware prefetchers stop at every page boundary
and the TLB misses every 4 KB. On hosts whose THP mode is `madvise` (the 2-core Zen 4 development host), memory
gets 2 MB pages only where a process asks with madvise(MADV_HUGEPAGE); PyTorch asks only under
THP_MEM_ALLOC_ENABLE=1. Advising the weights phikit allocates (private copies of checkpoint tensors, quantized
weights) made the bf16 matrix-vector kernel 3-11% faster there (`python benchmarks/kernels.py`). Best effort: no-op off Linux/glibc, for small tensors, or
where the call fails (the memory simply keeps 4 KB pages).
"""

from __future__ import annotations

import ctypes
import functools
import sys

import torch

HUGE = 2 << 20
MADV_HUGEPAGE = 14  # linux/mman.h


@functools.lru_cache(maxsize=None)
def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return fn


def advise(tensor: torch.Tensor) -> bool:
    """madvise(MADV_HUGEPAGE) over the 2 MB-aligned pages inside `tensor`'s bytes (CPU tensors of 4 MB or more);
    whether the kernel took the advice."""
    madvise = _madvise()
    nbytes = tensor.numel() * tensor.element_size()
    if madvise is None or tensor.device.type != "cpu" or nbytes < 2 * HUGE:
        return False
    start = -(-tensor.data_ptr() // HUGE) * HUGE
    stop = (tensor.data_ptr() + nbytes) // HUGE * HUGE
    return stop > start and madvise(start, stop - start, MADV_HUGEPAGE) == 0


def empty_like(tensor: torch.Tensor) -> torch.Tensor:
    """torch.empty_like(tensor) with huge pages advised before anything is written to it."""
    out = torch.empty_like(tensor)
    advise(out)
    return out
