"""Weight-only quantization as a pass over a built model: int8 per output channel, int4 group-wise.

The model file knows nothing of this: `quantize_model` swaps `nn.Linear` modules (fused `qkv_proj` / `gate_up_proj`
and every PhiMoE expert included) for `Int8Linear` / `Int4Linear` of the same shapes and bias. Loaders quantize
tensor by tensor with `StreamingQuantizer`, so peak memory stays near the quantized size.

Formats (W [N, K] = [out_features, in_features]):

* int8: symmetric per output channel. scale[n] = max|W[n]| / 127, q = round(W / scale) in [-127, 127]. Checkpoints
  store q int8 [N, K] row-major (portable); bf16 modules on CPUs with the native kernels hold phikit's blocked
  layout in memory (`Int8Linear`), others run `aten._weight_int8pack_mm` on the portable form.
* int4: asymmetric per group of `group_size` input columns (gpt-fast / torchao "tinygemm" form). Per group
  scale = (max - min) / 15 and zero = min + 8 * scale, q = round((W - min) / scale) in [0, 15], and
  W ~ (q - 8) * scale + zero. `scales_and_zeros` is [K / group_size, N, 2] (scale, zero), the layout of
  `aten._weight_int4pack_mm_for_cpu`. Checkpoints store a portable form, `qweight` uint8 [N, K / 2] with column 2j
  in the low nibble and 2j+1 in the high one, and modules repack it for the kernel that runs it when they are placed
  on the CPU: phikit's native kernel (`native/kernels.c`: bf16 dot-product instructions; on the 2-core Zen 4 host one
  weight streams at 23-25 GB/s against aten's ~19; `benchmarks/RESULTS.md`) for bf16 models on CPUs with
  AVX512-BF16, else aten's (whose layout depends on the ISA: AVX-512 packs rows n and n+32 into one byte, AVX2 n and
  n+16).

Kernel constraints (torch 2.13, CPU): native int4 needs N % 4 == 0, K % 128 == 0, group_size in {64, 128, 256};
aten's int4 needs N % 16 == 0 and group_size in {32, 64, 128, 256} with K divisible by it; native int8 needs
N % 4 == 0, K % 64 == 0 and bf16 scales, aten's int8 nothing. A layer no int4 kernel takes, and any layer off the
CPU, runs the generic fallback: dequantize the weight, then `F.linear` (same numbers, more memory traffic).

The head: `lm_head` is the most sensitive matrix and, with a 32k-51k vocabulary, 7-14% of a small model's bytes, read
at every token. It is quantized to int8 per channel under either config (`HEAD_INT8`), as llama.cpp keeps its output
matrix at 6 bits or more in 4-bit files; left in bf16 it took 14 ms of a 72 ms int4 phi-1.5 step. A head tied to
the embedding (Phi-4-mini) is never quantized: that would untie it. Pass `skip=("lm_head", ...)` to keep it in float.

Default skip list: classification `score` heads and the PhiMoE router `block_sparse_moe.gate` (tiny; routing
decisions flip on small errors). Embeddings are never quantized: a lookup reads one row per token, so they cost
memory, not time.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..cpu import hugepages
from . import lossless
from ..cpu import kernels as native_kernels
from ..cpu.gemm import FP32_GEMM_MIN_ROWS, gemm_dequantized, is_plain_linear
from .lossless import LosslessBf16Config, LosslessBf16Linear
from .quantize_math import (INT4_GROUP_SIZES, _cpu_pack, _cpu_unpack, _probe_slots,  # noqa: F401 (re-exported)
                            dequantize_int4, dequantize_int8, pack_int4_native, pack_int8_native, pack_nibbles,
                            quantize_int4, quantize_int8, unpack_int4_native, unpack_int8_native, unpack_nibbles)

DEFAULT_SKIP = ("score", "block_sparse_moe.gate")
HEAD_INT8 = ("lm_head",)  # quantized to int8 per channel whatever the config (module docstring)
# Rows of x below which the native int8 kernel beats oneDNN's bf16 GEMM on natively dequantized slices (2-core
# Zen 4, phi-1.5's four shapes and its head: the GEMM is ahead from 16 rows on all but fc1, erratic there)
INT8_NATIVE_ROWS = 16
_OPS = torch.ops.aten
_HAS_INT8_CPU = hasattr(_OPS, "_weight_int8pack_mm")
_HAS_INT4_CPU = hasattr(_OPS, "_convert_weight_to_int4pack_for_cpu") and hasattr(_OPS, "_weight_int4pack_mm_for_cpu")
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ----- configs --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Int8WeightOnlyConfig:
    """Symmetric int8 weights, one scale per output channel; activations stay in the model's dtype."""

    def to_dict(self) -> dict[str, Any]:
        return {"quant_method": "phikit", "bits": 8, "scheme": "per_channel_symmetric"}


@dataclass(frozen=True)
class Int4WeightOnlyConfig:
    """Asymmetric int4 weights, one (scale, zero) per `group_size` input columns of each output channel."""

    group_size: int = 128

    def __post_init__(self) -> None:
        if self.group_size not in INT4_GROUP_SIZES:
            raise ValueError(f"Int4WeightOnlyConfig(group_size={self.group_size}) is not supported; the int4 kernels "
                             f"take group_size in {INT4_GROUP_SIZES} (64 is closest to bitsandbytes nf4)")

    def to_dict(self) -> dict[str, Any]:
        return {"quant_method": "phikit", "bits": 4, "group_size": self.group_size, "scheme": "group_asymmetric"}


QuantConfig = Union[Int8WeightOnlyConfig, Int4WeightOnlyConfig, LosslessBf16Config]


def config_from_dict(data: dict[str, Any]) -> QuantConfig:
    """The phikit config of a `quantization_config` entry of config.json ({"quant_method": "phikit", ...})."""
    if data.get("quant_method") != "phikit":
        raise ValueError(f"quantization_config {data!r} was not written by phikit (quant_method "
                         f"{data.get('quant_method')!r}); see resolve_quantization_config")
    if data.get("bits") == 8:
        return Int8WeightOnlyConfig()
    if data.get("bits") == 4:
        return Int4WeightOnlyConfig(group_size=int(data.get("group_size", 128)))
    raise ValueError(f"quantization_config bits={data.get('bits')!r} is not supported; phikit writes 8 or 4")


# ----- modules --------------------------------------------------------------------------------------------------
class _QuantLinear(nn.Module):
    """Shared parts: shapes, bias, the 2D view the kernels need, the fallback, and the weight's memory layout.

    On the CPU `qweight` may hold a kernel's layout (`layout` names it; "portable" is the checkpoint form).
    `state_dict()` always gives the portable form and `load_state_dict` takes it, so checkpoints move between
    machines; a move to another device or a change of the scales' dtype goes through the portable form."""

    in_features: int
    out_features: int
    layout: str = "portable"
    weight_in_buffers = True  # counted by num_parameters()

    def _init_layout(self) -> None:
        self.layout = "portable"
        self.register_state_dict_post_hook(_portable_state)
        self.register_load_state_dict_pre_hook(_loading_portable)
        self.register_load_state_dict_post_hook(_pack_after_load)

    def _init_bias(self, bias: bool | torch.Tensor | None, dtype: torch.dtype, device: Any) -> None:
        if isinstance(bias, torch.Tensor):
            self.bias = bias if isinstance(bias, nn.Parameter) else nn.Parameter(bias, requires_grad=False)
        elif bias:
            self.bias = nn.Parameter(torch.zeros(self.out_features, dtype=dtype, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    @property
    def cpu_packed(self) -> bool:
        """Whether `qweight` is in a CPU kernel's layout rather than the portable one."""
        return self.layout != "portable"

    @property
    def _scales(self) -> torch.Tensor:
        raise NotImplementedError

    def _kernel_layout(self) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]] | None:
        """(layout, pack rows of the portable qweight) of the CPU kernel that runs this layer here, or None."""
        return None

    def portable_qweight(self) -> torch.Tensor:
        """`qweight` in the portable form (a copy when a kernel layout is held)."""
        raise NotImplementedError

    def pack_for_device(self, in_place: bool = False) -> None:
        """Convert `qweight` from the portable form to the layout of the kernel that runs it here, if one does.
        Each layout keeps a 64-row (aten) / 4-row (phikit) block's bytes in that block's rows, so 1024-row slices pack
        independently: `in_place` (for a tensor this module owns, not a view of a file) rewrites them in the same
        memory, so packing costs one slice of extra memory instead of a second copy of the weight."""
        if self.layout != "portable" or self.qweight.device.type == "meta":
            return
        kernel = self._kernel_layout()
        if kernel is None:
            return
        layout, pack = kernel
        portable = self.qweight
        packed = portable if in_place else torch.empty_like(portable)
        rows = 1024
        for a in range(0, portable.shape[0], rows):
            packed[a:a + rows] = pack(portable[a:a + rows])  # pack() returns new memory: safe when packed is portable
        self.qweight, self.layout = packed, layout

    def _apply(self, fn, recurse: bool = True):
        # A packed layout is only meaningful to its CPU kernel: go portable before a move or a change of the scales'
        # dtype (the kernels read bf16 scales), pack for the new place after.
        scales = self._scales
        probe = fn(torch.empty(0, dtype=scales.dtype, device=self.qweight.device))
        changing = probe.device != self.qweight.device or probe.dtype != scales.dtype
        if changing and self.cpu_packed:
            self.qweight, self.layout = self.portable_qweight(), "portable"
        out = super()._apply(fn, recurse)
        if changing:
            self.pack_for_device()
        return out

    def dequantize(self) -> torch.Tensor:
        raise NotImplementedError

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., K] -> [..., N] in x's dtype; computed in the dtype of the scales (the model's dtype)."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # [M, K]
        if x2.shape[0] == 0:
            return x2.new_zeros(*lead, self.out_features)
        return self._linear(x2.contiguous()).to(x.dtype).reshape(*lead, self.out_features)

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        """x [M, K] -> [M, N] with the bias added."""
        y = self._matmul(x)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def _native(self, x: torch.Tensor) -> bool:
        """Whether this call may run phikit's native kernel: its layout is held, bf16 scales, a CPU [M, K] input
        and no autograd through it."""
        return (self.layout == "phikit" and self._scales.dtype == torch.bfloat16 and x.device.type == "cpu"
                and x.dim() == 2 and not (torch.is_grad_enabled() and x.requires_grad))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _portable_state(module: _QuantLinear, state: dict, prefix: str, _meta: Any) -> None:
    if module.layout != "portable":
        state[prefix + "qweight"] = module.portable_qweight()


def _pack_after_load(module: _QuantLinear, _incompatible: Any) -> None:
    module.pack_for_device()


def _loading_portable(module: _QuantLinear, state: dict, prefix: str, *_: Any) -> None:
    if prefix + "qweight" in state:  # incoming tensors are portable; pack_for_device runs after the copy
        module.layout = "portable"


class Int8Linear(_QuantLinear):
    """Linear layer with int8 weights `qweight` [N, K] and per-channel `scales` [N]; `bias` [N] kept in float.

    On the CPU, where phikit's native kernels run (bf16 scales, N % 4 == 0, K % 64 == 0), `qweight` holds their
    layout (`layout == "phikit"`, `quantize_math.pack_int8_native`: 4-row blocks interleaved 64 columns at a time,
    one contiguous stream per thread: 31 against 24 GB/s from memory for row-major rows on the Zen 4 host, read
    roofline 32, same run); otherwise the portable row-major form, run by `aten._weight_int8pack_mm`."""

    def __init__(self, in_features: int, out_features: int, bias: bool | torch.Tensor | None = True,
                 dtype: torch.dtype = torch.bfloat16, device: Any = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.ones(out_features, dtype=dtype, device=device))
        self._init_bias(bias, dtype, device)
        self._init_layout()

    @property
    def _scales(self) -> torch.Tensor:
        return self.scales

    @property
    def native_ok(self) -> bool:
        """Whether phikit's native int8 kernel can run this layer."""
        return (self.qweight.device.type == "cpu" and self.scales.dtype == torch.bfloat16
                and self.out_features % 4 == 0 and self.in_features % 64 == 0 and native_kernels.available())

    def _kernel_layout(self) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]] | None:
        return ("phikit", pack_int8_native) if self.native_ok else None

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """q int8 [stop - start, K]: rows [start, stop) in the portable form, whatever the layout held."""
        if self.layout == "portable":
            return self.qweight[start:stop]
        a, b = start // 4 * 4, -(-stop // 4) * 4  # whole 4-row blocks
        return unpack_int8_native(self.qweight[a:b])[start - a:stop - a]

    def portable_qweight(self) -> torch.Tensor:
        return self.rows(0, self.out_features)

    def dequantize(self) -> torch.Tensor:
        """The weight [N, K] these int8 values stand for, in the scales' dtype."""
        return dequantize_int8(self.portable_qweight(), self.scales)

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias
        if (self._native(x) and x.dtype == torch.bfloat16 and x.shape[0] < INT8_NATIVE_ROWS
                and (bias is None or bias.dtype == torch.bfloat16)):  # decode: the bias is added in the kernel
            return native_kernels.linear_int8(x, self.qweight, self.scales, bias)
        return super()._linear(x)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.scales.dtype
        native = self._native(x)
        if native and x.shape[0] < INT8_NATIVE_ROWS:
            return native_kernels.linear_int8(x.to(dtype), self.qweight, self.scales, None)
        if (x.device.type == "cpu" and dtype == torch.bfloat16 and not torch.is_grad_enabled()
                and (native or x.shape[0] >= FP32_GEMM_MIN_ROWS)):  # a prefill: a GEMM on dequantized row slices
            s = self.scales
            # int8 and bf16 values are exact in bf16 and their product is rounded once either way: the bf16
            # slices equal the fp32 ones rounded, at a third of the memory traffic
            return gemm_dequantized(x.to(dtype), lambda a, b: self.rows(a, b).float() * s[a:b, None].float(),
                                    self.out_features, self._bf16_rows)
        if _HAS_INT8_CPU and x.device.type == "cpu" and dtype in _KERNEL_DTYPES:
            return _OPS._weight_int8pack_mm(x.to(dtype), self.portable_qweight(), self.scales)
        return F.linear(x.to(dtype), self.dequantize())

    def _bf16_rows(self, start: int, stop: int) -> torch.Tensor:
        """The weight's rows [start, stop) in bf16 (q * scale rounded once): natively from phikit's layout (one
        pass; torch's unpack, convert and multiply took 10 ms of a 64-row fc1 product), else with torch's ops."""
        fast = native_kernels.dequantize_int8_rows(self.qweight, self.scales, start, stop) \
            if self.layout == "phikit" else None
        return fast if fast is not None else self.rows(start, stop).to(self.scales.dtype) * self.scales[start:stop, None]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", kernel={'native' if self.layout == 'phikit' else 'aten'}"


class Int4Linear(_QuantLinear):
    """Linear layer with int4 weights `qweight` uint8 [N, K/2] and `scales_and_zeros` [K/g, N, 2].

    On the CPU `qweight` holds a kernel's layout in memory (`layout`): phikit's native one (bf16 models on CPUs with
    AVX512-BF16; N % 4 == 0, K % 128 == 0, g in 64/128/256) or else aten's `_weight_int4pack_mm_for_cpu` one
    (N % 16 == 0); checkpoints hold the portable nibble form (`_QuantLinear`). A layer neither kernel takes runs
    the dequantize fallback.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool | torch.Tensor | None = True,
                 group_size: int = 128, dtype: torch.dtype = torch.bfloat16, device: Any = None) -> None:
        super().__init__()
        if in_features % group_size or in_features % 2:
            raise ValueError(f"Int4Linear: in_features={in_features} must be a multiple of group_size={group_size}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("qweight", torch.full((out_features, in_features // 2), 0x88, dtype=torch.uint8,
                                                   device=device))
        self.register_buffer("scales_and_zeros", torch.zeros(in_features // group_size, out_features, 2, dtype=dtype,
                                                             device=device))
        self._init_bias(bias, dtype, device)
        self._init_layout()

    @property
    def _scales(self) -> torch.Tensor:
        return self.scales_and_zeros

    @property
    def native_ok(self) -> bool:
        """Whether phikit's native int4 kernel can run this layer (`native_kernels.has_int4`)."""
        return (self.qweight.device.type == "cpu" and self.scales_and_zeros.dtype == torch.bfloat16
                and self.out_features % 4 == 0 and self.in_features % 128 == 0 and self.group_size in (64, 128, 256)
                and native_kernels.has_int4())

    @property
    def kernel_ok(self) -> bool:
        """Whether aten's CPU int4 kernel can run this layer."""
        return (_HAS_INT4_CPU and self.qweight.device.type == "cpu" and self.out_features % 16 == 0
                and self.scales_and_zeros.dtype in _KERNEL_DTYPES)

    def _kernel_layout(self) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]] | None:
        if self.native_ok:
            return "phikit", lambda rows: pack_int4_native(unpack_nibbles(rows))
        return ("aten", lambda rows: _cpu_pack(unpack_nibbles(rows))) if self.kernel_ok else None

    def unpacked(self) -> torch.Tensor:
        """q uint8 [N, K] in 0..15, whatever the layout held."""
        unpack = {"portable": unpack_nibbles, "phikit": unpack_int4_native, "aten": _cpu_unpack}[self.layout]
        return unpack(self.qweight)

    def portable_qweight(self) -> torch.Tensor:
        """uint8 [N, K/2] in the portable nibble layout (a copy when a kernel layout is held)."""
        return self.qweight if self.layout == "portable" else pack_nibbles(self.unpacked())

    def dequantize(self) -> torch.Tensor:
        """The weight [N, K] these int4 values stand for, in the scales' dtype."""
        return dequantize_int4(self.unpacked(), self.scales_and_zeros, self.group_size)

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias
        if self._native(x) and x.shape[0] < FP32_GEMM_MIN_ROWS and (bias is None or bias.dtype == torch.bfloat16):
            return native_kernels.linear_int4(x.to(torch.bfloat16).contiguous(), self.qweight, self.scales_and_zeros,
                                              self.group_size, bias)  # decode: the bias is added in the kernel
        return super()._linear(x)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.scales_and_zeros.dtype
        if self._native(x):
            x = x.to(dtype).contiguous()
            if x.shape[0] >= FP32_GEMM_MIN_ROWS:  # long prefill: a GEMM on dequantized row slices
                q, sz, g = self.qweight, self.scales_and_zeros, self.group_size
                return gemm_dequantized(x, lambda a, b: native_kernels.dequantize_int4_rows(q, sz, g, a, b),
                                        self.out_features,
                                        lambda a, b: native_kernels.dequantize_int4_rows(q, sz, g, a, b, x.dtype))
            return native_kernels.linear_int4(x, self.qweight, self.scales_and_zeros, self.group_size, None)
        if self.layout == "aten" and x.device.type == "cpu":
            return _OPS._weight_int4pack_mm_for_cpu(x.to(dtype), self.qweight, self.group_size,
                                                    self.scales_and_zeros)
        return F.linear(x.to(dtype), self.dequantize())

    def extra_repr(self) -> str:
        kernel = {"portable": "dequant", "phikit": "native", "aten": "aten"}[self.layout]
        return super().extra_repr() + f", group_size={self.group_size}, kernel={kernel}"


# ----- building modules from tensors (the streaming interface) ---------------------------------------------------
def quantize_linear_weight(weight: torch.Tensor, config: QuantConfig,
                           rows_done: Callable[[int, int], None] | None = None) -> dict[str, torch.Tensor]:
    """One Linear weight [N, K] -> its quantized tensors in portable form: int8 {"qweight" int8 [N, K], "scales" [N]};
    int4 {"qweight" uint8 [N, K/2], "scales_and_zeros" [K/g, N, 2]}. Scales take the weight's dtype. Works in
    slices of rows and calls `rows_done(a, b)` after each (a loader drops those rows' file pages)."""
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"quantize_linear_weight needs a float [out, in] weight, got {weight.dtype} "
                         f"{tuple(weight.shape)}")
    n, k = weight.shape
    rows = max(64, (2 << 20) // (4 * k)) // 64 * 64  # slices of rows: ~2 MB of fp32 temporaries at a time
    if isinstance(config, Int8WeightOnlyConfig):
        q = torch.empty(n, k, dtype=torch.int8, device=weight.device)
        hugepages.advise(q)  # before the first write: 2 MB pages where the host gives them on request
        scales = torch.empty(n, dtype=weight.dtype, device=weight.device)
        for a in range(0, n, rows):  # per-row math: slicing changes no value
            q[a:a + rows], scales[a:a + rows] = quantize_int8(weight[a:a + rows])
            if rows_done is not None:
                rows_done(a, min(n, a + rows))
        return {"qweight": q, "scales": scales}
    if isinstance(config, Int4WeightOnlyConfig):
        if k % config.group_size:
            quantize_int4(weight[:1], config.group_size)  # raises the error that names the fix
        packed = torch.empty(n, k // 2, dtype=torch.uint8, device=weight.device)
        hugepages.advise(packed)
        sz = torch.empty(k // config.group_size, n, 2, dtype=weight.dtype, device=weight.device)
        for a in range(0, n, rows):
            qa, sz[:, a:a + rows] = quantize_int4(weight[a:a + rows], config.group_size)
            packed[a:a + rows] = pack_nibbles(qa)
            if rows_done is not None:
                rows_done(a, min(n, a + rows))
        return {"qweight": packed, "scales_and_zeros": sz}
    raise TypeError(f"unknown quantization config {config!r}; use Int8WeightOnlyConfig() or Int4WeightOnlyConfig()")


def empty_quantized_linear(in_features: int, out_features: int, bias: bool | torch.Tensor | None,
                           config: QuantConfig, dtype: torch.dtype, device: Any = None) -> _QuantLinear:
    """An Int8Linear / Int4Linear of these shapes to be filled (e.g. on the meta device before loading)."""
    if isinstance(config, Int8WeightOnlyConfig):
        return Int8Linear(in_features, out_features, bias, dtype=dtype, device=device)
    return Int4Linear(in_features, out_features, bias, group_size=config.group_size, dtype=dtype, device=device)


def linear_from_quantized(tensors: dict[str, torch.Tensor], config: QuantConfig,
                          bias: torch.Tensor | None = None) -> _QuantLinear:
    """The module for `quantize_linear_weight`'s tensors (they are adopted, not copied, and packed in place for the
    CPU kernel that runs them)."""
    q = tensors["qweight"]
    n = q.shape[0]
    if isinstance(config, Int8WeightOnlyConfig):
        scales = tensors["scales"]
        module = Int8Linear(q.shape[1], n, bias is not None, dtype=scales.dtype, device="meta")
        module.qweight, module.scales = q, scales
    else:
        sz = tensors["scales_and_zeros"]
        module = Int4Linear(q.shape[1] * 2, n, bias is not None, config.group_size, dtype=sz.dtype, device="meta")
        module.qweight, module.scales_and_zeros = q, sz
    module.pack_for_device(in_place=True)  # the tensors are adopted: repacked in their own memory
    if bias is not None:
        module.bias = bias if isinstance(bias, nn.Parameter) else nn.Parameter(bias, requires_grad=False)
    return module


def _skipped(name: str, skip: Iterable[str]) -> bool:
    return any(name == s or name.endswith("." + s) for s in skip)


def linear_targets(model: nn.Module, skip: Iterable[str] = DEFAULT_SKIP) -> list[str]:
    """Names of the nn.Linear modules a pass would quantize (a tied lm_head is always left alone)."""
    skip = tuple(skip)
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "tie_word_embeddings", False):
        skip += ("lm_head",)
    return [n for n, m in model.named_modules() if is_plain_linear(m) and not _skipped(n, skip)]


class StreamingQuantizer:
    """Quantize a model's Linear weights one tensor at a time, as a loader reads them.

        quantizer = StreamingQuantizer(meta_model, Int4WeightOnlyConfig(128))
        for name, tensor in checkpoint:                 # already cast to the target dtype and device
            if quantizer.wants(name): quantizer.consume(model, name, tensor)   # float copy can be freed now
            else: set the tensor as usual
        quantizer.finish(model)

    The float weight is dropped as soon as it is quantized, so peak memory is the quantized model plus one tensor.
    """

    def __init__(self, model: nn.Module, config: QuantConfig, skip: Iterable[str] = DEFAULT_SKIP) -> None:
        self.config = config
        self.skip = tuple(skip)
        names = linear_targets(model, skip)
        if isinstance(config, LosslessBf16Config):  # layers the 12-bit kernel cannot take stay plain bf16
            names = [n for n in names if lossless.supported(*model.get_submodule(n).weight.shape)]
        self.pending = {name + ".weight": name for name in names}

    def wants(self, param_name: str) -> bool:
        return param_name in self.pending

    def consume(self, model: nn.Module, param_name: str, weight: torch.Tensor,
                rows_done: Callable[[int, int], None] | None = None) -> None:
        """Quantize `weight` and put the quantized module in place of the Linear `param_name` belongs to. A bias
        already loaded is kept; one set later lands on the new module under the same name. `rows_done(a, b)` is
        called as rows [a, b) of `weight` are no longer needed."""
        module_name = self.pending.pop(param_name)
        linear = model.get_submodule(module_name)
        if isinstance(self.config, LosslessBf16Config):  # the head too: lossless keeps every value
            model.set_submodule(module_name, LosslessBf16Linear.from_weight(weight, linear.bias, rows_done))
            return
        config = Int8WeightOnlyConfig() if _skipped(module_name, HEAD_INT8) else self.config
        tensors = quantize_linear_weight(weight, config, rows_done)
        model.set_submodule(module_name, linear_from_quantized(tensors, config, linear.bias))

    def finish(self, model: nn.Module) -> nn.Module:
        """Quantize Linear weights that were initialised rather than read, and record the config on the model."""
        for param_name in list(self.pending):
            weight = model.get_parameter(param_name)
            if weight.device.type == "meta":
                raise RuntimeError(f"{param_name} was never filled; the loader must set or initialise it first")
            self.consume(model, param_name, weight.detach())
        if getattr(model, "config", None) is not None and not isinstance(self.config, LosslessBf16Config):
            # (the 12-bit form is a memory layout: its state_dict is plain bf16, so config.json records nothing)
            model.config.quantization_config = {**self.config.to_dict(), "skip": list(self.skip)}
        return model


def quantize_model(model: nn.Module, config: QuantConfig, skip: Iterable[str] = DEFAULT_SKIP) -> nn.Module:
    """Replace the model's nn.Linear layers (except `skip`: names or dotted suffixes) by quantized ones, in place.

    Returns the model, with `model.config.quantization_config` set so `save_pretrained` records it.
    """
    quantizer = StreamingQuantizer(model, config, skip)
    with torch.no_grad():
        for param_name in list(quantizer.pending):
            quantizer.consume(model, param_name, model.get_parameter(param_name).detach())
    return quantizer.finish(model)


# ----- checkpoints ----------------------------------------------------------------------------------------------
def save_quantized_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors in the portable on-disk form (int4 unpacked from the CPU layout)."""
    return {k: v.detach() for k, v in model.state_dict().items()}


def prepare_quantized_model(model: nn.Module, quantization_config: dict[str, Any] | QuantConfig,
                            checkpoint_names: Iterable[str], dtype: torch.dtype) -> nn.Module:
    """Before filling a (meta) model from a phikit-quantized checkpoint: swap each Linear whose `qweight` the
    checkpoint holds for an empty quantized module of the same shape, so every checkpoint name has a home."""
    config = quantization_config if not isinstance(quantization_config, dict) else config_from_dict(
        quantization_config)
    names = set(checkpoint_names)
    for module_name, module in list(model.named_modules()):
        if is_plain_linear(module) and f"{module_name}.qweight" in names:
            device = module.weight.device
            # each module's format shows in its tensor names (the head is int8 in an int4 checkpoint)
            kind = Int8WeightOnlyConfig() if f"{module_name}.scales" in names else config
            model.set_submodule(module_name, empty_quantized_linear(
                module.in_features, module.out_features, module.bias is not None, kind, dtype, device))
    return model


def finalize_quantized_model(model: nn.Module, reader: Any = None) -> nn.Module:
    """After filling: pack quantized weights for the CPU kernel that runs them, one module at a time, and give
    int8 weights left in the portable form private memory; with the `CheckpointReader` they came from, the file
    pages are dropped as each copy is made.

    Why copy int8: `aten._weight_int8pack_mm` (torch 2.13, AVX-512) crashes with SIGSEGV when its weight is a view of
    a memory-mapped file (our copy-on-write safetensors mapping); a private copy runs."""
    for module_name, module in model.named_modules():
        if not isinstance(module, (Int8Linear, Int4Linear)):
            continue
        module.pack_for_device()
        if isinstance(module, Int8Linear) and module.layout == "portable" and module.qweight.device.type == "cpu":
            module.qweight = module.qweight.clone()
        name = f"{module_name}.qweight"
        if reader is not None and name in getattr(reader, "refs", {}):
            reader.release(name)
    return model


def load_quantized_model(cls: type, folder: str, device: str | torch.device = "cpu") -> nn.Module:
    """Load a checkpoint written by `save_pretrained` of a quantized phikit model (strict: every tensor used,
    every buffer filled). `from_pretrained` does the same once loading.py routes such checkpoints here."""
    from ..auto import config_from_folder
    from ..checkpoint import CheckpointError, CheckpointReader, find_weight_files
    from ..generation_config import GenerationConfig
    from ..loading import _set_tensor, _skip_init

    config = config_from_folder(folder)
    qc = getattr(config, "quantization_config", None)
    if not isinstance(qc, dict) or qc.get("quant_method") != "phikit":
        raise ValueError(f"{folder}/config.json has no phikit quantization_config (found {qc!r}); load it with "
                         f"from_pretrained(..., quantization_config=...) to quantize a float checkpoint")
    with CheckpointReader(find_weight_files(folder)) as reader:
        dtype = next((r.dtype for n, r in reader.refs.items() if n.endswith(".scales") or
                      n.endswith(".scales_and_zeros")), torch.float32)
        with torch.device("meta"), _skip_init():
            model = cls(config)
        prepare_quantized_model(model, qc, reader.refs.keys(), dtype)
        tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
        wanted = {n: tuple(t.shape) for n, t in model.state_dict(keep_vars=True).items() if n not in tied}
        missing = sorted(set(wanted) - set(reader.refs))
        unused = sorted(set(reader.refs) - set(wanted) - tied)
        wrong = [n for n in wanted if n in reader.refs and tuple(reader.refs[n].shape) != wanted[n]]
        if missing or unused or wrong:
            raise CheckpointError(f"the quantized checkpoint at {folder} does not fit {cls.__name__}: missing "
                                  f"{missing[:5]}, unused {unused[:5]}, wrong shape {wrong[:5]}; re-save it with "
                                  f"this phikit version")
        for name in wanted:
            _set_tensor(model, name, reader.get(name).to(device))
        finalize_quantized_model(model, reader)
    model.tie_weights()
    model.eval()
    model.generation_config = GenerationConfig.from_model_config(config)
    return model


# ----- bitsandbytes compatibility --------------------------------------------------------------------------------
class BitsAndBytesConfig:
    """The seeds' `BitsAndBytesConfig` arguments. phikit never swaps in other numbers: `resolve_quantization_config`
    either finds a bitsandbytes path or raises an error naming the phikit quantization to use instead."""

    quant_method = "bitsandbytes"

    def __init__(self, load_in_8bit: bool = False, load_in_4bit: bool = False, llm_int8_threshold: float = 6.0,
                 llm_int8_skip_modules: list[str] | None = None, llm_int8_enable_fp32_cpu_offload: bool = False,
                 llm_int8_has_fp16_weight: bool = False, bnb_4bit_compute_dtype: Any = None,
                 bnb_4bit_quant_type: str = "fp4", bnb_4bit_use_double_quant: bool = False,
                 bnb_4bit_quant_storage: Any = None, **kwargs: Any) -> None:
        if load_in_8bit and load_in_4bit:
            raise ValueError("BitsAndBytesConfig: load_in_4bit and load_in_8bit are both True; choose one")
        if bnb_4bit_quant_type not in ("fp4", "nf4"):
            raise ValueError(f"bnb_4bit_quant_type={bnb_4bit_quant_type!r}; bitsandbytes knows 'fp4' and 'nf4'")
        kwargs.pop("quant_method", None)
        self.load_in_8bit, self.load_in_4bit = bool(load_in_8bit), bool(load_in_4bit)
        self.llm_int8_threshold, self.llm_int8_skip_modules = llm_int8_threshold, llm_int8_skip_modules
        self.llm_int8_enable_fp32_cpu_offload = llm_int8_enable_fp32_cpu_offload
        self.llm_int8_has_fp16_weight = llm_int8_has_fp16_weight
        self.bnb_4bit_compute_dtype, self.bnb_4bit_quant_type = bnb_4bit_compute_dtype, bnb_4bit_quant_type
        self.bnb_4bit_use_double_quant, self.bnb_4bit_quant_storage = bnb_4bit_use_double_quant, bnb_4bit_quant_storage
        self.extra = kwargs

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k != "extra"}
        for key in ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage"):
            if out[key] is not None:
                out[key] = str(out[key]).replace("torch.", "")
        return {"quant_method": "bitsandbytes", **out, **self.extra}

    def __repr__(self) -> str:
        return f"BitsAndBytesConfig({', '.join(f'{k}={v!r}' for k, v in self.to_dict().items())})"


def _bnb_alternative(cfg: BitsAndBytesConfig) -> str:
    if cfg.load_in_4bit:
        return (f"for {cfg.bnb_4bit_quant_type} 4-bit weights use quantization_config=phikit.Int4WeightOnlyConfig("
                f"group_size=64) (group-wise int4, 64-value groups like bitsandbytes' 4-bit blocks)")
    return "for 8-bit weights use quantization_config=phikit.Int8WeightOnlyConfig() (per-channel int8)"


def resolve_quantization_config(cfg: Any, device: str | torch.device = "cpu") -> QuantConfig | None:
    """The phikit config to apply for `from_pretrained(quantization_config=cfg)`.

    Accepts phikit configs, a `quantization_config` dict from config.json, phikit's or transformers'
    `BitsAndBytesConfig` (any object with `to_dict()`). bitsandbytes requests raise: `ImportError` when the library
    is absent, `NotImplementedError` where it is present (phikit does not drive its layers yet); both name the
    phikit alternative.
    """
    if isinstance(cfg, LosslessBf16Config):
        if cfg.required:
            lossless.check_available()
        return cfg
    if cfg is None or isinstance(cfg, (Int8WeightOnlyConfig, Int4WeightOnlyConfig)):
        return cfg
    if not isinstance(cfg, (dict, BitsAndBytesConfig)) and hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    if isinstance(cfg, dict):
        method = cfg.get("quant_method", "")
        method = str(getattr(method, "value", method)).lower()  # transformers stores an enum
        if method == "phikit":
            return config_from_dict(cfg)
        if method != "bitsandbytes":
            raise ValueError(f"quantization_config with quant_method={method!r} is not supported by phikit; use "
                             f"phikit.Int8WeightOnlyConfig() or phikit.Int4WeightOnlyConfig(group_size=128)")
        args = {k.lstrip("_"): v for k, v in cfg.items()}  # transformers writes `_load_in_4bit` as well
        cfg = BitsAndBytesConfig(**args)
    if not isinstance(cfg, BitsAndBytesConfig):
        raise TypeError(f"quantization_config={cfg!r} is not a quantization config; use phikit.Int8WeightOnlyConfig()"
                        f", phikit.Int4WeightOnlyConfig(group_size=...) or BitsAndBytesConfig(...)")
    if not (cfg.load_in_4bit or cfg.load_in_8bit):
        raise ValueError("BitsAndBytesConfig sets neither load_in_4bit nor load_in_8bit; set one, or pass "
                         "quantization_config=None for unquantized weights")
    kind = "load_in_4bit=True" if cfg.load_in_4bit else "load_in_8bit=True"
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(f"BitsAndBytesConfig({kind}) needs the bitsandbytes library, which is not installed here "
                          f"(device {torch.device(device).type}); phikit does not silently substitute other numbers. "
                          f"{_bnb_alternative(cfg)[0].upper()}{_bnb_alternative(cfg)[1:]}.")
    raise NotImplementedError(f"BitsAndBytesConfig({kind}): bitsandbytes is installed, but phikit does not run its "
                              f"Linear4bit/Linear8bitLt layers yet (device {torch.device(device).type}); "
                              f"{_bnb_alternative(cfg)}.")


__all__ = ["Int8WeightOnlyConfig", "Int4WeightOnlyConfig", "LosslessBf16Config", "BitsAndBytesConfig", "Int8Linear",
           "Int4Linear", "LosslessBf16Linear",
           "quantize_model", "quantize_linear_weight", "linear_from_quantized", "empty_quantized_linear",
           "StreamingQuantizer", "resolve_quantization_config", "save_quantized_state", "prepare_quantized_model",
           "finalize_quantized_model", "load_quantized_model", "DEFAULT_SKIP", "HEAD_INT8"]
