"""Quantizing while loading: `StreamingQuantizer`, the tensor-to-module builders, and the checkpoint helpers.

Loaders quantize tensor by tensor with `StreamingQuantizer`: each float Linear weight is quantized (in slices of
rows, `quantize_linear_weight`) and dropped as it is read, so peak memory stays near the quantized size. The same
object serves the pass over a built model (`quantize.quantize_model`) and hands weights to `lossless.py` under
`LosslessBf16Config` (every kernel-shaped linear, the head included).

The head: `lm_head` is the most sensitive matrix and, with a 32k-51k vocabulary, 7-14% of a small model's bytes, read
at every token. It is quantized to int8 per channel under either config (`HEAD_INT8`), as llama.cpp keeps its output
matrix at 6 bits or more in 4-bit files; left in bf16 it took 14 ms of a 72 ms int4 phi-1.5 step. A head tied to
the embedding (Phi-4-mini) is never quantized: that would untie it. Pass `skip=("lm_head", ...)` to keep it in float.

Default skip list (`DEFAULT_SKIP`): classification `score` heads and the PhiMoE router `block_sparse_moe.gate` (tiny;
routing decisions flip on small errors). Embeddings are never quantized: a lookup reads one row per token, so they
cost memory, not time.

Checkpoints: `save_quantized_state` gives the portable on-disk form; `prepare_quantized_model` and
`finalize_quantized_model` bracket filling a meta model from a phikit-quantized checkpoint (each module's format is
read back from its tensor names). The loader that uses them is `phikit/loading_quantized.py`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from ..cpu import hugepages
from ..cpu.gemm import is_plain_linear
from . import lossless
from .configs import Int4WeightOnlyConfig, Int8WeightOnlyConfig, QuantConfig, config_from_dict
from .int4 import Int4Linear
from .int8 import Int8Linear
from .lossless import LosslessBf16Config, LosslessBf16Linear
from .quant_linear import _QuantLinear
from .quantize_math import pack_nibbles, quantize_int4, quantize_int8

DEFAULT_SKIP = ("score", "block_sparse_moe.gate")
HEAD_INT8 = ("lm_head",)  # quantized to int8 per channel whatever the config (module docstring)


# ----- building modules from tensors (the streaming interface) ---------------------------------------------------
def quantize_linear_weight(weight: torch.Tensor, config: QuantConfig,
                           rows_done: Callable[[int, int], None] | None = None,
                           row_absmax: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One Linear weight [N, K] -> its quantized tensors in portable form: int8 {"qweight" int8 [N, K], "scales" [N]};
    int4 {"qweight" uint8 [N, K/2], "scales_and_zeros" [K/g, N, 2]}. Scales take the weight's dtype. Works in
    slices of rows and calls `rows_done(a, b)` after each (a loader drops those rows' file pages). `row_absmax` [N]:
    int8 scales from these row maxima instead of the weight's own (`quantize_int8`)."""
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
            q[a:a + rows], scales[a:a + rows] = quantize_int8(
                weight[a:a + rows], None if row_absmax is None else row_absmax[a:a + rows])
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
                rows_done: Callable[[int, int], None] | None = None,
                row_absmax: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Quantize `weight` and put the quantized module in place of the Linear `param_name` belongs to. A bias
        already loaded is kept; one set later lands on the new module under the same name. `rows_done(a, b)` is
        called as rows [a, b) of `weight` are no longer needed. `row_absmax(weight)`: the rows' maxima over the
        whole row where `weight` holds only some of its columns (tensor parallelism), for int8 scales."""
        module_name = self.pending.pop(param_name)
        linear = model.get_submodule(module_name)
        if isinstance(self.config, LosslessBf16Config):  # the head too: lossless keeps every value
            model.set_submodule(module_name, LosslessBf16Linear.from_weight(weight, linear.bias, rows_done))
            return
        config = Int8WeightOnlyConfig() if _skipped(module_name, HEAD_INT8) else self.config
        absmax = row_absmax(weight) if row_absmax is not None and isinstance(config, Int8WeightOnlyConfig) else None
        tensors = quantize_linear_weight(weight, config, rows_done, absmax)
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


__all__ = ["DEFAULT_SKIP", "HEAD_INT8", "quantize_linear_weight", "empty_quantized_linear", "linear_from_quantized",
           "linear_targets", "StreamingQuantizer", "save_quantized_state", "prepare_quantized_model",
           "finalize_quantized_model"]
