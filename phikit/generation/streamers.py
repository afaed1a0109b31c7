"""Streaming text out of `generate(streamer=...)`: `TextStreamer` prints, `TextIteratorStreamer` is iterated.

Incremental detokenization: decoding token by token would drop SentencePiece's word-boundary spaces (a decoder
strips the leading space of the first token it sees) and cut multi-byte UTF-8 characters that byte-fallback tokens
spell piece by piece. So each step decodes a short window — the tokens already shown since the last emit plus the
new ones — and emits only the new part of that text, and only once it no longer ends in an incomplete character
(U+FFFD). The concatenation of everything emitted equals `tokenizer.decode(all_new_ids)`.
"""

from __future__ import annotations

import queue
from typing import Any

import torch


class IncrementalDetokenizer:
    """Turns a growing list of ids into text deltas whose concatenation is the full decode."""

    def __init__(self, tokenizer: Any, **decode_kwargs: Any) -> None:
        self.tokenizer = tokenizer
        self.decode_kwargs = decode_kwargs
        self.ids: list[int] = []
        self.prefix_offset = 0  # window start: tokens before it are never decoded again
        self.read_offset = 0  # tokens up to here have been emitted

    def push(self, ids: list[int]) -> str:
        """Add ids; return the text that is now final (maybe empty)."""
        self.ids.extend(ids)
        shown = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset], **self.decode_kwargs)
        text = self.tokenizer.decode(self.ids[self.prefix_offset:], **self.decode_kwargs)
        if len(text) <= len(shown) or text.endswith("\ufffd") or not text.startswith(shown):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return text[len(shown):]

    def flush(self) -> str:
        """Whatever remains at the end (including a genuinely incomplete character)."""
        shown = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset], **self.decode_kwargs)
        text = self.tokenizer.decode(self.ids[self.prefix_offset:], **self.decode_kwargs)
        self.prefix_offset = self.read_offset = len(self.ids)
        return text[len(shown):] if text.startswith(shown) else text


class BaseStreamer:
    def put(self, value: torch.Tensor) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError


class TextStreamer(BaseStreamer):
    """Print text to stdout as it is generated. The first `put` is the prompt; `skip_prompt=True` hides it."""

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, **decode_kwargs: Any) -> None:
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.decode_kwargs = decode_kwargs
        self.detok = IncrementalDetokenizer(tokenizer, **decode_kwargs)
        self.next_is_prompt = True

    def put(self, value: torch.Tensor) -> None:
        if value.dim() > 1 and value.shape[0] > 1:
            raise ValueError("TextStreamer streams one sequence; generate one prompt at a time to stream")
        ids = value.reshape(-1).tolist()
        if self.next_is_prompt:
            self.next_is_prompt = False
            if self.skip_prompt:
                return
        text = self.detok.push(ids)
        if text:
            self.on_finalized_text(text, stream_end=False)

    def end(self) -> None:
        text = self.detok.flush()
        self.detok = IncrementalDetokenizer(self.tokenizer, **self.decode_kwargs)
        self.next_is_prompt = True
        self.on_finalized_text(text, stream_end=True)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        print(text, flush=True, end="" if not stream_end else "\n")


class TextIteratorStreamer(TextStreamer):
    """Iterate over text chunks (e.g. from another thread running generate); raises queue.Empty after
    `timeout` seconds without text."""

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, timeout: float | None = None,
                 **decode_kwargs: Any) -> None:
        super().__init__(tokenizer, skip_prompt, **decode_kwargs)
        self.text_queue: queue.Queue = queue.Queue()
        self.stop_signal = None
        self.timeout = timeout

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.text_queue.put(text, timeout=self.timeout)
        if stream_end:
            self.text_queue.put(self.stop_signal, timeout=self.timeout)

    def __iter__(self) -> "TextIteratorStreamer":
        return self

    def __next__(self) -> str:
        value = self.text_queue.get(timeout=self.timeout)
        if value is self.stop_signal:
            raise StopIteration()
        return value
