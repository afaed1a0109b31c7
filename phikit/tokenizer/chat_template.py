"""Render a checkpoint's own jinja chat template in a sandbox, the way transformers' `apply_chat_template` does.

Chat templates come from model repositories, so they are untrusted code. They run in jinja's
`ImmutableSandboxedEnvironment` with no loader (`{% include %}` / `{% import %}` / `{% extends %}` cannot read
files), containers the template cannot mutate, and every access to an unsafe attribute (`__class__`, `__globals__`,
`_private`, ...) raising at once instead of rendering as an empty string, so an escape attempt is reported and never
half-renders. Rendering is a pure function of its inputs: a failing template leaves no state behind.

The helpers match transformers' so the same templates render the same text: `raise_exception(msg)`,
`strftime_now(fmt)`, a `tojson` filter with `ensure_ascii`, `indent`, `separators`, `sort_keys` (and no HTML
escaping), `{% break %}` / `{% continue %}`, `trim_blocks` and `lstrip_blocks`, a `namespace` that refuses
underscore names, and the tokenizer's special tokens (`bos_token`, `eos_token`, ...) as variables.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any, NoReturn

import jinja2
import jinja2.ext
import jinja2.utils
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

# A tag appended to the final message for `continue_final_message`, then cut off after rendering (as transformers).
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(ValueError):
    """A chat template failed to compile or render, raised on purpose, or tried to leave the sandbox."""


class _TemplateRaised(TemplateError):
    """What `raise_exception(...)` inside a template raises; carries the template's own message."""


class _TemplateNamespace(jinja2.utils.Namespace):
    """jinja's `namespace()`, refusing underscore-prefixed names so a template cannot plant dunder attributes."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # same signature trick as jinja's Namespace
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"chat templates cannot store the underscore-prefixed attribute {name!r} on a namespace")


class _TemplateDict:
    """`dict(...)` / `dict.fromkeys(...)` for templates, without exposing the `dict` type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _ChatSandbox(ImmutableSandboxedEnvironment):
    """The sandbox: no template loading, and unsafe attribute access fails loudly at the point of access."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> NoReturn:
        # jinja's default returns an Undefined that renders as "" until used further; raise now instead, so
        # `{{ ''.__class__ }}` is an error rather than silently empty output.
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is unsafe")

    def get_template(self, name: Any, *args: Any, **kwargs: Any) -> NoReturn:
        raise SecurityError(f"chat templates cannot load other templates or files (asked for {name!r})")

    select_template = get_or_select_template = get_template


def _raise_exception(message: str) -> NoReturn:
    raise _TemplateRaised(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # jinja's own tojson escapes <, >, & and ' for HTML; chat templates need the plain JSON transformers writes.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=32)
def compile_chat_template(source: str) -> jinja2.Template:
    """Compile `source` in the chat sandbox (cached by source text); raises `ChatTemplateError` on bad syntax."""
    env = _ChatSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_TemplateDict(),
                       namespace=_TemplateNamespace)
    try:
        return env.from_string(source)
    except TemplateSyntaxError as exc:
        raise ChatTemplateError(f"the chat template does not compile: {exc.message} (template line {exc.lineno}). "
                                "Fix the template or pass another one with chat_template=...") from exc


def plain_template_data(value: Any) -> Any:
    """Copy `value` into plain JSON types (str, int, float, bool, None, dict, list, tuple).

    Rich objects in user inputs (tensors, images, pydantic models, str subclasses) have methods the sandbox does not
    know are dangerous, so the template only ever sees fresh plain data; anything else becomes `"<TypeName>"`.
    """
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {plain_template_data(k): plain_template_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_template_data(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain_template_data(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain_template_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):  # pydantic models
        return plain_template_data(value.model_dump())
    if type(value).__module__ == "numpy" and callable(getattr(value, "item", None)) and getattr(value, "ndim", 1) == 0:
        return plain_template_data(value.item())  # numpy scalars; np.bool_(False) must stay falsy
    return f"<{type(value).__name__}>"


def _with_reasoning_aliases(chat: list[dict]) -> list[dict]:
    # transformers fills `reasoning_content` (and `thinking`) from whichever reasoning field a message has.
    out = []
    for message in chat:
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        out.append(message if reasoning is None else {"thinking": reasoning, **message, "reasoning_content": reasoning})
    return out


def render_chat(
    template: str,
    conversations: list[list[dict[str, Any]]],
    *,
    tools: list[dict] | None = None,
    documents: list[dict] | None = None,
    add_generation_prompt: bool = False,
    continue_final_message: bool | str = False,
    **template_kwargs: Any,
) -> list[str]:
    """Render each conversation with `template`; return one string per conversation.

    `template_kwargs` become template variables (the tokenizer passes its special tokens this way). Raises
    `ChatTemplateError` when the template raises (with its message), breaks the sandbox, or fails in any other way.
    """
    if continue_final_message and add_generation_prompt:
        raise ValueError("continue_final_message and add_generation_prompt cannot both be set: the first continues "
                         "the last message, the second starts a new assistant message. Pass only one.")
    compiled = compile_chat_template(template)
    if tools is not None:
        for tool in tools:
            if not isinstance(tool, Mapping):
                raise TypeError(f"tools must be JSON-schema dicts (got a {type(tool).__name__}); write the schema "
                                "as a dict {'type': 'function', 'function': {'name': ..., 'parameters': ...}}.")
    if documents is not None:
        for doc in documents:
            if not isinstance(doc, Mapping):
                raise TypeError(f"documents must be dicts with 'title' and 'text' keys (got a {type(doc).__name__}).")
    tools, documents = plain_template_data(tools), plain_template_data(documents)
    variables = plain_template_data(template_kwargs)
    rendered = []
    for chat in conversations:
        chat = getattr(chat, "messages", chat)
        chat = plain_template_data([{k: v for k, v in dict(m).items() if v is not None} if isinstance(m, Mapping)
                                    else m for m in chat])
        for message in chat:
            if not isinstance(message, dict):
                raise TypeError(f"chat messages must be dicts with 'role' and 'content'; got {message!r}.")
        chat = _with_reasoning_aliases(chat)
        final = None
        if continue_final_message:
            field = continue_final_message if isinstance(continue_final_message, str) else "content"
            final = chat[-1].get(field) if chat else None
            if not isinstance(final, str):
                raise ValueError(f"continue_final_message is set but the final message has no text {field!r} "
                                 "to continue.")
            chat[-1][field] = final + _CONTINUE_TAG
        try:
            text = compiled.render(messages=chat, tools=tools, documents=documents,
                                   add_generation_prompt=add_generation_prompt, **variables)
        except _TemplateRaised as exc:
            raise ChatTemplateError(f"the chat template raised an error: {exc.message}") from exc
        except SecurityError as exc:
            raise ChatTemplateError(f"the chat template tried to leave its sandbox and was stopped: {exc}. Chat "
                                    "templates may not read files or reach Python internals; use a trusted "
                                    "template (chat_template=...).") from exc
        except (TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            raise ChatTemplateError(f"the chat template failed while rendering: {type(exc).__name__}: {exc}") from exc
        if final is not None:
            tag = text.rfind(_CONTINUE_TAG.strip())
            if tag < 0 or final.strip() not in text:
                raise ValueError("continue_final_message is set but the template dropped (part of) the final "
                                 f"message, so it cannot be continued. Final message: {final.strip()!r}")
            # a template that keeps spacing leaves the whole tag; one that trims leaves the stripped tag
            text = text[:tag] if text[tag:tag + len(_CONTINUE_TAG)] == _CONTINUE_TAG else text[:tag].rstrip()
        rendered.append(text)
    return rendered


def template_for(templates: str | dict[str, str] | None, chat_template: str | None,
                 tools: list | None) -> str:
    """Pick the template string like transformers: an explicit template (or its name in a dict of named templates),
    else `tool_use` when tools are given and present, else `default`."""
    if isinstance(templates, dict):
        if chat_template is not None:
            return templates.get(chat_template, chat_template)
        if tools is not None and "tool_use" in templates:
            return templates["tool_use"]
        if "default" in templates:
            return templates["default"]
        raise ValueError(f"this tokenizer has several chat templates and no 'default'; pass chat_template= one of "
                         f"{sorted(templates)}.")
    if chat_template is not None:
        return chat_template
    if templates is None:
        raise ValueError("this tokenizer has no chat template (no chat_template.jinja, chat_template.json or "
                         "'chat_template' in tokenizer_config.json); pass one with chat_template='...' or set "
                         "tokenizer.chat_template.")
    return templates


__all__ = ["ChatTemplateError", "compile_chat_template", "plain_template_data", "render_chat", "template_for"]
