"""Fuzz target: bytes as a checkpoint's config.json, read by `AutoConfig.from_pretrained`. Only `ConfigError` may
escape. The seeds are real config shapes of each family, which libFuzzer mutates."""

from __future__ import annotations

import json
import os
import tempfile

SEEDS = [
    {"model_type": "phi3", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
     "num_attention_heads": 4, "rope_scaling": {"type": "su", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4},
     "original_max_position_embeddings": 16, "max_position_embeddings": 64, "pad_token_id": 0},
    {"model_type": "phi", "vocab_size": 64, "hidden_size": 32, "num_attention_heads": 4, "partial_rotary_factor": 0.5,
     "layer_norm_eps": 1e-5, "id2label": {"0": "NEG", "1": "POS"}},
    {"model_type": "phi-msft", "n_embd": 32, "n_head": 4, "n_layer": 2, "rotary_dim": 4, "vocab_size": 64},
    {"architectures": ["PhimoeForCausalLM"], "vocab_size": 64, "hidden_size": 32, "num_attention_heads": 4,
     "num_key_value_heads": 2, "num_local_experts": 4, "rope_theta": 1e6, "torch_dtype": "bfloat16"},
]


def seed_corpus() -> list[bytes]:
    return [json.dumps(s).encode() for s in SEEDS]


_folder = tempfile.mkdtemp(prefix="phikit-fuzz-config-")
KEYS = sorted({k for s in SEEDS for k in s} | {"rope_parameters", "sliding_window", "eos_token_id", "head_dim",
                                               "dtype", "num_labels", "label2id", "validate", "rotary_dim"})


def _value(take, depth: int = 0):
    """A JSON value of any type from the fuzzer's bytes (NaN and infinities included)."""
    head = take(1)
    kind = head[0] % 9 if head else 0
    raw = take(8).ljust(8, b"\0")
    number = int.from_bytes(raw, "little", signed=True)
    if kind == 0:
        return number % 200 - 100
    if kind == 1:
        return [float("nan"), float("inf"), -float("inf"), 0.0, -1.0, 1e-5, 1e308, 0.5][number % 8]
    if kind == 2:
        return raw.decode("latin-1")
    if kind == 3 and depth < 3:
        return [_value(take, depth + 1) for _ in range(number % 5)]
    if kind == 4 and depth < 3:
        return {KEYS[number % len(KEYS)]: _value(take, depth + 1)}
    return [None, True, False, number, 2**40, "longrope", "su", "phi3", "bfloat16"][kind]


def _structured(data: bytes) -> bytes:
    """A seed config with a few of its keys set to fuzzed values: reaches the validation the raw bytes rarely do."""
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        chunk, pos = data[pos:pos + n], pos + n
        return chunk

    config = dict(SEEDS[data[0] % len(SEEDS)]) if data else {}
    while pos < len(data):
        key = take(1)
        config[KEYS[key[0] % len(KEYS)] if key else "x"] = _value(take)
    return json.dumps(config).encode()


def TestOneInput(data: bytes) -> None:
    from phikit.config import config_from_folder
    from phikit.errors import ConfigError

    with open(os.path.join(_folder, "config.json"), "wb") as f:
        f.write(_structured(data[1:]) if data[:1] == b"S" or (data and data[0] % 2) else data)
    try:
        config_from_folder(_folder)
    except ConfigError:
        pass


if __name__ == "__main__":
    from fuzzing import fuzz

    fuzz(TestOneInput, seed_corpus(), ["phikit.config", "phikit.config_files", "phikit.rope_config"])
