"""Resolve `from_pretrained`'s first argument to a local folder: a path as is, a hub id via huggingface_hub."""

from __future__ import annotations

import os

# What a checkpoint folder may hold; downloads take only these (never *.pt pickles or remote code).
CHECKPOINT_PATTERNS = [
    "config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "added_tokens.json",
    "chat_template.jinja", "chat_template.json", "chat_templates/*.jinja",
]
BIN_PATTERNS = ["pytorch_model.bin", "pytorch_model-*.bin", "pytorch_model.bin.index.json"]


class HubError(OSError):
    """A hub id could not be resolved; the message says how to point at a local folder instead."""


def resolve_folder(path_or_id: str | os.PathLike, revision: str | None = None, local_files_only: bool = False,
                   patterns: list[str] | None = None, cache_dir: str | None = None, token: str | bool | None = None
                   ) -> str:
    """A local folder holding the checkpoint: `path_or_id` itself if it exists, else a hub snapshot."""
    path = os.fspath(path_or_id)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        return path  # a single file (e.g. a .gguf); callers check what they accept
    if path.count("/") > 1 or path.startswith((".", "/", "~")) or not path:
        raise HubError(f"{path!r} is not a local folder, and not a hub id of the form 'org/name'; "
                       f"check the path")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import HfHubHTTPError
    except ImportError as e:  # pragma: no cover - huggingface_hub is a dependency
        raise HubError("huggingface_hub is needed to download; pip install huggingface_hub") from e
    offline = local_files_only or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    allow = patterns or CHECKPOINT_PATTERNS + BIN_PATTERNS
    try:
        return snapshot_download(path, revision=revision, allow_patterns=allow, local_files_only=offline,
                                 cache_dir=cache_dir, token=token)
    except (HfHubHTTPError, OSError, ValueError) as e:
        how = "offline, and it is not in the local cache" if offline else f"could not be downloaded ({type(e).__name__})"
        raise HubError(f"{path!r} is not a local folder and {how}: download it on a connected machine "
                       f"(huggingface-cli download {path} --local-dir DIR) and pass DIR instead") from e
