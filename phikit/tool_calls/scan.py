"""A tolerant, resumable scan of a tool-call region's JSON as it grows: for each call object, its name once the name
string is complete, and where its arguments' value starts and (once complete) ends, as offsets into the text.

It tracks string / escape state and bracket depth only; it never parses values. `parser.py` checks the whole region
with `json.JSONDecoder.raw_decode` when it ends. `CallScanner.scan(text)` may be called again with a longer text
(the old text must be its prefix): it resumes where it stopped, so scanning a region costs time linear in its length.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

ARGUMENT_KEYS = ("arguments", "parameters")
_WS = " \t\r\n"


@dataclass
class PartialCall:
    name: str | None = None
    args_start: int | None = None  # offset of the arguments value's first character
    args_end: int | None = None  # one past its last character, once it is complete
    args_string: bool = False  # the value is a JSON string (arguments written as OpenAI's JSON string)
    closed: bool = False  # the call object's closing brace was seen


def _string_end(text: str, i: int, lo: int) -> int | None:
    """text[i] == '"': the offset one past the closing quote, or None if the string is not complete yet. The
    quote is searched for from `lo` (> i; the text before it is known to hold none)."""
    j = max(lo, i + 1)
    while True:
        q = text.find('"', j)
        if q == -1:
            return None
        k = q - 1
        while text[k] == "\\":  # stops at text[i] == '"' at the latest
            k -= 1
        if (q - 1 - k) % 2 == 0:  # an even run of backslashes: the quote is not escaped
            return q + 1
        j = q + 1


def _decode_string(literal: str) -> str | None:
    try:
        value = json.loads(literal)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


@dataclass
class CallScanner:
    """Scans a JSON list of call objects, or one call object. State survives between `scan` calls."""

    calls: list[PartialCall] = field(default_factory=list)
    done: bool = False  # the top-level value ended (or the text is not a list / object): nothing more to scan
    i: int = 0  # next offset to look at
    base: int | None = None  # depth of the call objects' opening braces (1 in a list, 0 for one object)
    depth: int = 0
    want: str = "key"  # inside a call object: key, colon, value, comma
    key: str | None = None
    value_depth: int | None = None  # depth at which the current arguments object / array started
    scalar_args: bool = False  # the arguments value is a number / true / false / null still being read
    string_from: int = 0  # an incomplete string at `i`: its closing quote is not before this offset

    def scan(self, text: str) -> list[PartialCall]:
        """The calls of the region's text so far (the same list, grown)."""
        if self.base is None:
            while self.i < len(text) and text[self.i] in _WS:
                self.i += 1
            if self.i >= len(text):
                return self.calls
            if text[self.i] not in "[{":
                self.done = True
                return self.calls
            self.base = 1 if text[self.i] == "[" else 0
        while not self.done and self.i < len(text):
            c = text[self.i]
            if c == '"':
                end = _string_end(text, self.i, self.string_from)
                if end is None:
                    self.string_from = len(text)
                    return self.calls  # resume at this string once it is complete
                self.string_from = 0
                self._string(text[self.i:end])
                self.i = end
                continue
            self._char(c, text)
            self.i += 1
        return self.calls

    @property
    def _cur(self) -> PartialCall | None:
        return self.calls[-1] if self.calls else None

    def _string(self, literal: str) -> None:
        cur = self._cur
        if cur is None or self.depth != self.base + 1:
            return
        if self.want == "key":
            self.key, self.want = _decode_string(literal), "colon"
        elif self.want == "value":
            if self.key == "name":
                cur.name = _decode_string(literal)
            elif self.key in ARGUMENT_KEYS:
                cur.args_start, cur.args_end, cur.args_string = self.i, self.i + len(literal), True
            self.want = "comma"

    def _end_scalar(self, text: str) -> None:
        if self.scalar_args:
            self._cur.args_end = len(text[:self.i].rstrip(_WS))
            self.scalar_args = False

    def _char(self, c: str, text: str) -> None:
        cur, base = self._cur, self.base
        if c in "{[":
            if c == "{" and self.depth == base and (cur is None or cur.closed):
                self.calls.append(PartialCall())
                self.want = "key"
            elif cur is not None and self.depth == base + 1 and self.want == "value":
                if self.key in ARGUMENT_KEYS:
                    cur.args_start, cur.args_string, self.value_depth = self.i, False, self.depth
                self.want = "comma"
            self.depth += 1
        elif c in "}]":
            self.depth -= 1
            if self.value_depth is not None and self.depth == self.value_depth and cur is not None:
                cur.args_end, self.value_depth = self.i + 1, None
            elif cur is not None and self.depth == base and c == "}":
                self._end_scalar(text)
                cur.closed = True
            if self.depth <= 0 and (base == 1 or cur is not None and cur.closed) or self.depth < 0:
                self.done = True
        elif cur is not None and self.depth == base + 1:
            if c == ":" and self.want == "colon":
                self.want = "value"
            elif c == "," and self.want in ("comma", "value"):
                self._end_scalar(text)
                self.want = "key"
            elif c not in _WS and self.want == "value":  # a number, true, false or null
                if self.key in ARGUMENT_KEYS:
                    cur.args_start, cur.args_end, cur.args_string, self.scalar_args = self.i, None, False, True
                self.want = "comma"


def scan_calls(text: str) -> list[PartialCall]:
    """The calls of a region's whole text (one scan)."""
    return CallScanner().scan(text)


def arguments_text(body: str, call: PartialCall) -> str | None:
    """The arguments of `call` as far as they are known, as the text a client gets (`ToolCall.arguments`):

    an object / array / scalar: its JSON text as written (while incomplete, without trailing whitespace, which may
    still turn out to end the value); a JSON string: its decoded content, stripped, once complete (None before);
    no arguments key in a closed call: "{}"; nothing known yet: ""."""
    if call.args_start is None:
        return "{}" if call.closed else ""
    if call.args_string:
        value = _decode_string(body[call.args_start:call.args_end])
        return None if value is None else value.strip() or "{}"
    if call.args_end is None:
        return body[call.args_start:].rstrip(_WS)
    return body[call.args_start:call.args_end]
