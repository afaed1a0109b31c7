"""`AutoConfig` and `AutoModelFor*`: pick the family from `model_type` (or `architectures`) in config.json."""

from __future__ import annotations

import os
from typing import Any

from . import modeling
from ..config import PhiKitConfig, config_from_dict, config_from_folder
from ..hub import resolve_folder
from ..weights.load_options import resolve_checkpoint_folder, resolve_config

class AutoConfig:
    @staticmethod
    def from_pretrained(path_or_id: str | os.PathLike, revision: str | None = None, local_files_only: bool = False,
                        trust_remote_code: bool = False, **overrides: Any) -> PhiKitConfig:
        folder = resolve_folder(path_or_id, revision, local_files_only)
        return config_from_folder(folder).with_overrides(**overrides)

    @staticmethod
    def for_model(model_type: str, **kwargs: Any) -> PhiKitConfig:
        return config_from_dict({"model_type": model_type, **kwargs})


class _AutoModel:
    """Dispatch `from_pretrained` / `from_config` to the family class named `<Family><suffix>`."""

    suffix = ""

    @classmethod
    def _class_for(cls, config: PhiKitConfig):
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
        if not isinstance(config, PhiKitConfig):
            # The family comes from the config, read as the family class will read it (subfolder and variant
            # applied, errors naming the file); the class gets the original path, so name_or_path stays the hub id.
            folder = resolve_checkpoint_folder(path_or_id, kwargs.get("subfolder"), kwargs.get("variant"),
                                               kwargs.get("revision"), kwargs.get("local_files_only", False),
                                               kwargs.get("cache_dir"), kwargs.get("token"))
            config = resolve_config(folder, config, object, {}, None)
        return cls._class_for(config).from_pretrained(path_or_id, *args, config=config, **kwargs)


class AutoModel(_AutoModel):
    suffix = "Model"


class AutoModelForCausalLM(_AutoModel):
    suffix = "ForCausalLM"


class AutoModelForSequenceClassification(_AutoModel):
    suffix = "ForSequenceClassification"


class AutoModelForTokenClassification(_AutoModel):
    suffix = "ForTokenClassification"
