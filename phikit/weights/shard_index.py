"""Which weight files a checkpoint folder holds: `model.safetensors`, a shard index (`model.safetensors.index.json`,
`pytorch_model.bin.index.json`) and its shards, or `pytorch_model.bin`; `variant` names (`model.fp16.safetensors`).

File names read from a file (the index's `weight_map` values) must stay inside the folder: a relative path of plain
components, no `..`, no absolute path, drive letter, backslash or NUL. Symlinks are followed as the file system
does (the Hugging Face hub cache's snapshot folders are symlinks into its blobs); only the *names* are checked.
Every problem is a `CheckpointError` naming the index file and the entry.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from .refs import CheckpointError

SAFE_SINGLE, SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN_SINGLE, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFE_SINGLE, SAFE_INDEX, BIN_SINGLE, BIN_INDEX)


def check_relative_name(name: Any, where: str) -> str:
    """`name` as a path relative to a folder, refusing anything that could leave it; `where` names the source
    (e.g. "model.safetensors.index.json entry 'lm_head.weight'") in the error."""
    if not isinstance(name, str):
        raise CheckpointError(f"{where} is {name!r:.100} ({type(name).__name__}); a file name (a string) "
                              f"is needed. Re-download the file")
    problem = None
    if not name:
        problem = "is empty"
    elif "\0" in name:
        problem = "contains a NUL byte"
    elif "\\" in name:
        problem = "contains a backslash (file names in a checkpoint use '/' only)"
    elif name.startswith("/") or os.path.isabs(name) or re.match(r"^[A-Za-z]:", name):
        problem = "is an absolute path"
    elif any(part in ("", ".", "..") for part in name.split("/")):
        problem = "has an empty, '.' or '..' component"
    if problem:
        raise CheckpointError(f"{where} names the file {name!r}, which {problem}: files of a checkpoint must lie "
                              f"inside its folder. Fix or re-download the file")
    return name


def with_variant(name: str, variant: str | None) -> str:
    """transformers' naming: model.safetensors -> model.<variant>.safetensors, index.json -> index.<variant>.json."""
    if variant is None:
        return name
    parts = name.split(".")
    return ".".join(parts[:-1] + [variant] + parts[-1:])


def _check_variant(variant: Any) -> None:
    if variant is None:
        return
    if not isinstance(variant, str) or not variant or re.search(r"[/\\\0]", variant) or variant in (".", ".."):
        raise ValueError(f"variant={variant!r} must be a plain name such as 'fp16' (it is inserted into the file "
                         f"names: model.<variant>.safetensors)")


def read_shard_index(folder: str, index: str, suffix: str) -> list[str]:
    """The shard paths an index file names (sorted, each once), checked: a JSON object with a `weight_map` object
    of tensor name -> file name ending in `suffix`, every file inside `folder` and present."""
    path = os.path.join(folder, index)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise CheckpointError(f"{path} could not be read ({e}); re-download it") from e
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, nesting, huge numbers
        raise CheckpointError(f"{path} is not a valid shard index ({type(e).__name__}: {str(e)[:200]}); "
                              f"re-download it") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a JSON {type(data).__name__}; a shard index is an object with a "
                              f"'weight_map'. Re-download it")
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{path} has weight_map={json.dumps(weight_map)[:100]}; it must be an object of tensor "
                              f"name -> shard file name. Re-download it")
    if not weight_map:
        raise CheckpointError(f"{path} has an empty weight_map (no tensors, no shards); re-download it")
    for tensor, shard in weight_map.items():
        where = f"{path} entry {tensor!r}"
        check_relative_name(shard, where)
        if not shard.endswith(suffix):
            raise CheckpointError(f"{where} names {shard!r}, not a {suffix} file as {index} must; re-download it")
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
    if missing:
        first = next(t for t, s in weight_map.items() if s == missing[0])
        raise CheckpointError(f"{path} names {len(shards)} shards but {len(missing)} are absent from {folder}: "
                              f"{', '.join(missing[:5])} (the first holds tensor {first!r}); download the missing "
                              f"shard files")
    return [os.path.join(folder, s) for s in shards]


def find_weight_files(folder: str, variant: str | None = None, use_safetensors: bool | None = None) -> list[str]:
    """The weight files of a checkpoint folder, safetensors first (only safetensors with use_safetensors=True,
    only pytorch_model.bin with False, as transformers); raise naming what was looked for."""
    _check_variant(variant)
    if use_safetensors not in (None, True, False):
        raise ValueError(f"use_safetensors={use_safetensors!r} must be True, False or None")
    try:
        present = set(os.listdir(folder))
    except OSError as e:
        raise CheckpointError(f"{folder} is not a readable checkpoint folder ({e}); pass the folder that holds "
                              f"config.json and the weights") from e
    kinds = [((SAFE_SINGLE, SAFE_INDEX), ".safetensors"), ((BIN_SINGLE, BIN_INDEX), ".bin")]
    if use_safetensors is not None:
        kinds = kinds[:1] if use_safetensors else kinds[1:]
    looked = []
    for (single, index), suffix in kinds:
        single, index = with_variant(single, variant), with_variant(index, variant)
        looked += [single, index]
        if index in present:
            return read_shard_index(folder, index, suffix)
        if single in present and os.path.isfile(os.path.join(folder, single)):
            return [os.path.join(folder, single)]
    because = f" (use_safetensors={use_safetensors})" if use_safetensors is not None else ""
    raise CheckpointError(f"no weights in {folder}: looked for {', '.join(looked)}{because}; download the "
                          f"checkpoint completely or point at the folder that holds them")
