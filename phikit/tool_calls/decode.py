"""The text of a stream of token ids, decoded as the ids arrive, with the positions of marker tokens.

Decoding is incremental but byte-correct: the ids since the last committed point are decoded together with a short
window of the ids before them (vLLM's prefix/read offsets), and only the difference is added, so a character whose
UTF-8 bytes span several tokens comes out whole and a SentencePiece word keeps its leading space. A trailing U+FFFD
(a character still missing bytes) is held back until the next ids complete it, or until the end of the output.

Marker ids (`<|tool_call|>`, `<|/tool_call|>` in Phi-4-mini) are written into the text as their token strings, and
their offsets are recorded, so a parser can tell a marker token from the same characters spelled by ordinary tokens.
Control tokens (see `control_ids`) never reach the text.
"""

from __future__ import annotations

from typing import Any

_INCOMPLETE = "\ufffd"


def control_ids(tokenizer: Any, keep: set[int]) -> set[int]:
    """Ids whose text must never appear in output: the tokenizer's special ids, and its added tokens that are marked
    special or look like control tokens (`<|end|>`, `<|tool|>`, `</s>`: `<...>` without whitespace), except `keep`.
    Added tokens of plain text (phi-2's runs of spaces) are kept."""
    out = set(getattr(tokenizer, "all_special_ids", None) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for i, added in dict(decoder).items():
        content = getattr(added, "content", str(added))
        looks_control = content.startswith("<") and content.endswith(">") and not any(c.isspace() for c in content)
        if getattr(added, "special", False) or looks_control:
            out.add(int(i))
    return out - keep


class IncrementalText:
    """`push(ids)` grows `text`; `marks` lists `(offset, marker)` for each marker token, in order.

    `text` never shrinks and what it held stays its prefix, so callers may show any part of it at once."""

    def __init__(self, tokenizer: Any, markers: dict[int, str], dropped: set[int]) -> None:
        self.tokenizer = tokenizer
        self.markers = markers  # marker id -> the text it stands for
        self.dropped = dropped  # ids that never reach the text
        self.marks: list[tuple[int, str]] = []
        self._stable = ""  # text of everything committed
        self._tail = ""  # text of ids[read:] shown so far (its trailing incomplete character held back)
        self._ids: list[int] = []  # text ids since the last marker
        self._prefix = 0  # ids[prefix:read]: the window decoded before the new ids
        self._read = 0  # ids[:read] are committed into _stable

    @property
    def text(self) -> str:
        return self._stable + self._tail

    def push(self, ids: list[int], final: bool = False) -> None:
        """Add `ids`; `final`: the output ended, so an incomplete character is written as U+FFFD."""
        for i in ids:
            if i in self.markers:
                self._decode(final=True)
                self.marks.append((len(self._stable), self.markers[i]))
                self._stable += self.markers[i]
                self._ids, self._prefix, self._read = [], 0, 0
            elif i not in self.dropped:
                self._ids.append(i)
        self._decode(final)

    def _decode(self, final: bool) -> None:
        if self._read == len(self._ids):
            self._tail = ""
            return
        window = self._ids[self._prefix:]
        before = self._text_of(window[:self._read - self._prefix])
        new = self._text_of(window)[len(before):]
        if final or not new.endswith(_INCOMPLETE):
            self._stable += new
            self._tail = ""
            self._prefix, self._read = self._read, len(self._ids)
        else:
            self._tail = new.rstrip(_INCOMPLETE)

    def _text_of(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""
