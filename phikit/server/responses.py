"""Response bodies and stream chunks of chat completions and completions, in OpenAI's shapes.

    chat.completion        {"id", "object", "created", "model", "choices": [{"index", "message": {"role", "content"},
                            "logprobs", "finish_reason", "stop_reason"}], "usage"}
    chat.completion.chunk  {"id", "object", "created", "model", "choices": [{"index", "delta", "logprobs",
                            "finish_reason"}]} (+ "usage": null with stream_options.include_usage)
    text_completion        {"id", "object", "created", "model", "choices": [{"index", "text", "logprobs",
                            "finish_reason", "stop_reason"}], "usage"}

`stop_reason` (vLLM's extension) is the stop string or stop id that ended a choice.

With tools, a choice's text comes from a `ToolCallParser` fed its token ids (the engine's text has the markers
stripped with the other special tokens): content before a call, `message.tool_calls` (streamed as
`delta.tool_calls`: the first delta of a call carries its index, id, type and name, later ones argument text), and
`finish_reason: "tool_calls"` when a choice that stopped made calls.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ..engine.outputs import StepOutput
from .logprobs import TokenTexts, chat_logprobs, completion_logprobs
from .runner import Choice, RequestRun


class ResponseBuilder:
    """Builds the bodies of one request."""

    def __init__(self, run: RequestRun, model: str, texts: TokenTexts, *, chat: bool, logprobs: bool,
                 as_ids: bool = False, include_usage: bool = False, echo_texts: Sequence[str] | None = None,
                 tool_parsers: Callable[[], Any] | None = None) -> None:
        self.run, self.model, self.texts, self.chat = run, model, texts, chat
        self.logprobs, self.as_ids, self.include_usage = logprobs, as_ids, include_usage
        self.echo_texts = echo_texts  # completions with echo: each prompt's text, sent before its choices' text
        self.offsets: dict[int, int] = {}  # choice index -> characters of text sent (completion text_offset)
        self.tool_parsers = tool_parsers  # chat with tools: a new ToolCallParser per choice
        self.parsers: dict[int, Any] = {}  # choice index -> its parser (streaming)
        self.sent: dict[int, int] = {}  # choice index -> characters of content streamed (with tools)

    def _head(self, object_name: str) -> dict[str, Any]:
        return {"id": self.run.id, "object": object_name, "created": self.run.created, "model": self.model}

    # ------------------------------------------------------------ whole responses

    def full(self, choices: Sequence[Choice]) -> dict[str, Any]:
        body = self._head("chat.completion" if self.chat else "text_completion")
        body["choices"] = [self._full_choice(c) for c in choices]
        body["usage"] = self.run.usage()
        body["system_fingerprint"] = None
        return body

    def _full_choice(self, c: Choice) -> dict[str, Any]:
        if self.chat:
            logprobs = chat_logprobs(c.logprobs, self.texts, self.as_ids) if self.logprobs else None
            content, calls, reason = c.text, [], c.finish_reason
            if self.tool_parsers is not None:
                parser = self.tool_parsers()
                parser.feed(list(c.token_ids))
                parsed = parser.finish()
                calls = [call.to_openai() for call in parsed.tool_calls]
                content = parsed.content if parsed.content or not calls else None
                reason = "tool_calls" if calls and reason == "stop" else reason
            return {"index": c.index, "message": {"role": "assistant", "content": content, "tool_calls": calls},
                    "logprobs": logprobs, "finish_reason": reason, "stop_reason": c.stop_reason}
        prefix = self.echo_texts[c.prompt] if self.echo_texts is not None else ""
        logprobs = completion_logprobs(c.logprobs, self.texts, len(prefix), self.as_ids) if self.logprobs else None
        return {"index": c.index, "text": prefix + c.text, "logprobs": logprobs, "finish_reason": c.finish_reason,
                "stop_reason": c.stop_reason}

    # ------------------------------------------------------------ stream chunks

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        body = self._head("chat.completion.chunk" if self.chat else "text_completion")
        body["choices"] = choices
        if self.include_usage:
            body["usage"] = None
        return body

    def first_chunks(self) -> list[dict[str, Any]]:
        """Before any token: chat sends each choice's role (OpenAI's first delta); completions with echo send each
        choice's prompt text."""
        if self.chat:
            return [self._chunk([{"index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                  "finish_reason": None}]) for c in self.run.choices]
        if self.echo_texts is None:
            return []
        out = []
        for c in self.run.choices:
            text = self.echo_texts[c.prompt]
            self.offsets[c.index] = len(text)
            out.append(self._chunk([{"index": c.index, "text": text, "logprobs": None, "finish_reason": None}]))
        return out

    def step_chunk(self, c: Choice, out: StepOutput) -> dict[str, Any] | None:
        """The chunk of one StepOutput (None when it carries nothing to send)."""
        reason = out.finish_reason
        if not out.text and not out.logprobs and reason is None:
            return None  # tokens whose text is held back (it may still become a stop string)
        items = out.logprobs or []
        if self.chat and self.tool_parsers is not None:
            return self._tool_chunk(c, out, items)
        if self.chat:
            logprobs = chat_logprobs(items, self.texts, self.as_ids) if self.logprobs and items else None
            choice = {"index": c.index, "delta": {"content": out.text} if out.text or reason is None else {},
                      "logprobs": logprobs, "finish_reason": reason}
        else:
            offset = self.offsets.get(c.index, 0)
            logprobs = completion_logprobs(items, self.texts, offset, self.as_ids) if self.logprobs and items else None
            self.offsets[c.index] = offset + len(out.text)
            choice = {"index": c.index, "text": out.text, "logprobs": logprobs, "finish_reason": reason}
        if reason is not None:
            choice["stop_reason"] = out.stop_reason
        return self._chunk([choice])

    def _tool_chunk(self, c: Choice, out: StepOutput, items: list) -> dict[str, Any] | None:
        parser = self.parsers.get(c.index)
        if parser is None:
            parser = self.parsers[c.index] = self.tool_parsers()
        text, deltas = parser.feed(list(out.token_ids))
        reason = out.finish_reason
        if reason is not None:  # what the parser held back, or a region that did not parse, comes out as content
            parsed = parser.finish()
            rest = parsed.content[self.sent.get(c.index, 0) + len(text):]
            text += rest
            reason = "tool_calls" if parsed.tool_calls and reason == "stop" else reason
        self.sent[c.index] = self.sent.get(c.index, 0) + len(text)
        if not text and not deltas and not items and reason is None:
            return None
        delta: dict[str, Any] = {}
        if text:
            delta["content"] = text
        if deltas:
            delta["tool_calls"] = [_tool_delta(d) for d in deltas]
        logprobs = chat_logprobs(items, self.texts, self.as_ids) if self.logprobs and items else None
        choice = {"index": c.index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
        if reason is not None:
            choice["stop_reason"] = out.stop_reason
        return self._chunk([choice])

    def usage_chunk(self) -> dict[str, Any]:
        """The last chunk with stream_options.include_usage: no choices, the totals."""
        body = self._head("chat.completion.chunk" if self.chat else "text_completion")
        body["choices"] = []
        body["usage"] = self.run.usage()
        return body


def _tool_delta(d: Any) -> dict[str, Any]:
    """One ToolDelta as OpenAI streams it."""
    fn: dict[str, Any] = {"arguments": d.arguments}
    item: dict[str, Any] = {"index": d.index}
    if d.id is not None:
        item.update(id=d.id, type="function")
        fn = {"name": d.name, "arguments": d.arguments}
    item["function"] = fn
    return item
