"""A tolerant scan of a tool-call region's JSON as it grows: for each call object, its name once the name string is
complete, and where its arguments' value starts and (once complete) ends, as offsets into the text. It never parses
values; `parser.py` checks the whole region with `json.JSONDecoder.raw_decode` when it ends."""

from __future__ import annotations

from dataclasses import dataclass

ARGUMENT_KEYS = ("arguments", "parameters")
_WS = " \t\r\n"


@dataclass
class PartialCall:
    name: str | None = None
    args_start: int | None = None  # offset of the arguments value's first character
    args_end: int | None = None  # one past its last character, once it is complete
    closed: bool = False  # the call object's closing brace was seen


def _string_end(text: str, i: int) -> int | None:
    """text[i] == '"': the offset one past the closing quote, or None if the string is not complete yet."""
    j = i + 1
    while j < len(text):
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == '"':
            return j + 1
        j += 1
    return None


def _decode_string(literal: str) -> str | None:
    import json
    try:
        value = json.loads(literal)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def scan_calls(text: str) -> list[PartialCall]:
    """The calls of a region's text so far: a JSON list of call objects, or one call object."""
    i = 0
    while i < len(text) and text[i] in _WS:
        i += 1
    if i >= len(text) or text[i] not in "[{":
        return []
    base = 1 if text[i] == "[" else 0  # depth of the call objects' opening braces
    calls: list[PartialCall] = []
    depth = 0
    cur: PartialCall | None = None
    want = "key"  # inside a call object: key, colon, value, comma
    key = None
    value_depth = None  # depth at which the current arguments value (an object / array) started
    scalar_args = False
    while i < len(text):
        c = text[i]
        if c == '"':
            end = _string_end(text, i)
            if end is None:
                return calls
            if cur is not None and depth == base + 1:
                literal = text[i:end]
                if want == "key":
                    key, want = _decode_string(literal), "colon"
                elif want == "value":
                    if key == "name":
                        cur.name = _decode_string(literal)
                    elif key in ARGUMENT_KEYS:
                        cur.args_start, cur.args_end = i, end
                    want = "comma"
            i = end
            continue
        if c in "{[":
            if c == "{" and depth == base and cur is None or (c == "{" and depth == base and cur.closed):
                cur = PartialCall()
                calls.append(cur)
                want = "key"
            elif cur is not None and depth == base + 1 and want == "value":
                if key in ARGUMENT_KEYS:
                    cur.args_start, value_depth = i, depth
                want = "comma"
            depth += 1
        elif c in "}]":
            depth -= 1
            if value_depth is not None and depth == value_depth and cur is not None:
                cur.args_end, value_depth = i + 1, None
            elif cur is not None and depth == base and c == "}":
                if scalar_args:
                    cur.args_end = len(text[:i].rstrip(_WS))
                    scalar_args = False
                cur.closed = True
            if depth < 0 or (depth == 0 and base == 0 and cur is not None and cur.closed) or (base == 1 and depth == 0):
                return calls
        elif cur is not None and depth == base + 1:
            if c == ":" and want == "colon":
                want = "value"
            elif c == "," and want in ("comma", "value"):
                if scalar_args:
                    cur.args_end = len(text[:i].rstrip(_WS))
                    scalar_args = False
                want = "key"
            elif c not in _WS and want == "value":  # a number, true, false or null
                if key in ARGUMENT_KEYS:
                    cur.args_start, scalar_args = i, True
                want = "comma"
        i += 1
    return calls
