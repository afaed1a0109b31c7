"""Tool calls out of a model's output, read from its token ids as they are generated.

Phi-4-mini writes `text <|tool_call|>[{"name": ..., "arguments": {...}}, ...]<|/tool_call|>` (the markers are added
tokens 200025 / 200026). `decode.IncrementalText` turns the ids into one growing text in which a marker token stands
as its token string at a recorded offset; in a vocabulary without those tokens (phi-2, the bundled tiny model) the
model spells the markers as text, and the parser matches the text instead. On that text one state machine runs:

  - content: the text outside call regions. Text that may be the start of a marker (or of `functools[`) is held back
    until it is not. With marker tokens, a stray end marker outside a region is dropped.
  - a call region runs from the start marker to the end marker, the next start marker, or the end of the output. Its
    JSON is a list of calls or one call, each `{"name": str, "arguments" | "parameters": value}`; vLLM's
    `functools[...]` text form is read as a region too (it ends where its JSON list ends).
  - streaming: while a region grows, `scan.CallScanner` finds each call's name and the extent of its arguments. The
    first ToolDelta of a call carries its index, id and name (and the arguments known so far); later ones carry
    argument text. A call's fragments concatenate to its final `ToolCall.arguments`.
  - when a region ends it is checked with `json.JSONDecoder.raw_decode` (never a regex: nested arrays and objects
    work). A region that does not parse into calls is returned as content, its markers included as text, and reports
    no call. A streaming client may already have seen deltas of it; the next call then reuses its index, so the
    indices of `finish().tool_calls` and of the deltas of the calls it keeps always agree.

Special tokens other than the markers never reach the text (`decode.control_ids`).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from .decode import IncrementalText, control_ids
from .scan import ARGUMENT_KEYS, CallScanner, arguments_text, scan_calls

FUNCTOOLS = "functools"


@dataclass
class ToolCall:
    id: str  # "call_" + 24 hex characters
    name: str
    arguments: str  # the arguments' JSON text as the model wrote it, stripped ("{}" when it gave none)

    def to_openai(self) -> dict[str, Any]:
        """OpenAI's `message.tool_calls[i]`: {"id", "type": "function", "function": {"name", "arguments"}}."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ToolDelta:
    index: int  # the call's position among the output's calls (0, 1, ...)
    id: str | None  # the first delta of a call: its id and name; later deltas: None
    name: str | None
    arguments: str  # the next fragment of the call's arguments (may be "")


@dataclass
class ParsedOutput:
    content: str  # the text outside call regions (and regions that did not parse), markers of those included
    tool_calls: list[ToolCall] = field(default_factory=list)


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass
class _Region:
    start: int  # offset in the text of the region's JSON (after its opening marker)
    marker: str  # what opened it: the start marker, or "functools"
    first_index: int  # the index of its first call
    end: int | None = None  # offset where its JSON ends, once known
    closing: str = ""  # the end marker that closed it ("" if none)
    scanner: CallScanner = field(default_factory=CallScanner)
    ids: list[str] = field(default_factory=list)  # call ids handed out while streaming
    sent_args: list[int] = field(default_factory=list)  # characters of each call's arguments streamed
    calls: list[ToolCall] = field(default_factory=list)  # once it ended and parsed


class ToolCallParser:
    """`feed(ids) -> (content to show now, tool deltas)`; `finish() -> ParsedOutput`, the whole result.

    One parser per output. The concatenated content of all `feed` calls is always a prefix of `finish().content`
    (what was held back, and regions that did not parse, come last)."""

    def __init__(self, tokenizer: Any, *, start_token: str = "<|tool_call|>", end_token: str = "<|/tool_call|>"):
        for what, marker in (("start_token", start_token), ("end_token", end_token)):
            if not isinstance(marker, str) or not marker:
                raise ValueError(f"{what}={marker!r} must be a non-empty string such as '<|tool_call|>'")
        self.start, self.end = start_token, end_token
        ids = [tokenizer.convert_tokens_to_ids(m) for m in (start_token, end_token)]
        unk = getattr(tokenizer, "unk_token_id", None)
        # marker tokens only when both are single tokens; otherwise the model spells them and they are matched as text
        self.token_markers = all(isinstance(i, int) and i != unk for i in ids)
        markers = dict(zip(ids, (start_token, end_token))) if self.token_markers else {}
        self.out = IncrementalText(tokenizer, markers, control_ids(tokenizer, keep=set(markers)))
        self.pos = 0  # offset up to which the text has been handled (as content or region)
        self.segments: list[str | _Region] = []  # content text and call regions, in order
        self.calls_streamed = 0  # index of the next call
        self.finished: ParsedOutput | None = None

    @property
    def saw_tool_call(self) -> bool:
        """A call region has been opened that has not (yet) turned out to be text."""
        return any(isinstance(s, _Region) for s in self.segments)

    # ------------------------------------------------------------------ streaming

    def feed(self, ids: list[int]) -> tuple[str, list[ToolDelta]]:
        """Take the next generated ids; return the content to show now and the tool deltas they complete."""
        if self.finished is not None:
            raise RuntimeError("ToolCallParser.feed() after finish(): use a new parser for each output")
        self.out.push(list(ids))
        return self._advance(final=False)

    def finish(self) -> ParsedOutput:
        """The output ended: everything held back is resolved. Idempotent."""
        if self.finished is None:
            self.out.push([], final=True)
            self._advance(final=True)
            if self._open_region() is not None:
                self._settle(self._open_region(), len(self.out.text), "")
            content, calls = "", []
            for segment in self.segments:
                if isinstance(segment, str):
                    content += segment
                else:
                    calls += segment.calls
            self.finished = ParsedOutput(content, calls)
        return self.finished

    def _open_region(self) -> _Region | None:
        last = self.segments[-1] if self.segments else None
        return last if isinstance(last, _Region) and last.end is None else None

    def _advance(self, final: bool) -> tuple[str, list[ToolDelta]]:
        text = self.out.text
        shown, deltas = "", []
        while True:
            region = self._open_region()
            if region is None:
                at, marker = self._next_start(text, self.pos)
                if at is None:
                    stop = len(text) if final else len(text) - self._hold(text)
                    shown += self._add_text(self._content(text, self.pos, stop))
                    self.pos = max(self.pos, stop)
                    return shown, deltas
                shown += self._add_text(self._content(text, self.pos, at))
                self.pos = at + len(marker)
                self.segments.append(_Region(self.pos, marker, self.calls_streamed))
                continue
            if region.marker == FUNCTOOLS:
                body_end, closing, resume = self._json_end(text, region.start), "", None
            else:
                body_end, closing, resume = self._region_end(text, region.start)
            body = text[region.start:body_end if body_end is not None else len(text)]
            deltas += self._deltas(region, body)
            if body_end is None:
                return shown, deltas
            shown += self._settle(region, body_end, closing)
            self.pos = resume if resume is not None else body_end + len(closing)

    # ------------------------------------------------------------------ markers

    def _marks(self, marker: str, lo: int) -> int | None:
        return next((at for at, m in self.out.marks if m == marker and at >= lo), None)

    def _find(self, text: str, marker: str, lo: int) -> int | None:
        if self.token_markers:
            return self._marks(marker, lo)
        at = text.find(marker, lo)
        return None if at == -1 else at

    def _next_start(self, text: str, lo: int) -> tuple[int | None, str]:
        """The next region opener at or after `lo`: (offset, marker) or (None, "")."""
        best: tuple[int | None, str] = (self._find(text, self.start, lo), self.start)
        functools = text.find(FUNCTOOLS + "[", lo)
        if functools != -1 and (best[0] is None or functools < best[0]):
            best = functools, FUNCTOOLS  # the "[" belongs to the region's JSON
        return best if best[0] is not None else (None, "")

    def _region_end(self, text: str, lo: int) -> tuple[int | None, str, int | None]:
        """Where a marker region's JSON ends: (offset, closing marker consumed, offset to resume at or None)."""
        end = self._find(text, self.end, lo)
        again = self._find(text, self.start, lo)
        if again is not None and (end is None or again < end):
            return again, "", again  # a new region starts: this one ends without its end marker
        return end, self.end if end is not None else "", None

    @staticmethod
    def _json_end(text: str, lo: int) -> int | None:
        """Offset one past a complete JSON value starting at `lo` (after whitespace), else None."""
        start = lo + len(text[lo:]) - len(text[lo:].lstrip())
        try:
            _, end = json.JSONDecoder().raw_decode(text, start)
        except ValueError:
            return None
        return end

    def _hold(self, text: str) -> int:
        """Characters at the end of `text` (past `pos`) that may be the start of a marker or of `functools[`."""
        openers = [FUNCTOOLS + "["] + ([] if self.token_markers else [self.start])
        for n in range(min(len(text) - self.pos, max(map(len, openers))), 0, -1):
            if any(o.startswith(text[-n:]) for o in openers):
                return n
        return 0

    def _content(self, text: str, lo: int, hi: int) -> str:
        """text[lo:hi] without stray end-marker tokens."""
        if lo >= hi:
            return ""
        if not self.token_markers:
            return text[lo:hi]
        out, at = "", lo
        for mark, marker in self.out.marks:
            if marker == self.end and lo <= mark < hi:
                out += text[at:mark]
                at = mark + len(marker)
        return out + text[at:hi]

    def _add_text(self, text: str) -> str:
        if text:
            if self.segments and isinstance(self.segments[-1], str):
                self.segments[-1] += text
            else:
                self.segments.append(text)
        return text

    # ------------------------------------------------------------------ regions

    def _deltas(self, region: _Region, body: str) -> list[ToolDelta]:
        out = []
        for k, call in enumerate(region.scanner.scan(body)):
            if call.name is None:
                break  # later calls wait for this one's name (indices stay in order)
            args = arguments_text(body, call) or ""
            if k == len(region.ids):
                region.ids.append(new_call_id())
                region.sent_args.append(len(args))
                out.append(ToolDelta(region.first_index + k, region.ids[k], call.name, args))
                self.calls_streamed = region.first_index + k + 1
            elif len(args) > region.sent_args[k]:
                out.append(ToolDelta(region.first_index + k, None, None, args[region.sent_args[k]:]))
                region.sent_args[k] = len(args)
        return out

    def _settle(self, region: _Region, end: int, closing: str) -> str:
        """A region ended at `end`: keep its calls, or, if it does not parse into calls, turn it into content
        (returned, to show now)."""
        region.end, region.closing = end, closing
        body = self.out.text[region.start:end]
        calls = self._calls(body, region)
        if calls is not None:
            region.calls = calls
            return ""
        self.segments.pop()
        self.calls_streamed = region.first_index
        return self._add_text(region.marker + body + closing)

    def _calls(self, body: str, region: _Region) -> list[ToolCall] | None:
        """The calls of a whole region, or None when it is not a list of calls / one call."""
        start = len(body) - len(body.lstrip())
        try:
            value, end = json.JSONDecoder().raw_decode(body, start)
        except ValueError:
            return None
        if body[end:].strip():
            return None
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in items):
            return None
        scanned = scan_calls(body)
        out = []
        for k, item in enumerate(items):
            key = next((a for a in ARGUMENT_KEYS if a in item), None)
            raw = arguments_text(body, scanned[k]) if k < len(scanned) and scanned[k].name == item["name"] else None
            if key is None:
                raw = "{}"
            elif raw is None or not _same_arguments(raw, item[key]):  # the scan disagrees: trust the parse
                raw = _arguments_json(item[key])
            call_id = region.ids[k] if k < len(region.ids) else new_call_id()
            out.append(ToolCall(call_id, item["name"], raw))
        return out


def _arguments_json(value: Any) -> str:
    """`ToolCall.arguments` for a parsed arguments value: a string is taken as the JSON text itself."""
    if isinstance(value, str):
        return value.strip() or "{}"
    return json.dumps(value, ensure_ascii=False)


def _same_arguments(raw: str, value: Any) -> bool:
    """Does the scanned text `raw` stand for the parsed arguments `value`?"""
    if isinstance(value, str):
        return raw == _arguments_json(value)
    try:
        return json.loads(raw) == value
    except ValueError:
        return False
