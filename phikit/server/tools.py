"""Tool calling in the chat API: which tools the prompt shows, with which template, whether a grammar forces a
call, and how the output's calls are read back.

    tools         OpenAI function tools: [{"type": "function", "function": {"name", "description", "parameters"}}]
    tool_choice   "none" (tools not shown, nothing parsed) | "auto" (the default with tools: shown, calls parsed) |
                  "required" | {"type": "function", "function": {"name": ...}} (a grammar forces a call)
    parallel_tool_calls  false: a forced call holds one item

The template: `--chat-template` when given; else, for a vocabulary with Phi-4-mini's tool tokens, phikit's
`phi4-mini-tools` template whenever tools or tool history are in the request (the official one cannot render
assistant tool calls or tool results); else the checkpoint's, which must read `tools` or the request is a 400.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

from .errors import bad_request

START, END = "<|tool_call|>", "<|/tool_call|>"


@dataclass
class ToolSetup:
    tools: list[dict[str, Any]] | None  # what the template shows (None: nothing)
    template: str | None  # the template to render with (None: the server's default)
    grammar: Any  # a Grammar forcing a call, or None
    parse: bool  # read calls back from the output


def marker_tokens(tokenizer: Any) -> bool:
    """Does the vocabulary have the tool-call markers as single tokens?"""
    ids = [tokenizer.convert_tokens_to_ids(m) for m in (START, END)]
    unk = getattr(tokenizer, "unk_token_id", None)
    return all(isinstance(i, int) and i != unk for i in ids)


def _check_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise bad_request("tools", f"tools must be a list of function tools, got {type(tools).__name__}")
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict) \
                or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise bad_request(f"tools[{i}]", "each tool must be {\"type\": \"function\", \"function\": {\"name\": "
                                             "..., \"parameters\": {...}}}")
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
            raise bad_request(f"tools[{i}]", f"tools[{i}].function.parameters must be a JSON schema object")
    return tools


def _has_tool_history(messages: Sequence[Any]) -> bool:
    return any(m.role == "tool" or getattr(m, "tool_calls", None) for m in messages)


def tool_setup(body: Any, tokenizer: Any, server_template: str | None) -> ToolSetup | None:
    """What the request's tools ask for (None: a request without tools or tool history)."""
    from ..tool_calls import builtin_template, template_reads_tools

    tools = _check_tools(body.tools) if body.tools else None
    choice = body.tool_choice
    if choice is None:
        choice = "auto" if tools else "none"
    if choice not in ("none", "auto", "required") and not (
            isinstance(choice, dict) and isinstance(choice.get("function"), dict)
            and isinstance(choice["function"].get("name"), str)):
        raise bad_request("tool_choice", f"tool_choice={choice!r} must be \"none\", \"auto\", \"required\" or "
                                         f"{{\"type\": \"function\", \"function\": {{\"name\": ...}}}}")
    if choice != "none" and not tools:
        raise bad_request("tool_choice", f"tool_choice={choice!r} needs tools; send tools or leave tool_choice unset")
    history = _has_tool_history(body.messages)
    if not tools and not history:
        return None
    shown = tools if choice != "none" else None
    has_markers = marker_tokens(tokenizer)
    template = server_template
    if template is None and has_markers:
        template = builtin_template("phi4-mini-tools")
    if shown and not _reads_tools(template or _default_template(tokenizer), template_reads_tools):
        raise bad_request("tools", "this model's chat template does not render tools, so the model would never see "
                                   "them; start the server with --chat-template phi4-mini-tools (or a template FILE "
                                   "that reads `tools`), or leave tools unset")
    grammar = None
    if choice == "required" or isinstance(choice, dict):
        forced = tools
        if isinstance(choice, dict):
            name = choice["function"]["name"]
            forced = [t for t in tools if t["function"]["name"] == name]
            if not forced:
                raise bad_request("tool_choice", f"tool_choice names {name!r}, which is not among the tools "
                                                 f"{[t['function']['name'] for t in tools]}")
        grammar = _forced_call_grammar(forced, has_markers, body.parallel_tool_calls is not False)
    return ToolSetup(shown, template, grammar, parse=shown is not None)


def _reads_tools(template: str, template_reads_tools: Any) -> bool:
    """A template that does not even parse shows no tools (rendering it fails on its own, as a 400 on messages)."""
    import jinja2
    try:
        return template_reads_tools(template)
    except jinja2.TemplateError:
        return False


def _default_template(tokenizer: Any) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("tool_use") or template.get("default") or ""
    return template or ""


def _forced_call_grammar(tools: list[dict[str, Any]], has_markers: bool, parallel: bool) -> Any:
    from ..structured import GrammarError, StructuredOutputUnavailable, tool_call_grammar
    try:
        return tool_call_grammar(tools, marker_tokens=has_markers, parallel=parallel, start=START, end=END,
                                 param="tool_choice")
    except StructuredOutputUnavailable as e:
        raise bad_request("tool_choice", f"this server cannot force a tool call: {e}") from e
    except GrammarError as e:
        raise bad_request("tools", f"the tools' parameters do not compile to a grammar: {e}") from e


def tool_call_dicts(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Assistant tool calls as templates read them: `function.arguments` a dict (transformers' convention), parsed
    from OpenAI's JSON string."""
    for i, message in enumerate(messages):
        for k, call in enumerate(message.get("tool_calls") or []):
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise bad_request(f"messages[{i}].tool_calls[{k}]", "a tool call must be {\"id\", \"type\": "
                                                                    "\"function\", \"function\": {\"name\", "
                                                                    "\"arguments\"}}")
            args = fn.get("arguments")
            if isinstance(args, str):
                try:
                    fn["arguments"] = json.loads(args) if args.strip() else {}
                except ValueError:
                    raise bad_request(f"messages[{i}].tool_calls[{k}].function.arguments",
                                      "arguments must be a JSON string of an object") from None
    return messages
