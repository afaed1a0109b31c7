"""Fuzz target: bytes as a .gguf file given to the GGUF tokenizer import (`PhiTokenizer.from_gguf`); seeded with
small valid vocabularies and the header of a real llama.cpp vocabulary, truncated. Only `GGUFError` may escape.

    python tests/fuzz/fuzz_gguf_metadata.py -max_total_time=120 -timeout=10
"""

from __future__ import annotations

import pathlib
import struct
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

REAL = pathlib.Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "tokenizers" / "llama.cpp"
_PATH: pathlib.Path | None = None


def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _kv_str(key: str, value: str) -> bytes:
    return _s(key) + struct.pack("<I", 8) + _s(value)


def _kv_strs(key: str, values: list[str]) -> bytes:
    return _s(key) + struct.pack("<IIQ", 9, 8, len(values)) + b"".join(_s(v) for v in values)


def _kv_nums(key: str, fmt: str, type_id: int, values: list) -> bytes:
    return _s(key) + struct.pack("<IIQ", 9, type_id, len(values)) + struct.pack(f"<{len(values)}{fmt}", *values)


def _file(entries: list[bytes]) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(entries)) + b"".join(entries)


def seeds() -> list[bytes]:
    gpt2 = _file([_kv_str("tokenizer.ggml.model", "gpt2"), _kv_strs("tokenizer.ggml.tokens", ["a", "b", "ab", "<e>"]),
                  _kv_nums("tokenizer.ggml.token_type", "i", 5, [1, 1, 1, 3]),
                  _kv_strs("tokenizer.ggml.merges", ["a b"]), _s("tokenizer.ggml.eos_token_id") +
                  struct.pack("<II", 4, 3)])
    pieces = ["<unk>", "<s>", "</s>", "▁", "a", "b", "▁a", "ab"] + [f"<0x{i:02X}>" for i in range(4)]
    llama = _file([_kv_str("general.name", "phi3"), _kv_str("tokenizer.ggml.model", "llama"),
                   _kv_strs("tokenizer.ggml.tokens", pieces),
                   _kv_nums("tokenizer.ggml.scores", "f", 6, [0.0] * 3 + [-float(i) for i in range(len(pieces) - 3)]),
                   _kv_nums("tokenizer.ggml.token_type", "i", 5, [2, 3, 3] + [1] * 5 + [6] * 4),
                   _kv_str("tokenizer.chat_template", "{{ messages }}")])
    out = [gpt2, llama]
    for name in ("ggml-vocab-phi-3.gguf", "ggml-vocab-gpt-2.gguf"):
        if (REAL / name).is_file():
            out.append((REAL / name).read_bytes()[:4096])
    return out


def TestOneInput(data: bytes) -> None:
    global _PATH
    from phikit.tokenizer.gguf_vocab import GGUFError
    from phikit.tokenizer.tokenization import PhiTokenizer

    if _PATH is None:
        _PATH = pathlib.Path(tempfile.mkdtemp(prefix="fuzz-gguf-")) / "fuzz.gguf"
    _PATH.write_bytes(data)
    try:
        tok = PhiTokenizer.from_gguf(_PATH)
    except GGUFError:
        return
    tok.decode(tok.encode("ab a"))


if __name__ == "__main__":
    from fuzzing import fuzz

    # gguf's reader is instrumented too: its parsing is what the mutations should explore
    fuzz(TestOneInput, seeds(), ["gguf.gguf_reader", "phikit.tokenizer.gguf_vocab"], include=("phikit", "gguf"))
