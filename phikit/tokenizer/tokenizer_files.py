"""Find, read and write the files of a tokenizer: Hugging Face folders, SentencePiece models and GGUF vocabularies.

A folder is read as transformers reads it: the vocabulary from `tokenizer.json` (else a SentencePiece
`tokenizer.model`), settings from `tokenizer_config.json`, overridden by `special_tokens_map.json`, and the chat
template from `chat_template.jinja` (+ named ones in `chat_templates/`), else `chat_template.json`, else the
config's `chat_template`. Writing produces the same files, which transformers' `AutoTokenizer` loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer

from .gguf_vocab import gguf_to_tokenizer
from ..hub import resolve_folder
from .sentencepiece_model import build_sentencepiece_tokenizer, read_sentencepiece_model, sentencepiece_settings

VOCAB_FILES = ("tokenizer.json", "tokenizer.model")
SETTING_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json")
HUB_PATTERNS = [*VOCAB_FILES, *SETTING_FILES, "chat_templates/*.jinja"]
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class TokenizerLoadError(OSError):
    """Tokenizer files are missing or unreadable; the message names the folder or file and what was looked for."""


def resolve_tokenizer_path(path: str | os.PathLike, *, revision: str | None = None, local_files_only: bool = False,
                           cache_dir: str | os.PathLike | None = None, token: str | bool | None = None) -> Path:
    """Return a local folder or file for `path`: itself when it exists, else a hub snapshot of the tokenizer files."""
    name = os.fspath(path)
    local = Path(name).expanduser()
    if not local.exists() and local.suffix == ".gguf":
        raise TokenizerLoadError(f"{name}: no such GGUF file. Check the path.")
    return Path(resolve_folder(local if local.exists() else name, revision=revision,
                               local_files_only=local_files_only, patterns=HUB_PATTERNS,
                               cache_dir=None if cache_dir is None else os.fspath(cache_dir), token=token))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerLoadError(f"{path}: cannot read this JSON file ({exc}); re-download it.") from exc


def token_content(value: Any) -> str | None:
    """A special token from a config: a string, or an AddedToken dict `{"content": ...}`."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def read_chat_templates(folder: Path, config: dict[str, Any]) -> str | dict[str, str] | None:
    """The folder's chat template: a string, or a dict of named templates, or None."""
    named = {p.stem: p.read_text(encoding="utf-8") for p in sorted((folder / "chat_templates").glob("*.jinja"))}
    if (folder / "chat_template.jinja").is_file():
        default = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        return {"default": default, **named} if named else default
    if named:
        return named
    template: Any = None
    if (folder / "chat_template.json").is_file():
        template = _read_json(folder / "chat_template.json").get("chat_template")
    if template is None:
        template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
        return {item["name"]: item["template"] for item in template}
    return template


def added_tokens_from_config(decoder: dict[str, dict]) -> list[tuple[int, AddedToken]]:
    """`added_tokens_decoder` of tokenizer_config.json as (id, AddedToken), by id."""
    out = []
    for idx, spec in sorted(decoder.items(), key=lambda kv: int(kv[0])):
        out.append((int(idx), AddedToken(spec["content"], single_word=spec.get("single_word", False),
                                         lstrip=spec.get("lstrip", False), rstrip=spec.get("rstrip", False),
                                         normalized=spec.get("normalized", True), special=spec.get("special", False))))
    return out


def ensure_added_tokens(backend: Tokenizer, decoder: dict[str, dict], where: Path) -> None:
    """Add the config's added tokens the vocabulary lacks, at the ids the config gives (else raise)."""
    present = backend.get_added_tokens_decoder()
    for idx, tok in added_tokens_from_config(decoder):
        if idx in present:
            continue  # tokenizer.json is authoritative for tokens it has
        current = backend.token_to_id(tok.content)
        expected = current if current is not None else backend.get_vocab_size(with_added_tokens=True)
        if expected != idx:
            raise TokenizerLoadError(
                f"{where}: tokenizer_config.json gives {tok.content!r} id {idx}, but the vocabulary would give it id "
                f"{expected}. The tokenizer files are inconsistent; re-download them from one revision.")
        (backend.add_special_tokens if tok.special else backend.add_tokens)([tok])


def read_settings(folder: Path) -> dict[str, Any]:
    """The merged settings of a folder: tokenizer_config.json < special_tokens_map.json, plus the chat template."""
    config: dict[str, Any] = {}
    if (folder / "tokenizer_config.json").is_file():
        config.update(_read_json(folder / "tokenizer_config.json"))
    if (folder / "special_tokens_map.json").is_file():
        for key, value in _read_json(folder / "special_tokens_map.json").items():
            if value:  # the map wins over the config, as in transformers
                config[key] = value
    config["chat_template"] = read_chat_templates(folder, config)
    return config


def load_folder(folder: Path) -> tuple[Tokenizer, dict[str, Any]]:
    """Read a tokenizer folder: the backend `Tokenizer` and the merged settings (config < special_tokens_map)."""
    config = read_settings(folder)
    decoder = config.get("added_tokens_decoder") or {}
    if (folder / "tokenizer.json").is_file():
        try:
            backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:
            raise TokenizerLoadError(f"{folder / 'tokenizer.json'}: the tokenizers library cannot read it ({exc}). "
                                     "Re-download the file.") from exc
    elif (folder / "tokenizer.model").is_file():
        model = read_sentencepiece_model(folder / "tokenizer.model")
        # the .model file has no rstrip/lstrip flags: take them from the config's added tokens
        attrs = {tok.content: {"rstrip": tok.rstrip, "lstrip": tok.lstrip, "special": tok.special}
                 for _, tok in added_tokens_from_config(decoder)}
        backend = build_sentencepiece_tokenizer(model, attrs)
        for key, value in sentencepiece_settings(model).items():
            config.setdefault(key, value)
    else:
        raise TokenizerLoadError(
            f"{folder}: no tokenizer vocabulary found (looked for {', '.join(VOCAB_FILES)}). Point at a Hugging "
            "Face model folder that has one of them, or at a .gguf file (for a tiktoken vocabulary, use "
            "PhiTokenizer.from_tiktoken).")
    ensure_added_tokens(backend, decoder, folder)
    return backend, config


def load_gguf(path: Path) -> tuple[Tokenizer, dict[str, Any]]:
    """Read the vocabulary of a GGUF file: the backend `Tokenizer` and its settings."""
    return gguf_to_tokenizer(path)


def save_folder(folder: str | os.PathLike, backend: Tokenizer, config: dict[str, Any],
                chat_template: str | dict[str, str] | None) -> tuple[str, ...]:
    """Write tokenizer.json, tokenizer_config.json and chat template files; return the paths written."""
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: save_pretrained needs a folder, and this is a file.")
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "tokenizer.json", out / "tokenizer_config.json"]
    backend.save(str(written[0]))
    added = {str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                      "single_word": t.single_word, "special": t.special}
             for i, t in sorted(backend.get_added_tokens_decoder().items())}
    config = {**config, "added_tokens_decoder": added}
    if isinstance(chat_template, str):
        written.append(out / "chat_template.jinja")
        written[-1].write_text(chat_template, encoding="utf-8")
    elif isinstance(chat_template, dict):
        for name, text in chat_template.items():
            if name == "default":
                target = out / "chat_template.jinja"
            else:
                if Path(name).name != name or name.startswith("."):
                    raise ValueError(f"chat template name {name!r} is not a plain file name; rename it.")
                (out / "chat_templates").mkdir(exist_ok=True)
                target = out / "chat_templates" / f"{name}.jinja"
            target.write_text(text, encoding="utf-8")
            written.append(target)
    written[1].write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return tuple(str(p) for p in written)
