"""`load_quantized_model`: load a checkpoint that `save_pretrained` wrote from a phikit-quantized model.

Strict: every checkpoint tensor is used and every buffer filled, with matching shapes; otherwise `CheckpointError`
lists the names and the fix before any weight is read. Each module's format is read back from its tensor names
(`formats.streaming.prepare_quantized_model`: the head is int8 in an int4 checkpoint), and weights are packed for the
CPU kernel that runs them as they are placed (`finalize_quantized_model`).

It lives here, not in `phikit/formats/`, because it builds on the loader (`loading.py`'s meta-device construction
and tensor placement, `auto.config_from_folder`, `checkpoint.CheckpointReader`), a layer above the formats.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import config_from_folder
from .checkpoint import CheckpointError, CheckpointReader, find_weight_files
from ..formats.streaming import finalize_quantized_model, prepare_quantized_model
from ..generation_config import GenerationConfig
from .loading import _set_tensor, _skip_init


def load_quantized_model(cls: type, folder: str, device: str | torch.device = "cpu") -> nn.Module:
    """Load a checkpoint written by `save_pretrained` of a quantized phikit model (strict: every tensor used,
    every buffer filled). `from_pretrained` does the same once loading.py routes such checkpoints here."""
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


__all__ = ["load_quantized_model"]
