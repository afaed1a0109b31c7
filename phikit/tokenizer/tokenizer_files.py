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
from .settings_check import (SPECIAL_TOKEN_KEYS, TokenizerFileError, TokenizerLoadError, check_added_tokens_file,
                             check_chat_template_value, check_settings, read_json)

VOCAB_FILES = ("tokenizer.json", "tokenizer.model")
SETTING_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json",
                 "added_tokens.json")
HUB_PATTERNS = [*VOCAB_FILES, *SETTING_FILES, "chat_templates/*.jinja"]
ORIGINS_KEY = "_chat_template_origins"  # template text -> the file it came from, for error messages


def resolve_tokenizer_path(path: str | os.PathLike, *, revision: str | None = None, local_files_only: bool = False,
                           cache_dir: str | os.PathLike | None = None, token: str | bool | None = None) -> Path:
    """Return a local folder or file for `path`: itself when it exists, else a hub snapshot of the tokenizer files."""
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, str) and not path.strip():
        raise ValueError(f"pretrained_model_name_or_path={path!r} must be a folder, a .gguf file or a hub id "
                         "(a non-empty str or path).")
    name = os.fspath(path)
    local = Path(name).expanduser()
    if not local.exists() and local.suffix == ".gguf":
        raise TokenizerLoadError(f"{name}: no such GGUF file. Check the path.")
    return Path(resolve_folder(local if local.exists() else name, revision=revision,
                               local_files_only=local_files_only, patterns=HUB_PATTERNS,
                               cache_dir=None if cache_dir is None else os.fspath(cache_dir), token=token))


def token_content(value: Any) -> str | None:
    """A special token from a config: a string, an AddedToken, or an AddedToken dict `{"content": ...}`."""
    if isinstance(value, AddedToken):
        return value.content
    if isinstance(value, dict):
        return value.get("content")
    return value


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TokenizerFileError(f"{path}: a chat template must be UTF-8 text ({exc}); fix or re-download it.") from exc
    except OSError as exc:
        raise TokenizerLoadError(f"{path}: cannot read this file ({exc}).") from exc


def read_chat_templates(folder: Path, config: dict[str, Any],
                        origins: dict[str, str] | None = None) -> str | dict[str, str] | None:
    """The folder's chat template: a string, or a dict of named templates, or None. `origins` (when given) is filled
    with template text -> the file (and field) it was read from."""
    origins = {} if origins is None else origins

    def keep(text: str, origin: str) -> str:
        origins.setdefault(text, origin)
        return text

    named = {p.stem: keep(_read_text(p), str(p)) for p in sorted((folder / "chat_templates").glob("*.jinja"))}
    if (folder / "chat_template.jinja").is_file():
        path = folder / "chat_template.jinja"
        default = keep(_read_text(path), str(path))
        return {"default": default, **named} if named else default
    if named:
        return named
    template: Any = None
    where = ""
    if (folder / "chat_template.json").is_file():
        where = str(folder / "chat_template.json")
        template = read_json(folder / "chat_template.json").get("chat_template")
        check_chat_template_value(where, "chat_template", template)
    if template is None:
        template = config.get("chat_template")
        where = f"{folder / 'tokenizer_config.json'}"
        check_chat_template_value(where, "chat_template", template)
    if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
        template = {item["name"]: item["template"] for item in template}
    if isinstance(template, dict):
        return {name: keep(text, f"{where} (chat template {name!r})") for name, text in template.items()}
    return None if template is None else keep(template, f"{where} ('chat_template')")


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
            raise TokenizerFileError(
                f"{where}: tokenizer_config.json gives {tok.content!r} id {idx}, but the vocabulary would give it id "
                f"{expected}. The tokenizer files are inconsistent; re-download them from one revision.")
        (backend.add_special_tokens if tok.special else backend.add_tokens)([tok])


def read_settings(folder: Path) -> dict[str, Any]:
    """The merged settings of a folder: tokenizer_config.json < special_tokens_map.json, plus the chat template
    (and, under `ORIGINS_KEY`, where each template came from). Every file is checked before it is used."""
    config: dict[str, Any] = {}
    if (folder / "tokenizer_config.json").is_file():
        path = folder / "tokenizer_config.json"
        data = read_json(path)
        check_settings(str(path), data)
        config.update(data)
    if (folder / "special_tokens_map.json").is_file():
        path = folder / "special_tokens_map.json"
        # only special tokens are read from the map (as transformers); they win over the config
        data = {k: v for k, v in read_json(path).items() if k in SPECIAL_TOKEN_KEYS or k == "additional_special_tokens"}
        check_settings(str(path), data)
        for key, value in data.items():
            if value:
                config[key] = value
    if (folder / "added_tokens.json").is_file():  # legacy {token: id}; ids not in the config's decoder are added
        path = folder / "added_tokens.json"
        data = read_json(path)
        check_added_tokens_file(path, data)
        decoder = dict(config.get("added_tokens_decoder") or {})
        for token, idx in data.items():
            decoder.setdefault(str(idx), {"content": token, "special": False, "normalized": False})
        config["added_tokens_decoder"] = decoder
    origins: dict[str, str] = {}
    config["chat_template"] = read_chat_templates(folder, config, origins)
    config[ORIGINS_KEY] = origins
    return config


def load_folder(folder: Path) -> tuple[Tokenizer, dict[str, Any]]:
    """Read a tokenizer folder: the backend `Tokenizer` and the merged settings (config < special_tokens_map)."""
    config = read_settings(folder)
    decoder = config.get("added_tokens_decoder") or {}
    if (folder / "tokenizer.json").is_file():
        try:
            backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - tokenizers raises Exception, or a Rust PanicException
            raise TokenizerFileError(f"{folder / 'tokenizer.json'}: the tokenizers library cannot read it "
                                     f"({type(exc).__name__}: {exc}). Re-download the file.") from exc
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


def load_gguf(path: str | os.PathLike) -> tuple[Tokenizer, dict[str, Any]]:
    """Read the vocabulary of a GGUF file: the backend `Tokenizer` and its settings."""
    return gguf_to_tokenizer(path)


def _template_files(out: Path, chat_template: str | dict[str, str] | None) -> dict[Path, str]:
    """The chat template files to write (checked: strings, plain file names), by path."""
    if chat_template is None:
        return {}
    if isinstance(chat_template, str):
        return {out / "chat_template.jinja": chat_template}
    if not isinstance(chat_template, dict):
        raise ValueError(f"tokenizer.chat_template is a {type(chat_template).__name__}; it must be a jinja string, "
                         "a dict of name -> jinja string, or None. Set it to one of those before saving.")
    files: dict[Path, str] = {}
    for name, text in chat_template.items():
        if not isinstance(name, str) or not isinstance(text, str):
            raise ValueError(f"tokenizer.chat_template[{name!r}] is a {type(text).__name__} under a "
                             f"{type(name).__name__} name; named chat templates are str names -> jinja strings.")
        if name == "default":
            files[out / "chat_template.jinja"] = text
            continue
        if not name or Path(name).name != name or name.startswith(".") or "\\" in name or "\0" in name:
            raise ValueError(f"chat template name {name!r} is not a plain file name (it becomes "
                             f"chat_templates/<name>.jinja); rename it, e.g. 'tool_use'.")
        files[out / "chat_templates" / f"{name}.jinja"] = text
    return files


def save_folder(folder: str | os.PathLike, backend: Tokenizer, config: dict[str, Any],
                chat_template: str | dict[str, str] | None) -> tuple[str, ...]:
    """Write tokenizer.json, tokenizer_config.json and chat template files; return the paths written.

    Everything is checked and serialised first, then each file is written under a temporary name and renamed into
    place, so a call that fails leaves the folder as it was."""
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: save_pretrained needs a folder, and this is a file.")
    templates = _template_files(out, chat_template)
    added = {str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                      "single_word": t.single_word, "special": t.special}
             for i, t in sorted(backend.get_added_tokens_decoder().items())}
    try:
        config_text = json.dumps({**config, "added_tokens_decoder": added}, indent=2, ensure_ascii=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the tokenizer's settings cannot be written as JSON ({exc}); set them to plain strings, "
                         "numbers and lists.") from exc
    contents = {out / "tokenizer.json": backend.to_str(pretty=True), out / "tokenizer_config.json": config_text,
                **templates}
    out.mkdir(parents=True, exist_ok=True)
    if any(p.parent != out for p in contents):
        (out / "chat_templates").mkdir(exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for path, text in contents.items():
            temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            temp.write_text(text, encoding="utf-8")
            staged.append((temp, path))
        for temp, path in staged:
            os.replace(temp, path)
    finally:
        for temp, _ in staged:
            temp.unlink(missing_ok=True)
    # Template files of an earlier save that this tokenizer does not have would be read back as its templates.
    stale = [out / "chat_template.jinja", out / "chat_template.json", *(out / "chat_templates").glob("*.jinja")]
    for path in stale:
        if path not in contents and path.is_file():
            path.unlink()
    return tuple(str(p) for p in contents)
