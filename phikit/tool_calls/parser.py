"""Tool calls out of a model's output, read from its token ids as they are generated.

Phi-4-mini writes `text <|tool_call|>[{"name": ..., "arguments": {...}}, ...]<|/tool_call|>` (the markers are special
tokens 200025 / 200026). The parser decodes the ids into one text in which the markers stand as text (in a vocabulary
without those tokens, the model's own text spells them), so one state machine serves both:

  - content: the text outside call regions; text that may be the start of a marker is held back until it is not;
  - a call region runs from the start marker to the end marker (or to the end of the output); its JSON is a list of
    calls or one call, each `{"name": str, "arguments" | "parameters": value}`; vLLM's `functools[...]` text form is
    read as a region too. While a region grows, `scan.py` finds each call's name and the extent of its arguments, so
    the first delta of a call carries its name and later deltas its argument text; the deltas of a call concatenate
    to `ToolCall.arguments`, the arguments' JSON text as the model wrote it;
  - when a region ends it is checked with `json.JSONDecoder.raw_decode` (never a regex: nested arrays and objects
    work); one that does not parse into calls is returned as content, markers included, and reports no call
    (a streaming client may have seen deltas of it already).

Special tokens other than the markers never reach the text.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from .scan import ARGUMENT_KEYS, scan_calls

FUNCTOOLS = "functools"


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # the arguments' JSON text as the model wrote it ("{}" when it gave none)

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ToolDelta:
    index: int
    id: str | None  # the first delta of a call: its id and name
    name: str | None
    arguments: str


@dataclass
class ParsedOutput:
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass
class _Region:
    start: int  # offset in the text of the region's JSON (after the marker)
    marker: str  # what opened it (the start marker or "functools")
    end: int | None = None  # offset of the end marker, once seen
    ids: list[str] = field(default_factory=list)  # call ids handed out while streaming
    sent_args: list[int] = field(default_factory=list)  # characters of each call's arguments streamed
    first_index: int = 0


class ToolCallParser:
    """feed(ids) -> (content to show now, tool deltas); finish() -> the whole ParsedOutput."""

    def __init__(self, tokenizer: Any, *, start_token: str = "<|tool_call|>", end_token: str = "<|/tool_call|>"):
        self.tokenizer = tokenizer
        self.start, self.end = start_token, end_token
        ids = {m: tokenizer.convert_tokens_to_ids(m) for m in (start_token, end_token)}
        unk = getattr(tokenizer, "unk_token_id", None)
        self.marker_ids = {i: m for m, i in ids.items() if isinstance(i, int) and i != unk}
        self.special = set(getattr(tokenizer, "all_special_ids", []) or []) - set(self.marker_ids)
        self.done_text = ""  # text of ids up to the last marker token
        self.pending: list[int] = []  # ids after it, decoded together (multi-token characters)
        self.text = ""
        self.pos = 0  # content: offset up to which the text has been looked at
        self.segments: list[str | _Region] = []  # content text and call regions, in order
        self.regions: list[_Region] = []
        self.calls_streamed = 0
        self.finished: ParsedOutput | None = None
        self.finished_input = False

    @property
    def saw_tool_call(self) -> bool:
        return bool(self.regions)

    # ------------------------------------------------------------------ text

    def _push(self, ids: list[int]) -> None:
        for i in ids:
            if i in self.marker_ids:
                self.done_text += self._decode(self.pending) + self.marker_ids[i]
                self.pending = []
            elif i not in self.special:
                self.pending.append(i)
        tail = self._decode(self.pending)
        if not self.finished_input and tail.endswith("\ufffd"):
            tail = tail.rstrip("\ufffd")  # a character still missing its last bytes
        self.text = self.done_text + tail

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""

    # ------------------------------------------------------------------ streaming

    def feed(self, ids: list[int]) -> tuple[str, list[ToolDelta]]:
        self._push(list(ids))
        return self._advance(final=False)

    def _advance(self, final: bool) -> tuple[str, list[ToolDelta]]:
        shown, deltas = "", []
        while True:
            region = self.regions[-1] if self.regions and self.regions[-1].end is None else None
            if region is None:
                text = self.text[self.pos:]
                at, marker = self._next_marker(text)
                if at is None:
                    hold = 0 if final else self._hold(text)
                    shown += text[:len(text) - hold]
                    self._add_text(text[:len(text) - hold])
                    self.pos += len(text) - hold
                    break
                shown += text[:at]
                self._add_text(text[:at])
                self.pos += at + len(marker)
                self.regions.append(_Region(self.pos, marker, first_index=self.calls_streamed))
                self.segments.append(self.regions[-1])
                continue
            end = self.text.find(self.end, region.start) if region.marker == self.start else -1
            body_end = end if end != -1 else len(self.text)
            deltas += self._region_deltas(region, self.text[region.start:body_end])
            if end == -1:
                if region.marker == FUNCTOOLS and self._json_end(self.text[region.start:]) is not None:
                    region.end = region.start + self._json_end(self.text[region.start:])
                    self.pos = region.end
                    shown += self._settle(region, "")
                    continue
                break
            region.end = end
            self.pos = end + len(self.end)
            shown += self._settle(region, self.end)
        return shown, deltas

    def _settle(self, region: _Region, closing: str) -> str:
        """A region just ended: if it does not parse into calls, it becomes text (returned, to show now)."""
        body = self.text[region.start:region.end]
        if self._calls(body, region) is not None:
            return ""
        self.regions.remove(region)
        self.segments.pop()
        self.calls_streamed = region.first_index
        text = region.marker + body + closing
        self._add_text(text)
        return text

    def _add_text(self, text: str) -> None:
        if not text:
            return
        if self.segments and isinstance(self.segments[-1], str):
            self.segments[-1] += text
        else:
            self.segments.append(text)

    def _next_marker(self, text: str) -> tuple[int | None, str]:
        best = None, ""
        for marker in (self.start, FUNCTOOLS + "["):
            at = text.find(marker)
            if at != -1 and (best[0] is None or at < best[0]):
                best = at, marker
        if best[1] == FUNCTOOLS + "[":
            return best[0], FUNCTOOLS  # the "[" belongs to the region's JSON
        return best

    def _hold(self, text: str) -> int:
        """Characters at the end of `text` that may be the start of a marker."""
        for n in range(min(len(text), max(len(self.start), len(FUNCTOOLS) + 1)), 0, -1):
            tail = text[-n:]
            if self.start.startswith(tail) or (FUNCTOOLS + "[").startswith(tail):
                return n
        return 0

    @staticmethod
    def _json_end(text: str) -> int | None:
        stripped = len(text) - len(text.lstrip())
        try:
            _, end = json.JSONDecoder().raw_decode(text, stripped)
        except ValueError:
            return None
        return end

    def _region_deltas(self, region: _Region, body: str) -> list[ToolDelta]:
        out = []
        for k, call in enumerate(scan_calls(body)):
            if call.name is None:
                break  # later calls wait for this one's name (indices stay in order)
            args = body[call.args_start:call.args_end if call.args_end is not None else len(body)] \
                if call.args_start is not None else ""
            if call.args_end is None:
                args = args.rstrip()
            if k == len(region.ids):
                region.ids.append(new_call_id())
                region.sent_args.append(len(args))
                out.append(ToolDelta(region.first_index + k, region.ids[k], call.name, args))
                self.calls_streamed = region.first_index + k + 1
            elif len(args) > region.sent_args[k]:
                out.append(ToolDelta(region.first_index + k, None, None, args[region.sent_args[k]:]))
                region.sent_args[k] = len(args)
        return out

    # ------------------------------------------------------------------ the end

    def finish(self) -> ParsedOutput:
        if self.finished is not None:
            return self.finished
        self.finished_input = True
        self._push([])
        self._advance(final=True)
        content, calls = "", []
        for segment in self.segments:
            if isinstance(segment, str):
                content += segment
                continue
            end = segment.end if segment.end is not None else len(self.text)
            body = self.text[segment.start:end]
            parsed = self._calls(body, segment)
            if parsed is None:  # not calls: the region is text, its markers included
                closing = self.end if segment.end is not None and segment.marker == self.start else ""
                content += segment.marker + body + closing
                continue
            calls += [ToolCall(*call) for call in parsed]
        self.finished = ParsedOutput(content, calls)
        return self.finished

    def _calls(self, body: str, region: _Region) -> list[tuple[str, str, str]] | None:
        stripped = len(body) - len(body.lstrip())
        try:
            value, end = json.JSONDecoder().raw_decode(body, stripped)
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
            raw = "{}"
            if key is not None:
                s = scanned[k] if k < len(scanned) else None
                if s is not None and s.args_start is not None and s.args_end is not None:
                    raw = body[s.args_start:s.args_end]
                else:
                    raw = json.dumps(item[key], ensure_ascii=False)
                if json.loads(raw) != item[key]:
                    raw = json.dumps(item[key], ensure_ascii=False)
            call_id = region.ids[k] if k < len(region.ids) else new_call_id()
            out.append((call_id, item["name"], raw))
        return out
