"""Quantization configs and the rules that check them.

* `Int8WeightOnlyConfig`: symmetric int8 weights, one scale per output channel (`int8.py`).
* `Int4WeightOnlyConfig(group_size)`: asymmetric int4 weights, one (scale, zero) per `group_size` input columns
  (`int4.py`); `group_size` must be one of `quantize_math.INT4_GROUP_SIZES`, the sizes the int4 kernels take.
* `LosslessBf16Config` (defined in `lossless.py`): a 12-bit memory layout of the same bf16 values, not a
  quantization; `QuantConfig` names the three.
* `config_from_dict`: the phikit config a checkpoint's `quantization_config` (config.json) records.
* `BitsAndBytesConfig`: the seeds' bitsandbytes arguments. phikit never swaps in other numbers:
  `resolve_quantization_config` either finds a bitsandbytes path or raises an error naming the phikit config to use
  instead (`Int8WeightOnlyConfig()` for 8 bits, `Int4WeightOnlyConfig(group_size=64)` for 4).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Union

import torch

from . import lossless
from .lossless import LosslessBf16Config
from .quantize_math import INT4_GROUP_SIZES


# ----- phikit configs -------------------------------------------------------------------------------------------
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


# ----- resolving what from_pretrained was asked for --------------------------------------------------------------
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
        raise ValueError(f"quantization_config={cfg!r:.100} is not a quantization config; use phikit.Int8WeightOnlyConfig()"
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


__all__ = ["Int8WeightOnlyConfig", "Int4WeightOnlyConfig", "QuantConfig", "config_from_dict", "BitsAndBytesConfig",
           "resolve_quantization_config"]
