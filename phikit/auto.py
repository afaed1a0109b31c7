"""`AutoConfig` and `AutoModelFor*`: pick the family from `model_type` (or `architectures`) in config.json."""

from __future__ import annotations

import json
import os
from typing import Any

from .config import CONFIG_CLASSES, ConfigError, PhiKitConfig
from .hub import resolve_folder

# The legacy remote-code phi-1/1.5/2 configs ("phi-msft", "mixformer-sequential") and their key names.
MSFT_TYPES = ("phi-msft", "mixformer-sequential")
MSFT_KEYS = {"n_embd": "hidden_size", "n_layer": "num_hidden_layers", "n_head": "num_attention_heads",
             "n_head_kv": "num_key_value_heads", "n_positions": "max_position_embeddings", "n_inner": "intermediate_size",
             "layer_norm_epsilon": "layer_norm_eps", "activation_function": "hidden_act"}
MSFT_DROP = ("rotary_dim", "flash_attn", "flash_rotary", "fused_dense", "attn_pdrop", "auto_map", "architectures",
             "img_processor", "tie_word_embeddings", "model_type")


ARCH_PREFIXES = (("PhimoeFor", "phimoe"), ("PhiMoEFor", "phimoe"), ("Phi3For", "phi3"), ("PhiFor", "phi"))


def _from_msft(data: dict[str, Any]) -> dict[str, Any]:
    """phi-msft config keys -> PhiConfig keys (rotary_dim becomes partial_rotary_factor)."""
    out = {MSFT_KEYS.get(k, k): v for k, v in data.items() if k not in MSFT_DROP}
    if out.get("intermediate_size") is None:
        out["intermediate_size"] = 4 * out["hidden_size"]
    if "rotary_dim" in data:
        out["partial_rotary_factor"] = data["rotary_dim"] / (out["hidden_size"] // out["num_attention_heads"])
    out["architectures"] = ["PhiForCausalLM"]
    return out


def config_from_dict(data: dict[str, Any]) -> PhiKitConfig:
    """The right config class for a config.json dict; unknown model types raise naming the supported ones."""
    model_type = data.get("model_type")
    if model_type in MSFT_TYPES:
        return CONFIG_CLASSES["phi"].from_dict(_from_msft(data))
    if model_type is None:  # some early configs name only their architecture
        for arch in data.get("architectures") or []:
            model_type = model_type or next((t for prefix, t in ARCH_PREFIXES if arch.startswith(prefix)), None)
    if model_type not in CONFIG_CLASSES:
        raise ConfigError(f"model_type={model_type!r} is not a Phi family phikit runs; supported: "
                          f"{sorted(CONFIG_CLASSES) + list(MSFT_TYPES)}")
    return CONFIG_CLASSES[model_type].from_dict(data)


def config_from_folder(folder: str) -> PhiKitConfig:
    file = os.path.join(folder, "config.json")
    if not os.path.isfile(file):
        raise ConfigError(f"no config.json in {folder}; pass a folder that holds a Hugging Face checkpoint")
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{file} is not valid JSON ({e}); re-download or fix it") from e
    return config_from_dict(data)


class AutoConfig:
    @staticmethod
    def from_pretrained(path_or_id: str | os.PathLike, revision: str | None = None, local_files_only: bool = False,
                        trust_remote_code: bool = False, **overrides: Any) -> PhiKitConfig:
        folder = resolve_folder(path_or_id, revision, local_files_only)
        config = config_from_folder(folder)
        for k, v in overrides.items():
            setattr(config, k, v)
        config.validate()
        return config

    @staticmethod
    def for_model(model_type: str, **kwargs: Any) -> PhiKitConfig:
        return config_from_dict({"model_type": model_type, **kwargs})


class _AutoModel:
    """Dispatch `from_pretrained` / `from_config` to the family class named `<Family><suffix>`."""

    suffix = ""

    @classmethod
    def _class_for(cls, config: PhiKitConfig):
        from . import modeling

        family = {"phi": "Phi", "phi3": "Phi3", "phimoe": "Phimoe"}[config.model_type]
        name = family + cls.suffix
        if not hasattr(modeling, name):
            raise ValueError(f"{config.model_type} has no {cls.suffix or 'Model'} class in phikit (or in "
                             f"transformers); available: {[n for n in dir(modeling) if n.startswith(family)]}")
        return getattr(modeling, name)

    @classmethod
    def from_config(cls, config: PhiKitConfig, **kwargs: Any):
        return cls._class_for(config)(config, **kwargs)

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, *args: Any, **kwargs: Any):
        config = kwargs.pop("config", None)
        if config is None:
            folder = resolve_folder(path_or_id, kwargs.get("revision"), kwargs.get("local_files_only", False),
                                    cache_dir=kwargs.get("cache_dir"), token=kwargs.get("token"))
            config = config_from_folder(folder)
            path_or_id = folder
        return cls._class_for(config).from_pretrained(path_or_id, *args, config=config, **kwargs)


class AutoModel(_AutoModel):
    suffix = "Model"


class AutoModelForCausalLM(_AutoModel):
    suffix = "ForCausalLM"


class AutoModelForSequenceClassification(_AutoModel):
    suffix = "ForSequenceClassification"


class AutoModelForTokenClassification(_AutoModel):
    suffix = "ForTokenClassification"
