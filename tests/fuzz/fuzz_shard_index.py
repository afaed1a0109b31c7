"""Fuzz the shard index reader: bytes become `model.safetensors.index.json` in a folder with two real shards (and
a real shard just outside it); `find_weight_files`, then every tensor of what it returns is read. Only
`CheckpointError` may escape, and nothing outside the folder may be returned."""

from __future__ import annotations

import json
import os
import tempfile

ROOT = tempfile.mkdtemp(prefix="fuzz-index-")
FOLDER = os.path.join(ROOT, "ckpt")
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")


def _setup() -> None:
    import torch
    from safetensors.torch import save_file

    os.makedirs(FOLDER, exist_ok=True)
    os.makedirs(os.path.join(ROOT, "elsewhere"), exist_ok=True)
    save_file({"a": torch.ones(2)}, os.path.join(FOLDER, SHARDS[0]))
    save_file({"b": torch.zeros(3)}, os.path.join(FOLDER, SHARDS[1]))
    save_file({"c": torch.ones(1)}, os.path.join(ROOT, "elsewhere", "x.safetensors"))


_setup()


def TestOneInput(data: bytes) -> None:
    from phikit.weights.checkpoint import CheckpointError, CheckpointReader, find_weight_files

    with open(os.path.join(FOLDER, "model.safetensors.index.json"), "wb") as f:
        f.write(data)
    try:
        files = find_weight_files(FOLDER)
    except CheckpointError:
        return
    inside = os.path.realpath(FOLDER) + os.sep
    for path in files:  # a finding if a name left the folder
        if not os.path.abspath(path).startswith(os.path.abspath(FOLDER) + os.sep):
            raise RuntimeError(f"escaped the folder: {path!r}")
        assert os.path.realpath(path).startswith(inside), path
    try:
        with CheckpointReader(files) as reader:
            for name in reader.refs:
                reader.get(name)
    except CheckpointError:
        pass


def seeds() -> list[bytes]:
    good = {"a": SHARDS[0], "b": SHARDS[1]}
    return [json.dumps(x).encode() for x in (
        {"metadata": {"total_size": 20}, "weight_map": good},
        {"weight_map": {"a": SHARDS[0]}},
        {"weight_map": {"a": SHARDS[0], "c": "../elsewhere/x.safetensors"}},
        {"weight_map": {"b": "sub/" + SHARDS[1]}},
    )]


if __name__ == "__main__":
    from fuzzing import fuzz

    fuzz(TestOneInput, seeds(), ["phikit.weights.checkpoint", "phikit.weights.shard_index"], include=("phikit.weights",))
