"""GPT-2's byte-level alphabet: the reversible map from the 256 byte values to printable characters that byte-level
BPE vocabularies (phi-2, tiktoken-built ones) spell their tokens in."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """byte -> the character that stands for it: printable Latin-1 bytes stand for themselves, the others for
    chr(256 + k) in byte order."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), 256))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    """The inverse: character -> byte."""
    return {c: b for b, c in byte_to_unicode().items()}
