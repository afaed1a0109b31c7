"""Where the bundled model lives: the tiny Phi-3-architecture model trained on Python's standard library that ships
inside phikit, the default `--model` of `phikit generate`, `run`, `chat` and `serve`."""

from __future__ import annotations

import os


def default_model_path() -> str:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default_model")
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        raise OSError(f"this phikit install has no bundled model at {path}; pass --model with a checkpoint folder")
    return path
