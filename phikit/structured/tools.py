"""The grammar of a forced tool call (`tool_choice: "required"` or a named function): the call marker, a JSON array of
calls whose items each match one tool (`{"name": <the tool's name>, "arguments": <its parameters schema>}`), and the
end marker; then only the stop ids. With it even a model that was never taught tools emits a call that parses and
validates.

Markers are special tokens where the vocabulary has them (Phi-4-mini's `<|tool_call|>` 200025, `<|/tool_call|>`
200026), else text.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from .backend import llguidance
from .grammar import Grammar, GrammarError


def call_schema(tools: Sequence[dict[str, Any]], parallel: bool = True) -> dict[str, Any]:
    """A JSON schema of the call list: 1 item (or more, with `parallel`), each one of the tools."""
    items = []
    for tool in tools:
        fn = tool.get("function", tool)
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        items.append({"type": "object", "properties": {"name": {"const": fn["name"]}, "arguments": params},
                      "required": ["name", "arguments"], "additionalProperties": False})
    item = items[0] if len(items) == 1 else {"anyOf": items}
    schema: dict[str, Any] = {"type": "array", "items": item, "minItems": 1}
    if not parallel:
        schema["maxItems"] = 1
    return schema


def tool_call_grammar(tools: Sequence[dict[str, Any]], *, marker_tokens: bool, parallel: bool = True,
                      start: str = "<|tool_call|>", end: str = "<|/tool_call|>", param: str = "tools") -> Grammar:
    """`tools`: OpenAI tool dicts (`{"type": "function", "function": {"name", "parameters"}}`); marker_tokens: the
    markers are special tokens of the vocabulary (else they are matched as text)."""
    if not tools:
        raise GrammarError("a forced tool call needs at least one tool", param)
    schema = call_schema(tools, parallel)
    # compact, as Phi-4-mini writes its calls (`[{"name": "f", "arguments": {"a": 1}}]`): no runs of whitespace for a
    # sampled row to spend its tokens on
    schema["x-guidance"] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
    mark = (lambda s: s) if marker_tokens else json.dumps
    lark = f"start: {mark(start)} calls {mark(end)}\ncalls: %json {json.dumps(schema)}"
    grammar = Grammar("tool_call", llguidance().LLMatcher.grammar_from_lark(lark), param)
    return grammar.check(None)
