"""Weight-only quantization as a pass over a built model: int8 per output channel, int4 group-wise.

The model file knows nothing of this: `quantize_model` swaps `nn.Linear` modules (fused `qkv_proj` / `gate_up_proj`
and every PhiMoE expert included) for `Int8Linear` / `Int4Linear` of the same shapes and bias, in place. Loaders do
the same tensor by tensor while reading a checkpoint, with the same `StreamingQuantizer`.

Where the parts live (all in `phikit/formats/` but the loader):

* `configs.py`: `Int8WeightOnlyConfig`, `Int4WeightOnlyConfig`, `config_from_dict`, the `BitsAndBytesConfig` shim
  and `resolve_quantization_config` (what `from_pretrained(quantization_config=...)` accepts);
* `quantize_math.py`: quantize / dequantize and the weight packings as pure functions;
* `quant_linear.py`, `int8.py`, `int4.py`: the modules, their formats, CPU layouts and kernel constraints;
* `streaming.py`: `StreamingQuantizer`, the head and skip policy (`HEAD_INT8`, `DEFAULT_SKIP`), and the
  prepare / finalize helpers for phikit-quantized checkpoints;
* `phikit/loading_quantized.py`: `load_quantized_model`, the strict loader of those checkpoints (outside `formats/`:
  it builds on `loading.py`).
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn

from .configs import QuantConfig
from .streaming import DEFAULT_SKIP, StreamingQuantizer


def quantize_model(model: nn.Module, config: QuantConfig, skip: Iterable[str] = DEFAULT_SKIP) -> nn.Module:
    """Replace the model's nn.Linear layers (except `skip`: names or dotted suffixes) by quantized ones, in place.

    Returns the model, with `model.config.quantization_config` set so `save_pretrained` records it.
    """
    quantizer = StreamingQuantizer(model, config, skip)
    with torch.no_grad():
        for param_name in list(quantizer.pending):
            quantizer.consume(model, param_name, model.get_parameter(param_name).detach())
    return quantizer.finish(model)


__all__ = ["quantize_model"]
