"""Lossless 12-bit bf16 weights for CPU decoding: the same bf16 values in 3/4 of the memory traffic.

A batch-1 decode step reads every weight once, and phikit's bf16 matrix-vector loop already reads at the memory's
pace, so the one way further that keeps bf16's numbers is fewer bytes per weight. Within 64 consecutive weights of
a row, exponents span few octaves: `native/lossless.c` keeps each weight's sign and mantissa in a byte and its
exponent as a 4-bit code above the group's base, with the rare weight outside that range (~1 in 10^4) kept exactly
in a side list. Nothing is rounded: `dequantize()` gives back the original tensor bit for bit, and the decode kernel
rebuilds each chunk of 32 weights in registers and feeds the same dot-product instructions as the plain bf16 kernel,
in the same order, so its outputs equal that kernel's bit for bit. On the 2-core Zen 4 host a matrix-vector product
runs 1.16-1.24x faster than the plain bf16 kernel (`python benchmarks/kernels.py`; `benchmarks/RESULTS.md`).

    model = Phi3ForCausalLM.from_pretrained(path, torch_dtype=torch.bfloat16,
                                            quantization_config=phikit.LosslessBf16Config())

It is a weight format, not a quantization: `state_dict()` gives plain bf16 `weight` tensors (so `save_pretrained`
writes an ordinary bf16 checkpoint, and `config.json` records nothing), and `load_state_dict` takes them. The modules
are no longer `nn.Linear`, so LoRA and training want the plain model; the weights live on the CPU in bf16 only (a
move or a dtype change raises, naming the fix). Layers the kernel cannot take (rows not a multiple of 8, columns not
a multiple of 64) and a head tied to the embeddings stay plain.

Prefills (more than `native_kernels.MAX_ROWS` rows) rebuild cache-sized slices of rows and multiply them with the
same GEMM a plain bf16 linear uses here (`cpu_kernels`): equal to the plain model up to the GEMM's summation order.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..cpu import kernels as native_kernels
from ..cpu.gemm import bf16_slice_rows, gemm_via_fp32, prefers_fp32_gemm, slice_gemm_rows

BLOCK_ROWS, GROUP = 8, 64  # the kernel's row block and column group (native/lossless.c)


@dataclass(frozen=True)
class LosslessBf16Config:
    """Hold bf16 Linear weights in phikit's lossless 12-bit form (module docstring); pass as `quantization_config`.

    `required=True` (default): a load where it cannot apply (no AVX512-BF16 kernels, weights not bf16, a device
    other than the CPU) raises, naming the fix. `required=False` (the CLI's default): such a load keeps the plain
    layout, which holds the very same values."""

    required: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"quant_method": "phikit", "bits": 16, "scheme": "lossless_bf16_12bit"}


def applicable(config: LosslessBf16Config, dtype: torch.dtype, device: torch.device) -> LosslessBf16Config | None:
    """`config` where a load to `dtype` on `device` can hold its weights in the 12-bit form; None where it cannot
    and the config does not require it; raises where it does."""
    if dtype == torch.bfloat16 and torch.device(device).type == "cpu" and native_kernels.has_c12():
        return config
    if not config.required:
        return None
    check_available()
    raise ValueError(f"LosslessBf16Config holds bf16 weights on the CPU; this load is {dtype} on {device}: load with "
                     f"torch_dtype=torch.bfloat16 on the CPU, or without quantization_config")


def check_available() -> None:
    """Raise, naming the fix, where the 12-bit kernels cannot run (they need AVX512-BF16 and a C compiler)."""
    if not native_kernels.has_c12():
        reason = native_kernels.build_error or "this CPU has no AVX512-BF16 dot products"
        raise RuntimeError(f"LosslessBf16Config needs phikit's native 12-bit kernels, which do not run here ({reason});"
                           f" load without quantization_config for the same bf16 numbers in the plain layout")


def supported(out_features: int, in_features: int) -> bool:
    """Whether a [out_features, in_features] weight fits the kernel's blocks."""
    return out_features % BLOCK_ROWS == 0 and in_features % GROUP == 0 and out_features > 0 and in_features > 0


class LosslessBf16Linear(nn.Module):
    """A bf16 linear layer whose weight [N, K] is held in the lossless 12-bit form (module docstring): buffers
    `data` uint8 [N/8, K/64, 768], `bases` uint8 [N/8, K/64, 8], `aux` int64 [N/8 + 1 + exceptions] (not saved:
    `state_dict()` gives `weight` bf16 [N, K]); `bias` [N] bf16 or None."""

    weight_in_buffers = True  # counted by num_parameters()

    def __init__(self, in_features: int, out_features: int, bias: bool | torch.Tensor | None = True,
                 device: Any = None) -> None:
        super().__init__()
        if not supported(out_features, in_features):
            raise ValueError(f"LosslessBf16Linear({in_features}, {out_features}): out_features must be a multiple of "
                             f"{BLOCK_ROWS} and in_features of {GROUP}; keep this layer an nn.Linear")
        self.in_features, self.out_features = in_features, out_features
        b, g = out_features // BLOCK_ROWS, in_features // GROUP
        self.register_buffer("data", torch.zeros(b, g, 768, dtype=torch.uint8, device=device), persistent=False)
        self.register_buffer("bases", torch.zeros(b, g, 8, dtype=torch.uint8, device=device), persistent=False)
        self.register_buffer("aux", torch.zeros(b + 1, dtype=torch.int64, device=device), persistent=False)
        if isinstance(bias, torch.Tensor):
            self.bias = bias if isinstance(bias, nn.Parameter) else nn.Parameter(bias, requires_grad=False)
        elif bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=torch.bfloat16, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self.register_state_dict_post_hook(_weight_in_state)

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    rows_done: Callable[[int, int], None] | None = None) -> "LosslessBf16Linear":
        """The layer holding `weight` (bf16 [N, K] on the CPU) in the 12-bit form; `bias` is adopted. `rows_done(a,
        b)` is called as rows [a, b) of `weight` are no longer needed (a loader drops their file pages)."""
        n, k = weight.shape
        module = cls(k, n, bias if bias is not None else False, device="meta")  # set_weight gives the memory
        module.set_weight(weight, rows_done)
        return module

    def set_weight(self, weight: torch.Tensor, rows_done: Callable[[int, int], None] | None = None) -> None:
        """Encode `weight` (bf16 [N, K] on the CPU) into this layer's buffers."""
        expected = (self.out_features, self.in_features)
        if weight.dtype != torch.bfloat16 or weight.device.type != "cpu" or tuple(weight.shape) != expected:
            raise ValueError(f"LosslessBf16Linear holds bf16 CPU weights of shape {expected}; got {weight.dtype} "
                             f"{tuple(weight.shape)} on {weight.device} (load with torch_dtype=torch.bfloat16 on the "
                             f"CPU, or without quantization_config)")
        check_available()
        data, bases, aux = native_kernels.c12_encode(weight.detach().contiguous(), rows_done)
        self.data, self.bases, self.aux = data, bases, aux

    @property
    def exceptions(self) -> int:
        """How many weights sit outside their group's 15 octaves and are kept in the side list."""
        return self.aux.numel() - self.out_features // BLOCK_ROWS - 1

    def rows(self, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """The original bf16 weight's rows [start, stop) (into `out`, bf16 [stop - start, K], where given)."""
        return native_kernels.c12_decode_rows(self.data, self.bases, self.aux, start, stop, out)

    def dequantize(self) -> torch.Tensor:
        """The weight bf16 [N, K], bit for bit as it was encoded (a new tensor)."""
        return self.rows(0, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., K] bf16 -> [..., N]."""
        x2 = x.reshape(-1, self.in_features)
        bias = self.bias
        grad = torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad))
        if grad or x.dtype != torch.bfloat16 or x.device.type != "cpu" or (bias is not None and
                                                                          bias.dtype != torch.bfloat16):
            y = F.linear(x2, self.dequantize(), bias)  # autograd, or other dtypes: as a plain bf16 nn.Linear would
        elif x2.shape[0] <= native_kernels.MAX_ROWS:
            y = native_kernels.linear_c12(x2.contiguous(), self.data, self.bases, self.aux, bias)
        elif prefers_fp32_gemm(x2.shape[0]):
            y = gemm_via_fp32(x2, lambda a, b: self.rows(a, b).float(), self.out_features, bias)
        else:
            y = self._gemm(x2.contiguous(), bias)
        return y.reshape(*x.shape[:-1], self.out_features)

    def _gemm(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x [M, K] -> [M, N] through the bf16 GEMM on the rebuilt weight: row slices of about 4 MB
        (`gemm.bf16_slice_rows`) rebuilt one at a time into a reused per-thread buffer (fresh memory each time cost more
        in page faults than the rebuilding), each multiplied by x 256 rows at a time (`gemm.slice_gemm_rows`), the bias
        added inside the GEMM as F.linear adds it. The same form as the quantized formats' prefill: 8192 x 2048, ms a
        weight against plain bf16's (Zen 4 host, 6 weights, 7 alternating rounds): 512 rows 0.953x where the whole
        weight rebuilt for one GEMM, as before, took 0.885x; 32 rows 0.71x / 0.69x, 128 rows 0.86x either way (the
        rebuilding is the rest)."""
        n, k = self.out_features, self.in_features
        out = x.new_empty(x.shape[0], n)
        step = bf16_slice_rows(k)  # a multiple of 1024, so of BLOCK_ROWS
        buffer = _scratch(min(n, step) * k)
        for a in range(0, n, step):
            b = min(n, a + step)
            w = self.rows(a, b, buffer[:(b - a) * k].view(b - a, k))
            rows = slice_gemm_rows(x.shape[0])
            for m0 in range(0, x.shape[0], rows):
                xs, o = x[m0:m0 + rows], out[m0:m0 + rows, a:b]
                if bias is None:
                    torch.mm(xs, w.t(), out=o)
                else:
                    torch.addmm(bias[a:b], xs, w.t(), out=o)  # as F.linear with a bias computes it
        return out

    def _apply(self, fn, recurse: bool = True):
        probe = fn(torch.empty(0, dtype=torch.bfloat16))
        if probe.device.type != "cpu" or probe.dtype != torch.bfloat16:
            raise RuntimeError(f"LosslessBf16Linear holds its weight in phikit's 12-bit CPU form, which cannot move to "
                               f"{probe.device} / {probe.dtype}; reload the model without quantization_config (plain "
                               f"bf16 weights) to move or cast it")
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        key = prefix + "weight"
        weight = state_dict.get(key)
        rest = {name: value for name, value in state_dict.items() if name != key}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if weight is None:
            missing_keys.append(key)
        elif tuple(weight.shape) != (self.out_features, self.in_features):
            error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(weight.shape)}, the "
                              f"shape in current model is {(self.out_features, self.in_features)}.")
        else:
            with torch.no_grad():
                self.set_weight(weight.to(device="cpu", dtype=torch.bfloat16))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"exceptions={self.exceptions}")


_local = threading.local()


def _scratch(numel: int) -> torch.Tensor:
    """A bf16 buffer of at least `numel` values, kept per thread for the prefill slices."""
    buffer = getattr(_local, "buffer", None)
    if buffer is None or buffer.numel() < numel:
        buffer = _local.buffer = torch.empty(numel, dtype=torch.bfloat16)
    return buffer


def _weight_in_state(module: LosslessBf16Linear, state: dict, prefix: str, _meta: Any) -> None:
    state[prefix + "weight"] = module.dequantize()
    if prefix + "bias" in state:  # keep nn.Linear's key order: weight, then bias
        state[prefix + "bias"] = state.pop(prefix + "bias")


__all__ = ["LosslessBf16Config", "LosslessBf16Linear", "applicable", "check_available", "supported"]
