"""`from_pretrained`'s options, resolved and checked before anything is built: the folder (hub id, `subfolder`,
`variant` files), the config (a copy: the caller's `config=` object is never changed), the dtype, the device and the
generation config. Every bad value is an error naming the argument or the file, its value and the fix.
"""

from __future__ import annotations

import copy
import os
import re
from typing import Any

import torch

from ..config import PhiKitConfig, config_from_dict
from ..config_files import read_config_dict
from ..errors import ConfigError
from ..generation_config import GenerationConfig
from ..hub import BIN_PATTERNS, CHECKPOINT_PATTERNS, resolve_folder
from .shard_index import BIN_INDEX, BIN_SINGLE, SAFE_INDEX, with_variant

DTYPES = {"float32": torch.float32, "float": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "half": torch.float16, "fp16": torch.float16,
          "float64": torch.float64, "double": torch.float64}
FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
SUPPORTED = "torch.float32, torch.bfloat16, torch.float16 or 'auto'"


def resolve_dtype(dtype: Any, config: PhiKitConfig, reader: Any | None) -> torch.dtype:
    """torch dtype from a dtype, its name, or "auto" (config's `dtype`/`torch_dtype`, else the weights' own)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in FLOATS:
            raise ValueError(f"dtype={dtype} is not a floating-point dtype (weights would be truncated); use {SUPPORTED}")
        return dtype
    if dtype is None or dtype == "auto":
        named = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if named is not None:
            key = str(named).replace("torch.", "")
            if key not in DTYPES:
                raise ConfigError(f"the config (config.json) has dtype={named!r}, which phikit cannot load weights as; fix it, or "
                                  f"pass dtype= explicitly ({SUPPORTED})")
            return DTYPES[key]
        if reader is not None:
            for ref in reader.refs.values():
                if ref.dtype.is_floating_point:
                    return ref.dtype
        return torch.float32
    if isinstance(dtype, str) and dtype.replace("torch.", "") in DTYPES:
        return DTYPES[dtype.replace("torch.", "")]
    raise ValueError(f"dtype={dtype!r} is not supported; use {SUPPORTED}")


def pick_dtype(dtype: Any, torch_dtype: Any) -> Any:
    """transformers' rule: `dtype` wins, `torch_dtype` is its old name; both given and different is an error."""
    if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
        raise ValueError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree; pass dtype only (torch_dtype is "
                         f"its old name)")
    return dtype if dtype is not None else (torch_dtype if torch_dtype is not None else "auto")


def _device(value: Any, where: str) -> torch.device:
    if isinstance(value, bool) or (isinstance(value, int) and value < 0):
        raise ValueError(f"{where}={value!r} is not a device; use 'cpu', 'cuda', 'cuda:N', a GPU number or 'auto'")
    try:
        device = torch.device("cuda", value) if isinstance(value, int) else torch.device(value)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"{where}={value!r} is not a device ({e}); use 'cpu', 'cuda', 'cuda:N' or 'auto'") from None
    if device.type == "cpu":
        return device
    available = {"cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if device.type not in available:
        raise ValueError(f"{where}={value!r}: phikit loads a model onto one device of type cpu, cuda or mps, not "
                         f"{device.type!r} (no disk or meta offload)")
    if not available[device.type]:
        raise ValueError(f"{where}={value!r}: this machine has no {device.type} device; use 'cpu' (or 'auto')")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"{where}={value!r}: this machine has {torch.cuda.device_count()} CUDA devices "
                         f"(0..{torch.cuda.device_count() - 1})")
    return device


def resolve_device(device_map: Any) -> torch.device:
    """phikit places whole models on one device: None/'cpu', 'cuda', 'cuda:1', 0, 'auto', {'': device}."""
    if isinstance(device_map, dict):
        devices = {str(v) if not isinstance(v, int) or isinstance(v, bool) else f"cuda:{v}"
                   for v in device_map.values()}
        if len(devices) != 1:
            what = "is empty" if not devices else "splits the model over devices"
            raise ValueError(f"device_map={device_map!r:.200} {what}; phikit loads a model onto one device: pass "
                             f"device_map='cpu' or 'cuda:N'")
        return _device(next(iter(device_map.values())), "device_map")
    if device_map is None:
        return torch.device("cpu")
    if device_map == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device_map in ("balanced", "balanced_low_0", "sequential"):
        raise ValueError(f"device_map={device_map!r} spreads a model over devices; phikit loads a model onto one "
                         f"device: pass device_map='auto', 'cpu' or 'cuda:N'")
    return _device(device_map, "device_map")


def _check_subfolder(subfolder: Any) -> str:
    if subfolder is None or subfolder == "":
        return ""
    if not isinstance(subfolder, str) or "\0" in subfolder or "\\" in subfolder or subfolder.startswith("/") or \
            re.match(r"^[A-Za-z]:", subfolder) or \
            any(p in ("", ".", "..") for p in subfolder.rstrip("/").split("/")):
        raise ValueError(f"subfolder={subfolder!r} must be a relative folder name inside the checkpoint (such as "
                         f"'text_model'), without '..', backslashes or a leading '/'")
    return subfolder.rstrip("/")


def _hub_patterns(subfolder: str, variant: str | None) -> list[str] | None:
    """What to download for a hub id: the usual files, plus variant names, below `subfolder`."""
    if not subfolder and variant is None:
        return None
    patterns = CHECKPOINT_PATTERNS + BIN_PATTERNS
    if variant is not None:
        patterns = patterns + [with_variant(SAFE_INDEX, variant), with_variant(BIN_SINGLE, variant),
                               with_variant(BIN_INDEX, variant), f"pytorch_model.{variant}-*.bin"]
    return [f"{subfolder}/{p}" for p in patterns] if subfolder else patterns


def resolve_checkpoint_folder(path_or_id: Any, subfolder: Any, variant: Any, revision: Any, local_files_only: bool,
                              cache_dir: Any, token: Any) -> str:
    """The local folder of the checkpoint (its `subfolder`), downloading a hub id first."""
    if not isinstance(path_or_id, (str, os.PathLike)):
        raise ValueError(f"from_pretrained needs a folder or hub id (a str or os.PathLike), got "
                         f"{type(path_or_id).__name__} {path_or_id!r:.80}")
    subfolder = _check_subfolder(subfolder)
    local = os.path.isdir(os.fspath(path_or_id))
    folder = resolve_folder(path_or_id, revision, local_files_only, cache_dir=cache_dir, token=token,
                            patterns=None if local else _hub_patterns(subfolder, variant))
    if subfolder:
        folder = os.path.join(folder, subfolder)
        if not os.path.isdir(folder):
            raise ValueError(f"subfolder={subfolder!r}: {folder} is not a folder; check the name")
    if not os.path.isdir(folder):
        raise ValueError(f"{folder} is a file, not a checkpoint folder; pass the folder that holds config.json and "
                         f"the weights")
    return folder


def resolve_config(folder: str, config: Any, cls: type, overrides: dict[str, Any],
                   attn_implementation: Any) -> PhiKitConfig:
    """A new config for the model: the given one copied (or read from `folder`/config.json, or from the path
    `config` names), the overrides and attn_implementation applied to the copy, then validated."""
    source = os.path.join(folder, "config.json")
    if config is None and not os.path.isfile(source) and os.path.isfile(os.path.join(folder, "adapter_config.json")):
        raise ConfigError(f"{folder} holds a LoRA adapter (adapter_config.json), not a model: load its base model "
                          f"(adapter_config.json's base_model_name_or_path), then phikit.lora.load_adapter(model, "
                          f"{folder!r})")
    if config is None or isinstance(config, (str, os.PathLike)):
        path = folder if config is None else os.fspath(config)
        source = path if config is not None else source
        try:
            data = read_config_dict(path)  # names the file when it is missing or not a JSON object
        except ConfigError:
            raise
        except (ValueError, RecursionError, OSError) as e:  # e.g. not UTF-8: the reader does not name the file
            raise ConfigError(f"{source} could not be read ({type(e).__name__}: {str(e)[:200]}); fix or "
                              f"re-download it") from None
        try:
            config = config_from_dict(data)
        except ConfigError as e:
            raise ConfigError(e if source in str(e) else f"{source}: {e}") from None
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise ConfigError(f"{source} does not describe a config phikit can build ({type(e).__name__}: "
                              f"{str(e)[:200]}); fix or re-download it") from None
    elif isinstance(config, PhiKitConfig):
        config = copy.deepcopy(config)  # the caller's object stays as it was, whatever happens below
        source = "config="
    else:
        raise ValueError(f"config={config!r:.80} is a {type(config).__name__}; pass a phikit config (e.g. "
                         f"phikit.AutoConfig.from_pretrained(folder)) or a path to config.json")
    wanted = getattr(cls, "config_class", PhiKitConfig)
    if not isinstance(config, wanted):
        raise ConfigError(f"{cls.__name__} needs a {wanted.__name__}, but {source} is a {type(config).__name__} "
                          f"(model_type {config.model_type!r}); load it with phikit.AutoModelForCausalLM or the "
                          f"{config.model_type} classes")
    name_or_path = config.name_or_path
    config = config.with_overrides(**overrides)  # rope keys fold into rope_parameters; validated
    config.name_or_path = name_or_path
    if attn_implementation is not None:
        config.attn_implementation = attn_implementation
    try:
        config.validate()
    except ConfigError as e:
        if overrides or source == "config=":
            raise
        raise ConfigError(e if source in str(e) else f"{source}: {e}") from None
    return config


def resolve_generation_config(folder: str, given: Any, config: PhiKitConfig) -> GenerationConfig:
    """`generation_config=` if given, else the folder's generation_config.json, else one from the model config."""
    if given is not None:
        if not isinstance(given, GenerationConfig):
            raise ValueError(f"generation_config={given!r:.80} is a {type(given).__name__}; pass a "
                             f"phikit.GenerationConfig")
        return copy.deepcopy(given)
    path = os.path.join(folder, "generation_config.json")
    if not os.path.isfile(path):
        return GenerationConfig.from_model_config(config)
    try:
        return GenerationConfig.from_pretrained(folder)
    except (ValueError, TypeError, KeyError, AttributeError, OSError, RecursionError) as e:
        message = str(e)[:300]
        raise ConfigError(message if path in message else f"{path} could not be read ({type(e).__name__}: "
                          f"{message}); fix or delete it") from None
