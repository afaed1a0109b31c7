"""Fuzz the safetensors header parser: bytes become a .safetensors file, read with `read_safetensors_header` and
`CheckpointReader.get` for each tensor. Only `CheckpointError` may escape.

Inputs whose first byte is even are the whole file; odd ones are the header's JSON text, given a length prefix and
as many data bytes as the second byte says (so the fuzzer mutates JSON, not the length)."""

from __future__ import annotations

import json
import os
import struct
import tempfile

DIR = tempfile.mkdtemp(prefix="fuzz-st-")
PATH = os.path.join(DIR, "model.safetensors")


def to_file(data: bytes) -> bytes:
    if len(data) < 2 or data[0] % 2 == 0:
        return data[1:]
    header, size = data[2:], data[1] % 64
    return struct.pack("<Q", len(header)) + header + bytes(range(size))


def TestOneInput(data: bytes) -> None:
    from phikit.weights.checkpoint import CheckpointError, CheckpointReader, read_safetensors_header

    with open(PATH, "wb") as f:
        f.write(to_file(data))
    try:
        refs = read_safetensors_header(PATH)
        with CheckpointReader([PATH]) as reader:
            for name in refs:
                reader.get(name)
    except CheckpointError:
        pass


def seeds() -> list[bytes]:
    def entry(dtype, shape, begin, end):
        return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}

    headers = [
        {"w": entry("F32", [4], 0, 16)},
        {"__metadata__": {"format": "pt"}, "a": entry("F16", [2, 2], 0, 8), "b": entry("I8", [8], 8, 16)},
        {"e": entry("BF16", [0], 0, 0), "u": entry("U8", [3], 0, 3), "f": entry("F64", [1], 3, 11)},
        {"m": entry("BOOL", [2, 1, 3], 0, 6), "n": entry("I64", [], 6, 14)},
    ]
    out = []
    for h in headers:
        text = json.dumps(h).encode()
        out.append(bytes([1, 16]) + text)
        out.append(bytes([0]) + struct.pack("<Q", len(text)) + text + bytes(16))
    return out


if __name__ == "__main__":
    from fuzzing import fuzz

    fuzz(TestOneInput, seeds(), ["phikit.weights.checkpoint", "phikit.weights.safetensors_header"], include=("phikit.weights",))
