"""Render a checkpoint's own jinja chat template in a sandbox, the way transformers' `apply_chat_template` does.

Chat templates come from model repositories, so they are untrusted code: they run in the bounded sandbox of
`phikit.tokenizer.template_sandbox` (no file access, no Python internals, immutable containers, a time limit
`template_sandbox.RENDER_SECONDS` and a size limit `template_sandbox.MAX_OUTPUT_CHARS`). Rendering is a pure function of its inputs: a failing template
leaves no state behind, and every failure, whatever its cause, is a `ChatTemplateError` naming the template.

The helpers match transformers' so the same templates render the same text: `raise_exception(msg)`,
`strftime_now(fmt)`, a `tojson` filter with `ensure_ascii`, `indent`, `separators`, `sort_keys` (and no HTML
escaping), `{% break %}` / `{% continue %}`, `trim_blocks` and `lstrip_blocks`, a `namespace` that refuses
underscore names, and the tokenizer's special tokens (`bos_token`, `eos_token`, ...) as variables.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError, TemplateSyntaxError

from . import template_sandbox
from .template_sandbox import (ChatTemplateError, RenderBudget, TemplateLimitError, TemplateRaised, bounded_render,
                               new_sandbox)

# A tag appended to the final message for `continue_final_message`, then cut off after rendering (as transformers).
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
DEFAULT_ORIGIN = "the chat template"
_FIX = "Fix the template, or pass a trusted one with chat_template=..."


@lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    return new_sandbox().from_string(source)


def compile_chat_template(source: str, origin: str = DEFAULT_ORIGIN) -> jinja2.Template:
    """Compile `source` in the chat sandbox (cached by source text); any failure is a `ChatTemplateError` naming
    `origin` (the file or setting the template came from)."""
    if not isinstance(source, str):
        raise ChatTemplateError(f"{origin} must be a string of jinja source; got {type(source).__name__}. {_FIX}")
    limit = template_sandbox.MAX_TEMPLATE_CHARS
    if len(source) > limit:
        raise ChatTemplateError(f"{origin} is {len(source)} characters long, over the limit of {limit} "
                                "(phikit.tokenizer.template_sandbox.MAX_TEMPLATE_CHARS). " + _FIX)
    try:
        return _compile(source)
    except TemplateSyntaxError as exc:
        raise ChatTemplateError(f"{origin} does not compile: {exc.message} (template line {exc.lineno}). "
                                + _FIX) from exc
    except RecursionError as exc:
        raise ChatTemplateError(f"{origin} does not compile: it nests too deeply for the parser. {_FIX}") from exc
    except Exception as exc:  # noqa: BLE001 - whatever jinja or Python's compiler raise, the user gets one error
        raise ChatTemplateError(f"{origin} does not compile: {type(exc).__name__}: {exc}. {_FIX}") from exc


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


def _message_error(where: str, text: str) -> ChatTemplateError:
    return ChatTemplateError(f"{where}: {text} Each message is a dict such as {{'role': 'user', 'content': 'Hi'}}.")


def check_conversation(chat: Any, where: str = "conversation") -> list:
    """The messages of one conversation (a list of message dicts, or an object with `.messages`), validated: each
    is a mapping with a string `role` and `content` that is a string, None, or a list of parts (multimodal)."""
    chat = getattr(chat, "messages", chat)
    if isinstance(chat, (str, bytes, Mapping)) or not isinstance(chat, (list, tuple)):
        raise _message_error(where, f"must be a list of messages, got {type(chat).__name__}.")
    for i, message in enumerate(chat):
        if not isinstance(message, Mapping):
            raise _message_error(f"{where}[{i}]", f"is a {type(message).__name__} ({str(message)[:60]!r}), "
                                 "not a message dict.")
        role = message.get("role")
        if not isinstance(role, str):
            raise _message_error(f"{where}[{i}]", "has no 'role'." if role is None else
                                 f"has role {role!r} of type {type(role).__name__}; the role must be a string.")
        content = message.get("content")
        if not (content is None or isinstance(content, str) or isinstance(content, (list, tuple)) and all(
                isinstance(part, (Mapping, str)) for part in content)):
            raise _message_error(f"{where}[{i}]", f"has content of type {type(content).__name__} "
                                 f"({str(content)[:60]!r}); content must be a string, None, or a list of parts "
                                 "such as [{'type': 'text', 'text': 'Hi'}].")
    return list(chat)


def _check_dicts(items: Any, name: str, shape: str) -> None:
    if items is None:
        return
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, (list, tuple)):
        raise ChatTemplateError(f"{name} must be a list of {shape}; got {type(items).__name__}.")
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ChatTemplateError(f"{name}[{i}] is a {type(item).__name__}; {name} must be {shape}.")


def render_chat(
    template: str,
    conversations: list[list[dict[str, Any]]],
    *,
    tools: list[dict] | None = None,
    documents: list[dict] | None = None,
    add_generation_prompt: bool = False,
    continue_final_message: bool | str = False,
    origin: str = DEFAULT_ORIGIN,
    max_seconds: float | None = None,
    max_chars: int | None = None,
    **template_kwargs: Any,
) -> list[str]:
    """Render each conversation with `template`; return one string per conversation.

    `template_kwargs` become template variables (the tokenizer passes its special tokens this way). `origin` names
    the template in errors (its file, or the setting it came from). Each render may take `max_seconds` (default
    `RENDER_SECONDS`) and build at most `max_chars` characters (default `MAX_OUTPUT_CHARS`). Raises
    `ChatTemplateError` when the template raises (with its message), breaks the sandbox, runs past a limit, or
    fails in any other way, and when the messages, tools or documents have the wrong shape.
    """
    if continue_final_message and add_generation_prompt:
        raise ValueError("continue_final_message and add_generation_prompt cannot both be set: the first continues "
                         "the last message, the second starts a new assistant message. Pass only one.")
    RenderBudget(max_seconds, max_chars)  # validates the limits before anything runs
    compiled = compile_chat_template(template, origin)
    _check_dicts(tools, "tools", "JSON-schema dicts {'type': 'function', 'function': {'name': ..., 'parameters': "
                 "...}}")
    _check_dicts(documents, "documents", "dicts with 'title' and 'text' keys")
    many = len(conversations) > 1
    chats = [check_conversation(c, f"conversation {n}" if many else "conversation")
             for n, c in enumerate(conversations)]
    tools, documents = plain_template_data(tools), plain_template_data(documents)
    variables = plain_template_data(template_kwargs)
    rendered = []
    for chat in chats:
        chat = plain_template_data([{k: v for k, v in dict(m).items() if v is not None} for m in chat])
        chat = _with_reasoning_aliases(chat)
        final = None
        if continue_final_message:
            field = continue_final_message if isinstance(continue_final_message, str) else "content"
            final = chat[-1].get(field) if chat else None
            if not isinstance(final, str):
                raise ValueError(f"continue_final_message is set but the final message has no text {field!r} "
                                 "to continue.")
            chat[-1][field] = final + _CONTINUE_TAG
        text = _render_one(compiled, origin, RenderBudget(max_seconds, max_chars),
                           dict(variables, messages=chat, tools=tools, documents=documents,
                                add_generation_prompt=add_generation_prompt))
        if final is not None:
            tag = text.rfind(_CONTINUE_TAG.strip())
            if tag < 0 or final.strip() not in text:
                raise ValueError("continue_final_message is set but the template dropped (part of) the final "
                                 f"message, so it cannot be continued. Final message: {final.strip()!r}")
            # a template that keeps spacing leaves the whole tag; one that trims leaves the stripped tag
            text = text[:tag] if text[tag:tag + len(_CONTINUE_TAG)] == _CONTINUE_TAG else text[:tag].rstrip()
        rendered.append(text)
    return rendered


def _render_one(compiled: jinja2.Template, origin: str, budget: RenderBudget, variables: dict[str, Any]) -> str:
    try:
        return bounded_render(compiled, budget, variables)
    except TemplateRaised as exc:
        raise ChatTemplateError(f"{origin} raised an error: {exc.message}") from exc
    except SecurityError as exc:
        raise ChatTemplateError(f"{origin} tried to leave its sandbox and was stopped: {exc}. Chat templates may "
                                "not read files or reach Python internals; use a trusted template "
                                "(chat_template=...).") from exc
    except TemplateLimitError as exc:
        raise ChatTemplateError(f"{origin} {exc.message}. {_FIX} (or raise the limit)") from exc
    except RecursionError as exc:
        raise ChatTemplateError(f"{origin} recursed too deeply (a macro or recursive loop that does not stop). "
                                + _FIX) from exc
    except MemoryError as exc:
        raise ChatTemplateError(f"{origin} ran out of memory while rendering. {_FIX}") from exc
    except Exception as exc:  # noqa: BLE001 - whatever a template does wrong, the user gets one clear error
        raise ChatTemplateError(f"{origin} failed while rendering: {type(exc).__name__}: {exc}. {_FIX}") from exc


def select_template(templates: str | dict[str, str] | None, chat_template: str | None, tools: list | None,
                    origins: Mapping[str, str] | None = None) -> tuple[str, str]:
    """Pick the template string like transformers: an explicit template (or its name in a dict of named templates),
    else `tool_use` when tools are given and present, else `default`. Returns (template, origin): where it came
    from, for error messages (`origins` maps a template name, or "default" for a single template, to its file)."""
    origins = origins or {}

    def named(name: str) -> tuple[str, str]:
        return templates[name], origins.get(name, f"the chat template {name!r}")

    if chat_template is not None and not isinstance(chat_template, str):
        raise ChatTemplateError(f"chat_template={chat_template!r} must be a jinja template string or the name of one "
                                "of the tokenizer's templates.")
    if isinstance(templates, dict):
        if chat_template is not None:
            return named(chat_template) if chat_template in templates else (chat_template,
                                                                             "the chat_template argument")
        if tools is not None and "tool_use" in templates:
            return named("tool_use")
        if "default" in templates:
            return named("default")
        raise ChatTemplateError(f"this tokenizer has several chat templates and no 'default'; pass chat_template= "
                                f"one of {sorted(templates)}.")
    if chat_template is not None:
        return chat_template, "the chat_template argument"
    if templates is None:
        raise ChatTemplateError("this tokenizer has no chat template (no chat_template.jinja, chat_template.json or "
                                "'chat_template' in tokenizer_config.json); pass one with chat_template='...' or "
                                "set tokenizer.chat_template.")
    return templates, origins.get("default", "the tokenizer's chat_template")


def template_for(templates: str | dict[str, str] | None, chat_template: str | None,
                 tools: list | None) -> str:
    """The template string `select_template` picks."""
    return select_template(templates, chat_template, tools)[0]


__all__ = ["ChatTemplateError", "check_conversation", "select_template", "compile_chat_template", "plain_template_data", "render_chat", "template_for"]
