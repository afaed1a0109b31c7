"""`GenerationConfig`: generation defaults read from `generation_config.json`, overridable per call."""

from __future__ import annotations

import copy
import json
import os
from typing import Any

from .generation_checks import GenerationArgumentError, validate_generation_config

DEFAULT_NEW_TOKENS = 20

DEFAULTS: dict[str, Any] = {
    "max_length": None,  # None: 20 new tokens after the prompt, within the context (transformers 5's default)
    "max_new_tokens": None,
    "min_length": 0,
    "min_new_tokens": None,
    "do_sample": False,
    "num_beams": 1,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "min_p": None,
    "typical_p": 1.0,
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "suppress_tokens": None,
    "length_penalty": 1.0,
    "early_stopping": False,
    "num_return_sequences": 1,
    "guidance_scale": None,
    "stop_strings": None,
    "max_time": None,
    "output_scores": False,
    "output_logits": False,
    "return_dict_in_generate": False,
    "cache_implementation": None,
    "use_cache": True,
    "bos_token_id": None,
    "eos_token_id": None,
    "pad_token_id": None,
}


class GenerationConfig:
    """Attributes are the `generation_config.json` keys; unknown keys are kept and written back."""

    def __init__(self, **kwargs: Any) -> None:
        # Metadata keys such as "_from_model_config" are kept; names Python reserves are not attributes to set.
        kwargs = {k: v for k, v in kwargs.items() if not (k.startswith("__") or k == "_explicit")}
        self._explicit = {k for k, v in kwargs.items() if v is not None}  # what a file or a caller set
        for name, default in DEFAULTS.items():
            setattr(self, name, copy.deepcopy(kwargs.pop(name, default)))
        for name, value in kwargs.items():
            setattr(self, name, value)

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> "GenerationConfig":
        return cls(**{**data, **overrides})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> "GenerationConfig":
        path = os.fspath(path)
        file = os.path.join(path, "generation_config.json") if os.path.isdir(path) else path
        try:
            with open(file, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"no generation_config.json in {path}") from e
        except UnicodeDecodeError as e:
            raise GenerationArgumentError(f"{file} is not UTF-8 text ({e}); fix or delete it") from None
        except (ValueError, RecursionError) as e:  # bad JSON, nesting too deep, an integer of too many digits
            raise GenerationArgumentError(f"{file} is not valid JSON ({type(e).__name__}: {str(e)[:200]}); fix or "
                                          f"delete it") from None
        if not isinstance(data, dict):
            raise GenerationArgumentError(f"{file} holds a JSON {type(data).__name__}, not an object of generation "
                                          f"options; fix or delete it")
        return cls.from_dict(data, **overrides)

    @classmethod
    def from_model_config(cls, config) -> "GenerationConfig":
        return cls(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                   pad_token_id=config.pad_token_id)

    def to_dict(self) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in vars(self).items() if not k.startswith("_")}

    def to_diff_dict(self) -> dict[str, Any]:
        """The values set (by a file or a caller) or differing from the defaults: what generation_config.json holds."""
        explicit = getattr(self, "_explicit", set())
        return {k: v for k, v in self.to_dict().items()
                if k not in DEFAULTS or DEFAULTS[k] != v or (k in explicit and v is not None)}

    def validate(self, vocab_size: int | None = None) -> None:
        """Raise `GenerationArgumentError` (a ValueError) naming the first field whose value generate cannot run:
        its type, its range, or a combination (transformers 5's `GenerationConfig.validate` checks and more)."""
        validate_generation_config(self, vocab_size)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "generation_config.json"), "w", encoding="utf-8") as f:
            json.dump(self.to_diff_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    def update(self, **kwargs: Any) -> dict[str, Any]:
        """Set the known keys; return the ones this config does not have (the caller decides what they mean)."""
        unused = {}
        for k, v in kwargs.items():
            if hasattr(self, k) and not k.startswith("_"):
                setattr(self, k, v)
                if v is not None:
                    self._explicit = getattr(self, "_explicit", set()) | {k}
            else:
                unused[k] = v
        return unused

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GenerationConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"GenerationConfig {json.dumps(self.to_diff_dict(), sort_keys=True)}"


def merge_eos_ids(*sources: int | list[int] | None) -> list[int]:
    """The union of every eos id any source names, in first-seen order (Phi-3 stops on <|end|> 32007 as well as
    <|endoftext|> 32000: never let one list replace another)."""
    out: list[int] = []
    for source in sources:
        for i in source if isinstance(source, (list, tuple)) else [source]:
            if i is not None and int(i) not in out:
                out.append(int(i))
    return out
