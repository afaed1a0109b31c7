"""Check the JSON files and settings of a tokenizer before anything is built from them.

Every file a folder holds (`tokenizer_config.json`, `special_tokens_map.json`, `chat_template.json`,
`added_tokens.json`) must be a JSON object whose fields have the types transformers gives them; a wrong shape is a
`TokenizerFileError` naming the file, the field, the value and the fix, never a bare KeyError or TypeError.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_BOOL_FIELDS = ("clean_up_tokenization_spaces", "add_bos_token", "add_eos_token")
_SIDE_FIELDS = ("padding_side", "truncation_side")
_ADDED_FLAGS = ("single_word", "lstrip", "rstrip", "normalized", "special")


class TokenizerLoadError(OSError):
    """Tokenizer files are missing or unreadable; the message names the folder or file and what was looked for."""


class TokenizerFileError(TokenizerLoadError, ValueError):
    """A tokenizer file or setting has the wrong shape or type; the message names the file, the field and the fix."""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), f"a {type(value).__name__}")


def read_json(path: Path, expect: type = dict) -> Any:
    """The JSON content of `path`, which must be `expect` (an object by default)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TokenizerFileError(f"{path}: not UTF-8 text ({exc}); re-download the file.") from exc
    except OSError as exc:
        raise TokenizerLoadError(f"{path}: cannot read this file ({exc}).") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TokenizerFileError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                                 "re-download the file or fix it.") from exc
    except RecursionError as exc:
        raise TokenizerFileError(f"{path}: JSON nested too deeply to read; the file is corrupt.") from exc
    if not isinstance(data, expect):
        raise TokenizerFileError(f"{path}: must hold a JSON {'object' if expect is dict else 'list'}, but it holds "
                                 f"{_kind(data)}; re-download the file.")
    return data


def _fail(where: str, key: str, value: Any, want: str) -> TokenizerFileError:
    return TokenizerFileError(f"{where}: {key!r} is {_short(value)} ({_kind(value)}); it must be {want}. Fix or "
                              f"remove that field.")


def check_token(where: str, key: str, value: Any) -> None:
    """A special token: a string, null, or an AddedToken object with a string 'content'."""
    if value is None or isinstance(value, str):
        return
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return
    raise _fail(where, key, value, 'a token string, null, or an object {"content": "<token>", ...}')


def check_token_list(where: str, key: str, value: Any) -> None:
    """`additional_special_tokens` / `extra_special_tokens`: a list of tokens, or an object of named tokens."""
    if value is None:
        return
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else None
    if items is None:
        raise _fail(where, key, value, "a list of token strings (or an object of named tokens)")
    for index, token in items:
        check_token(where, f"{key}[{index!r}]", token)


def check_added_tokens_decoder(where: str, decoder: Any) -> None:
    """`added_tokens_decoder`: an object of id string -> {"content": str, flags...}."""
    if not isinstance(decoder, dict):
        raise _fail(where, "added_tokens_decoder", decoder, 'an object {"<id>": {"content": "<token>", ...}}')
    for key, spec in decoder.items():
        field = f"added_tokens_decoder[{key!r}]"
        if not (isinstance(key, str) and key.strip().isdecimal() or isinstance(key, int) and not isinstance(key, bool)):
            raise TokenizerFileError(f"{where}: {field}: the key must be a non-negative integer token id, got "
                                     f"{key!r}. Fix the id.")
        if not isinstance(spec, dict):
            raise _fail(where, field, spec, 'an object {"content": "<token>", "special": true, ...}')
        if not isinstance(spec.get("content"), str):
            raise TokenizerFileError(f"{where}: {field} has no string 'content' (got {_short(spec.get('content'))}); "
                                     'each added token needs {"content": "<token>"}.')
        for flag in _ADDED_FLAGS:
            if flag in spec and not isinstance(spec[flag], bool):
                raise _fail(where, f"{field}[{flag!r}]", spec[flag], "true or false")


def check_chat_template_value(where: str, key: str, value: Any) -> None:
    """A chat template setting: a string, null, a list of {"name": str, "template": str}, or (in code) a dict of
    name -> template."""
    if value is None or isinstance(value, str):
        return
    if isinstance(value, dict):
        for name, text in value.items():
            if not (isinstance(name, str) and isinstance(text, str)):
                raise _fail(where, f"{key}[{name!r}]", text, "a jinja template string under a string name")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            if not (isinstance(item, dict) and isinstance(item.get("name"), str)
                    and isinstance(item.get("template"), str)):
                raise _fail(where, f"{key}[{i}]", item, 'an object {"name": "<name>", "template": "<jinja>"}')
        return
    raise _fail(where, key, value, 'a jinja string or a list of {"name": ..., "template": ...} objects')


def check_max_length(where: str, key: str, value: Any) -> int | None:
    """`model_max_length`: a positive integer (floats as transformers writes 1e30 accepted), or null."""
    if value is None:
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(where, key, value, "a positive integer such as 4096 (or null for no limit)")
    return value


def check_settings(where: str, settings: dict[str, Any]) -> None:
    """Check the fields phikit reads from a tokenizer_config.json-like dict; raise `TokenizerFileError`."""
    for key in SPECIAL_TOKEN_KEYS:
        if key in settings:
            check_token(where, key, settings[key])
    for key in ("additional_special_tokens", "extra_special_tokens"):
        if key in settings:
            check_token_list(where, key, settings[key])
    for key in _BOOL_FIELDS:
        if settings.get(key) is not None and not isinstance(settings[key], bool):
            raise _fail(where, key, settings[key], "true, false or null")
    for key in _SIDE_FIELDS:
        if settings.get(key) is not None and settings[key] not in ("left", "right"):
            raise _fail(where, key, settings[key], '"left" or "right"')
    if "model_max_length" in settings:
        check_max_length(where, "model_max_length", settings["model_max_length"])
    names = settings.get("model_input_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise _fail(where, "model_input_names", names, 'a list of strings such as ["input_ids", "attention_mask"]')
    if "chat_template" in settings:
        check_chat_template_value(where, "chat_template", settings["chat_template"])
    if settings.get("added_tokens_decoder") is not None:
        check_added_tokens_decoder(where, settings["added_tokens_decoder"])
    if settings.get("tokenizer_class") is not None and not isinstance(settings["tokenizer_class"], str):
        raise _fail(where, "tokenizer_class", settings["tokenizer_class"], "a class name string")


def check_added_tokens_file(path: Path, data: dict[str, Any]) -> None:
    """`added_tokens.json`: an object of token string -> non-negative integer id."""
    for token, idx in data.items():
        if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
            raise _fail(str(path), token, idx, "a non-negative integer token id")


__all__ = ["SPECIAL_TOKEN_KEYS", "TokenizerFileError", "TokenizerLoadError", "check_added_tokens_decoder",
           "check_added_tokens_file", "check_chat_template_value", "check_max_length", "check_settings",
           "check_token", "read_json"]
