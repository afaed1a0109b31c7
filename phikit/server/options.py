"""`phikit serve`'s options (`ServeOptions`, one field per flag) and the weight format a `--weights` choice means."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_BODY_MB = 16.0


@dataclass
class ServeOptions:
    """`phikit serve`'s flags."""

    model: str
    served_model_name: str
    host: str = "127.0.0.1"
    port: int = 8000
    port_file: str | None = None
    parallel: int = 4
    ctx_size: int | None = None
    max_num_batched_tokens: int = 512
    max_queue: int = 64
    api_key: str | None = None
    chat_template: str | None = None  # a file
    dtype: str = "auto"
    weights: str = "auto"
    device: str | None = None
    deterministic: bool = True
    prefix_cache: bool = True
    max_body_mb: float = DEFAULT_MAX_BODY_MB
    drain_timeout_s: float = 30.0
    log_level: str = "warning"
    tp: int = 1  # tensor-parallel ranks (server/tensor_parallel.py)


def quantization_for(weights: str) -> Any:
    """The `quantization_config` of a `--weights` choice (as `phikit generate`)."""
    from ..formats.configs import Int4WeightOnlyConfig, Int8WeightOnlyConfig
    from ..formats.lossless import LosslessBf16Config

    return {"auto": LosslessBf16Config(required=False), "plain": None, "lossless": LosslessBf16Config(),
            "int8": Int8WeightOnlyConfig(), "int4": Int4WeightOnlyConfig(group_size=128)}[weights]
