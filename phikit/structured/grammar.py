"""What a grammar constrains decoding to: JSON matching a schema, any JSON object, a regex, a Lark grammar, or one
of a few strings, each compiled to llguidance's grammar text.

    Grammar.json_schema({"type": "object", ...}, strict=True)
    Grammar.json_object()
    Grammar.regex(r"\\d{3}-\\d{4}")
    Grammar.lark('start: "yes" | "no"')
    Grammar.choice(["positive", "negative"])

A grammar that does not compile raises `GrammarError` (a ValueError) with llguidance's message, when built and again,
against the vocabulary, when a tokenizer first uses it (`check`).

JSON: whitespace between tokens is allowed (a SentencePiece model's `▁{` must stay possible; masking it costs
quality), at most `MAX_JSON_WHITESPACE` characters in a run, so a sampled row cannot spend its tokens on spaces;
a schema's own `x-guidance` options override this.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

from .backend import llguidance

MAX_JSON_WHITESPACE = 20
_WS = "[\\x20\\x0A\\x0D\\x09]"


class GrammarError(ValueError):
    """A grammar that does not compile; `param` names the request field it came from (server: the 400's param)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def strict_schema(schema: Any) -> Any:
    """OpenAI's `strict`: every object schema without `additionalProperties` gets `additionalProperties: false`
    (a copy; the input is not changed)."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_schema(v) if k not in ("const", "enum", "default", "examples") else v for k, v in schema.items()}
    is_object = out.get("type") == "object" or (isinstance(out.get("type"), list) and "object" in out["type"]) \
        or "properties" in out
    if is_object and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


@dataclass(frozen=True)
class Grammar:
    """A compiled constraint: `source` is llguidance's grammar text; `kind` what it was built from."""

    kind: str
    source: str
    param: str | None = None  # the request field it came from, for errors

    # ------------------------------------------------------------------ constructors

    @classmethod
    def json_schema(cls, schema: dict | str, *, strict: bool = False, param: str | None = None) -> "Grammar":
        """JSON that validates against `schema` (a dict, or its JSON text)."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as exc:
                raise GrammarError(f"the JSON schema is not valid JSON ({exc})", param) from exc
        if not isinstance(schema, (dict, bool)):
            raise GrammarError(f"a JSON schema must be an object (or true / false), got {type(schema).__name__}",
                               param)
        if isinstance(schema, bool):
            schema = {} if schema else {"not": {}}
        schema = strict_schema(schema) if strict else dict(schema)
        options = {"whitespace_pattern": f"{_WS}{{0,{MAX_JSON_WHITESPACE}}}"}
        options.update(schema.get("x-guidance") or {})
        schema["x-guidance"] = options
        source = llguidance().LLMatcher.grammar_from_lark(
            f"start: /{_WS}{{0,{MAX_JSON_WHITESPACE}}}/ %json {json.dumps(schema)}")
        return cls._checked("json_schema", source, param)

    @classmethod
    def json_object(cls, *, param: str | None = None) -> "Grammar":
        """Any JSON object (OpenAI's `response_format: {"type": "json_object"}`)."""
        return cls.json_schema({"type": "object"}, param=param)

    @classmethod
    def regex(cls, pattern: str, *, param: str | None = None) -> "Grammar":
        """Text that fully matches `pattern` (Rust regex syntax, as llguidance reads it)."""
        if not isinstance(pattern, str):
            raise GrammarError(f"a regex must be a string, got {type(pattern).__name__}", param)
        return cls._checked("regex", llguidance().LLMatcher.grammar_from_regex(pattern), param)

    @classmethod
    def lark(cls, grammar: str, *, param: str | None = None) -> "Grammar":
        """A Lark grammar (llguidance's dialect: `start` is the start rule; `%json {...}` embeds a schema)."""
        if not isinstance(grammar, str):
            raise GrammarError(f"a Lark grammar must be a string, got {type(grammar).__name__}", param)
        return cls._checked("lark", llguidance().LLMatcher.grammar_from_lark(grammar), param)

    @classmethod
    def choice(cls, choices: Sequence[str], *, param: str | None = None) -> "Grammar":
        """Exactly one of `choices`."""
        if isinstance(choices, str) or not choices or not all(isinstance(c, str) and c for c in choices):
            raise GrammarError(f"choice takes a non-empty list of non-empty strings, got {choices!r}", param)
        lark = "start: " + " | ".join(json.dumps(c) for c in choices)
        return cls._checked("choice", llguidance().LLMatcher.grammar_from_lark(lark), param)

    # ------------------------------------------------------------------ checks

    @classmethod
    def _checked(cls, kind: str, source: str, param: str | None) -> "Grammar":
        grammar = cls(kind, source, param)
        grammar.check(None)
        return grammar

    def check(self, grammar_tokenizer: Any) -> "Grammar":
        """Raise GrammarError if the grammar does not compile (against the vocabulary, when one is given)."""
        is_error, messages = llguidance().LLMatcher.validate_grammar_with_warnings(self.source, grammar_tokenizer)
        if is_error:
            raise GrammarError(f"the {self.kind.replace('_', ' ')} grammar does not compile: "
                               f"{messages[0].strip() if messages else 'no reason given'}", self.param)
        return self
