"""Request fields that constrain the output -> one `Grammar`:

    response_format   {"type": "text"} | {"type": "json_object"} |
                      {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}       (OpenAI; chat)
    structured_outputs {"json": schema | "regex": str | "choice": [str] | "grammar": lark | "json_object": true}
                                                                                        (vLLM's extension; both APIs)

A schema or grammar that does not compile is a 400 naming the field; so is a server installed without
`phikit[structured]`.
"""

from __future__ import annotations

from typing import Any

from .errors import bad_request

_VLLM_KINDS = ("json", "regex", "choice", "grammar", "json_object")


def request_grammar(response_format: dict[str, Any] | None, structured_outputs: dict[str, Any] | None) -> Any:
    """The Grammar the request asks for, or None."""
    fmt = response_format if response_format and response_format.get("type", "text") != "text" else None
    so = {k: v for k, v in (structured_outputs or {}).items() if v is not None and v is not False}
    if fmt is not None and so:
        raise bad_request("structured_outputs", "send either response_format or structured_outputs, not both")
    if fmt is None and not so:
        return None
    from ..structured import Grammar, GrammarError, StructuredOutputUnavailable
    param = "response_format" if fmt is not None else "structured_outputs"
    try:
        return _from_response_format(Grammar, fmt) if fmt is not None else _from_structured_outputs(Grammar, so)
    except StructuredOutputUnavailable as e:
        raise bad_request(param, f"this server cannot constrain output: {e}") from e
    except GrammarError as e:
        raise bad_request(param, f"{param}: {e}") from e


def _from_response_format(Grammar: Any, fmt: dict[str, Any]) -> Any:
    kind = fmt.get("type")
    if kind == "json_object":
        return Grammar.json_object(param="response_format")
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec:
            raise bad_request("response_format", "response_format json_schema needs "
                                                 "{\"json_schema\": {\"name\": ..., \"schema\": {...}}}")
        return Grammar.json_schema(spec["schema"], strict=bool(spec.get("strict")), param="response_format")
    raise bad_request("response_format", f"response_format type {kind!r} is not one of 'text', 'json_object', "
                                         f"'json_schema'")


def _from_structured_outputs(Grammar: Any, so: dict[str, Any]) -> Any:
    unknown = sorted(set(so) - set(_VLLM_KINDS))
    if unknown:
        raise bad_request("structured_outputs", f"structured_outputs has unknown keys {unknown}; use one of "
                                                f"{list(_VLLM_KINDS)}")
    if len(so) != 1:
        raise bad_request("structured_outputs", f"structured_outputs takes one of {list(_VLLM_KINDS)}, got "
                                                f"{sorted(so)}")
    [(kind, value)] = so.items()
    p = "structured_outputs"
    if kind == "json":
        return Grammar.json_schema(value, param=p)
    if kind == "json_object":
        return Grammar.json_object(param=p)
    if kind == "regex":
        return Grammar.regex(value, param=p)
    if kind == "choice":
        return Grammar.choice(value, param=p)
    return Grammar.lark(value, param=p)
