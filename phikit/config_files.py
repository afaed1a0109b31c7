"""The one reader of `config.json`: a file to its dict, legacy `phi-msft` keys translated and `model_type` filled in.

`config.config_from_folder` (for `AutoConfig`, the loaders and the CLI) and `PhiKitConfig.from_pretrained` both read
through here, so a file is read the same way whichever entry point a user takes.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .errors import ConfigError

# The legacy remote-code phi-1/1.5/2 configs ("phi-msft", "mixformer-sequential") and their key names.
MSFT_TYPES = ("phi-msft", "mixformer-sequential")
MSFT_KEYS = {"n_embd": "hidden_size", "n_layer": "num_hidden_layers", "n_head": "num_attention_heads",
             "n_head_kv": "num_key_value_heads", "n_positions": "max_position_embeddings", "n_inner": "intermediate_size",
             "layer_norm_epsilon": "layer_norm_eps", "activation_function": "hidden_act"}
MSFT_DROP = ("rotary_dim", "flash_attn", "flash_rotary", "fused_dense", "attn_pdrop", "auto_map", "architectures",
             "img_processor", "tie_word_embeddings", "model_type")
ARCH_PREFIXES = (("PhimoeFor", "phimoe"), ("PhiMoEFor", "phimoe"), ("Phi3For", "phi3"), ("PhiFor", "phi"))


# A real config.json is a few KB; one past this is not a config (and JSON that deep or that big is an attack).
MAX_CONFIG_BYTES = 16 * 2**20


def _from_msft(data: dict[str, Any]) -> dict[str, Any]:
    """phi-msft config keys -> PhiConfig keys (rotary_dim becomes partial_rotary_factor)."""
    out = {MSFT_KEYS.get(k, k): v for k, v in data.items() if k not in MSFT_DROP}
    for key in ("hidden_size", "num_attention_heads"):
        value = out.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            legacy = next((k for k, v in MSFT_KEYS.items() if v == key), key)
            raise ConfigError(f"{legacy}={value!r} in a {data.get('model_type')} config must be a positive integer")
    if out.get("intermediate_size") is None:
        out["intermediate_size"] = 4 * out["hidden_size"]
    if "rotary_dim" in data:
        rotary = data["rotary_dim"]
        if isinstance(rotary, bool) or not isinstance(rotary, int) or rotary <= 0:
            raise ConfigError(f"rotary_dim={rotary!r} must be a positive integer (32 on phi-2)")
        out["partial_rotary_factor"] = rotary / max(1, out["hidden_size"] // out["num_attention_heads"])
    out["model_type"], out["architectures"] = "phi", ["PhiForCausalLM"]
    return out


def read_config_dict(path: str | os.PathLike) -> dict[str, Any]:
    """A folder holding `config.json` (or the file itself) -> its dict, with `model_type` in phikit's spelling
    (legacy phi-msft configs translated; a type named only by `architectures` filled in)."""
    path = os.fspath(path)
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise ConfigError(f"no config.json at {path!r}; pass a folder that holds a Hugging Face checkpoint")
    size = os.path.getsize(file)
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{file} is {size} bytes, more than any config.json (limit {MAX_CONFIG_BYTES}); "
                          f"point at the checkpoint's real config.json")
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{file} is not valid UTF-8 JSON ({e}); re-download or fix it") from e
    except RecursionError as e:
        raise ConfigError(f"{file} nests JSON too deeply to be a config; re-download or fix it") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{file} holds a JSON {type(data).__name__}, not an object; re-download or fix it")
    return normalize_model_type(data)


def normalize_model_type(data: dict[str, Any]) -> dict[str, Any]:
    """A config dict with `model_type` in phikit's spelling (see `read_config_dict`)."""
    model_type = data.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise ConfigError(f"model_type={model_type!r:.80} must be a string such as \"phi3\"")
    if model_type in MSFT_TYPES:
        return _from_msft(data)
    architectures = data.get("architectures")
    if architectures is not None and (not isinstance(architectures, list) or not all(
            isinstance(a, str) for a in architectures)):
        raise ConfigError(f"architectures={architectures!r:.80} must be a list of class names such as "
                          f"[\"Phi3ForCausalLM\"]")
    if model_type is None:  # some early configs name only their architecture
        for arch in architectures or []:
            model_type = model_type or next((t for prefix, t in ARCH_PREFIXES if arch.startswith(prefix)), None)
        if model_type is not None:
            data = {**data, "model_type": model_type}
    return data
