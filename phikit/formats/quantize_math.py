"""The math of phikit's weight-only quantization as pure functions: quantize, dequantize, and the int4 nibble
packing (portable form for checkpoints, the CPU kernel's ISA-specific form in memory). See quantize.py."""

from __future__ import annotations

import math

import torch

_OPS = torch.ops.aten
INT4_GROUP_SIZES = (32, 64, 128, 256)

def quantize_int8(weight: torch.Tensor, row_absmax: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] -> (q int8 [N, K], scales [N] in weight's dtype). Rounds against the stored scale, so
    dequantization reproduces exactly the values the error was minimised for. `row_absmax` [N] (fp32): each row's
    largest magnitude over more columns than `weight` holds (a tensor-parallel rank's columns of a whole row), so
    the scales are the whole row's."""
    w = weight.detach().float()
    absmax = w.abs().amax(dim=1) if row_absmax is None else row_absmax.float()
    scales = (absmax / 127.0).clamp(min=1e-12).to(weight.dtype)
    q = torch.round(w / scales.float()[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """(q [N, K], scales [N]) -> weight [N, K] in scales' dtype."""
    return (q.float() * scales.float()[:, None]).to(scales.dtype)


def pack_int8_native(q: torch.Tensor) -> torch.Tensor:
    """q int8 [N, K] (N % 4 == 0, K % 64 == 0) -> phikit's native kernel layout, int8 [N, K] holding blocks of 4 rows
    interleaved 64 columns at a time, [N/4, K/64, 4, 64], so the kernel streams one contiguous run of memory per
    thread (`native/kernels.c`). Rows 4i..4i+3 stay in rows 4i..4i+3 of the result."""
    n, k = q.shape
    return q.reshape(n // 4, 4, k // 64, 64).transpose(1, 2).reshape(n, k)


def unpack_int8_native(packed: torch.Tensor) -> torch.Tensor:
    """Invert `pack_int8_native` (on whole 4-row blocks): int8 [N, K] -> q int8 [N, K]."""
    n, k = packed.shape
    return packed.reshape(n // 4, k // 64, 4, 64).transpose(1, 2).reshape(n, k)


def quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] -> (q uint8 [N, K] in [0, 15], scales_and_zeros [K/g, N, 2] in weight's dtype)."""
    n, k = weight.shape
    if k % group_size:
        raise ValueError(f"in_features={k} is not a multiple of group_size={group_size}; pick a group_size in "
                         f"{INT4_GROUP_SIZES} that divides every quantized layer's in_features, or skip this layer")
    w = weight.detach().float().reshape(n, k // group_size, group_size)  # [N, G, g]
    lo, hi = w.amin(dim=-1), w.amax(dim=-1)  # [N, G]
    scale = ((hi - lo).clamp(min=1e-6) / 15.0).to(weight.dtype)
    zero = (lo + 8.0 * scale.float()).to(weight.dtype)
    s, z = scale.float()[..., None], zero.float()[..., None]
    q = torch.round((w - (z - 8.0 * s)) / s).clamp(0, 15).to(torch.uint8).reshape(n, k)
    return q, torch.stack((scale, zero), dim=-1).transpose(0, 1).contiguous()  # [G, N, 2]


def dequantize_int4(q: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """(q [N, K] in [0, 15], scales_and_zeros [K/g, N, 2]) -> weight [N, K] in the scales' dtype."""
    n, k = q.shape
    sz = scales_and_zeros.float().transpose(0, 1)  # [N, G, 2]
    w = (q.float().reshape(n, k // group_size, group_size) - 8.0) * sz[..., :1] + sz[..., 1:]
    return w.reshape(n, k).to(scales_and_zeros.dtype)


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """q [N, K] values 0..15 -> portable uint8 [N, K/2]: column 2j in the low nibble, 2j+1 in the high one."""
    q = q.to(torch.uint8)
    return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Portable uint8 [N, K/2] -> q uint8 [N, K]."""
    return torch.stack((packed & 15, packed >> 4), dim=-1).reshape(packed.shape[0], -1)


def pack_int4_native(q: torch.Tensor) -> torch.Tensor:
    """q [N, K] values 0..15 (N % 4 == 0, K % 128 == 0) -> phikit's native kernel layout, uint8 [N, K/2]: in each
    128-column chunk, little-endian 16-bit word j holds columns j, 32 + j, 64 + j, 96 + j in nibbles 0, 1, 2, 3, and
    blocks of 4 rows are interleaved chunk by chunk, [N/4, K/128, 4, 64 bytes] (`native/kernels.c`)."""
    n, k = q.shape
    q = q.to(torch.uint8).reshape(n, k // 128, 4, 32)
    low, high = q[:, :, 0] | (q[:, :, 1] << 4), q[:, :, 2] | (q[:, :, 3] << 4)  # [N, K/128, 32] bytes of each word
    chunks = torch.stack((low, high), dim=-1).reshape(n // 4, 4, k // 128, 64)
    return chunks.transpose(1, 2).reshape(n, k // 2)


def unpack_int4_native(packed: torch.Tensor) -> torch.Tensor:
    """Invert `pack_int4_native`: uint8 [N, K/2] -> q uint8 [N, K]."""
    n, kb = packed.shape
    words = packed.reshape(n // 4, kb // 64, 4, 64).transpose(1, 2).reshape(n, kb // 64, 32, 2)
    low, high = words[..., 0], words[..., 1]
    return torch.stack((low & 15, low >> 4, high & 15, high >> 4), dim=2).reshape(n, kb * 2)


def _cpu_pack(q: torch.Tensor) -> torch.Tensor:
    """q [N, K] (0..15) -> the CPU kernel's ISA-specific layout, uint8 [N, K/2]."""
    return _OPS._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 1)


def _probe_slots(n: int, k: int) -> torch.Tensor:
    """Element (row, col) -> nibble slot (2 * byte + high) in `_cpu_pack`'s output, int64 [n, k], found without
    knowing the ISA's layout: packing only permutes nibbles, so packing each element's index, 4 bits per probe,
    shows where every element goes."""
    index = torch.arange(n * k, dtype=torch.int64)
    where = torch.zeros(n * k, dtype=torch.int64)  # slot -> element
    for p in range(max(1, math.ceil(math.log2(n * k) / 4))):
        digits = _cpu_pack(((index >> (4 * p)) & 15).reshape(n, k))
        where |= unpack_nibbles(digits).reshape(-1).long() << (4 * p)
    slots = torch.empty(n * k, dtype=torch.int64)
    slots[where] = index
    return slots.reshape(n, k)


def _cpu_unpack(packed: torch.Tensor, rows_per_chunk: int = 1024) -> torch.Tensor:
    """Invert `_cpu_pack`: uint8 [N, K/2] in the kernel layout -> q uint8 [N, K]. Used when saving, not per token.

    The kernel lays each block of rows out column after column, so an element's slot is a(row) * K + col * b(row)
    + e(row); a, b, e come from probing K = 2 and K = 4 (cheap), and a repack checks the result. Should a future
    layout break that form, probing the full shape still inverts any nibble permutation (slower)."""
    n, k = packed.shape[0], packed.shape[1] * 2
    nibbles = unpack_nibbles(packed).reshape(-1)  # slot order
    s2, s4 = _probe_slots(n, 2), _probe_slots(n, 4)
    b = s2[:, 1] - s2[:, 0]
    a = (s4[:, 0] - s2[:, 0]) // 2
    e = s2[:, 0] - 2 * a
    q = torch.empty(n, k, dtype=torch.uint8)
    cols = torch.arange(k, dtype=torch.int64)
    for r0 in range(0, n, rows_per_chunk):  # bounded temporary: [chunk, K] int64 slots
        r = slice(r0, r0 + rows_per_chunk)
        slots = (a[r] * k + e[r])[:, None] + cols[None, :] * b[r][:, None]
        q[r] = nibbles[slots.clamp(0, n * k - 1)]
    if torch.equal(_cpu_pack(q), packed):
        return q
    q = torch.empty(n * k, dtype=torch.uint8)
    q[:] = nibbles[_probe_slots(n, k).reshape(-1)]
    q = q.reshape(n, k)
    if not torch.equal(_cpu_pack(q), packed):  # internal invariant of the probe method
        raise RuntimeError("this torch build's int4 CPU packing is not a nibble permutation; phikit cannot save "
                           "its int4 weights portably here (please report this with your torch version and CPU)")
    return q
