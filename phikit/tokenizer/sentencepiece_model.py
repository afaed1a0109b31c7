"""Import a SentencePiece `tokenizer.model` (and SentencePiece-style vocabularies from GGUF) as a `tokenizers.Tokenizer`.

`tokenizer.model` is a serialised `sentencepiece.ModelProto`. A minimal protobuf wire-format reader pulls out what
a tokenizer needs, so no `sentencepiece` / `protobuf` runtime dependency is required:

    ModelProto      1: repeated SentencePiece pieces   2: TrainerSpec   3: NormalizerSpec
    SentencePiece   1: piece (string)   2: score (float)   3: type (enum, below)
    TrainerSpec     3: model_type (1 unigram, 2 bpe)   35: byte_fallback   40..43: unk/bos/eos/pad ids
    NormalizerSpec  2: precompiled_charsmap   3: add_dummy_prefix (default true)
                    4: remove_extra_whitespaces (default true)

Piece types (shared with GGUF's `tokenizer.ggml.token_type`): 1 normal, 2 unknown, 3 control, 4 user-defined,
5 unused, 6 byte. The tokenizer built here equals Phi-3's `tokenizer.json` (a `▁` prefix and `▁` for spaces, BPE
merges in score order, byte fallback, `▁`-to-space decoding).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
MODEL_UNIGRAM, MODEL_BPE = 1, 2


class SentencePieceError(ValueError):
    """A `tokenizer.model` is malformed or of a kind phikit cannot import; the message names the file."""


@dataclass
class SentencePieceModel:
    """The parts of a SentencePiece model a tokenizer needs."""

    pieces: list[str]
    scores: list[float]
    types: list[int]
    model_type: int = MODEL_BPE
    byte_fallback: bool = False
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = -1
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    precompiled_charsmap: bytes = b""
    extra: dict = field(default_factory=dict)


def _varint(buf: bytes, pos: int, path: str) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise SentencePieceError(f"{path}: truncated or corrupt protobuf (bad varint at byte {pos}); "
                                     "re-download tokenizer.model.")
        b = buf[pos]
        result |= (b & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not b & 0x80:
            return result, pos


def _fields(buf: bytes, path: str) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield (field number, wire type, value) for each field of one protobuf message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos, path)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, path)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos, path)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise SentencePieceError(f"{path}: unsupported protobuf wire type {wire} (field {number}); the file is "
                                     "not a SentencePiece model or is corrupt.")
        if pos > len(buf):
            raise SentencePieceError(f"{path}: truncated protobuf (field {number} runs past the end); re-download "
                                     "tokenizer.model.")
        yield number, wire, value


def read_sentencepiece_model(path: str | os.PathLike) -> SentencePieceModel:
    """Parse a SentencePiece `tokenizer.model`; raises `SentencePieceError` naming the file when it is malformed."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        buf = f.read()
    model = SentencePieceModel(pieces=[], scores=[], types=[])
    for number, wire, value in _fields(buf, path):
        if number == 1 and wire == 2:
            piece, score, ty = None, 0.0, NORMAL
            for n, w, v in _fields(value, path):
                if n == 1 and w == 2:
                    piece = v.decode("utf-8")
                elif n == 2 and w == 5:
                    score = struct.unpack("<f", v.to_bytes(4, "little"))[0]
                elif n == 3 and w == 0:
                    ty = v
            if piece is None:
                raise SentencePieceError(f"{path}: piece {len(model.pieces)} has no text; the file is corrupt.")
            model.pieces.append(piece)
            model.scores.append(score)
            model.types.append(ty)
        elif number == 2 and wire == 2:
            for n, w, v in _fields(value, path):
                if w != 0:
                    continue
                if n == 3:
                    model.model_type = v
                elif n == 35:
                    model.byte_fallback = bool(v)
                elif n in (40, 41, 42, 43):  # int32 ids are sign-extended varints (-1 = none)
                    setattr(model, ("unk_id", "bos_id", "eos_id", "pad_id")[n - 40], v - (1 << 64) if v >= 1 << 63 else v)
        elif number == 3 and wire == 2:
            for n, w, v in _fields(value, path):
                if n == 2 and w == 2:
                    model.precompiled_charsmap = bytes(v)
                elif n == 3 and w == 0:
                    model.add_dummy_prefix = bool(v)
                elif n == 4 and w == 0:
                    model.remove_extra_whitespaces = bool(v)
    if not model.pieces:
        raise SentencePieceError(f"{path}: no vocabulary pieces found; this is not a SentencePiece model file.")
    return model


def merges_from_scores(pieces: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """Rebuild BPE merges from SentencePiece scores: every split of a piece into two pieces, ranked by its score.

    SentencePiece BPE merges the adjacent pair whose union has the highest score, so ranking merges by the union's
    score (ties by the ids of the parts) gives the same segmentation; transformers' converter does the same.
    """
    # Only ordinary pieces merge: control, placeholder (`[PAD32011]`, type unknown) and byte pieces never do.
    vocab = {p: i for i, p in enumerate(pieces) if types[i] in (NORMAL, UNUSED)}
    merges: list[tuple[float, int, int, int, str, str]] = []
    for piece, pid in vocab.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            lid, rid = vocab.get(left), vocab.get(right)
            if lid is not None and rid is not None:
                merges.append((-scores[pid], pid, lid, rid, left, right))
    merges.sort()
    return [(m[4], m[5]) for m in merges]


def build_sentencepiece_tokenizer(model: SentencePieceModel,
                                  token_attrs: dict[str, dict] | None = None) -> Tokenizer:
    """Build the `tokenizers.Tokenizer` equal to a SentencePiece model (BPE or unigram).

    Control and user-defined pieces become added tokens, matched in the text before the model runs. `token_attrs`
    maps a piece to `AddedToken` attributes that override the defaults (e.g. `{"<|end|>": {"rstrip": True}}` from
    `tokenizer_config.json`'s `added_tokens_decoder`, since the .model file has no such flags).
    """
    pieces, types = model.pieces, model.types
    unk = pieces[model.unk_id] if 0 <= model.unk_id < len(pieces) else None
    if model.model_type == MODEL_BPE:
        bpe = models.BPE(vocab={p: i for i, p in enumerate(pieces)},
                         merges=merges_from_scores(pieces, model.scores, types), unk_token=unk, fuse_unk=True,
                         byte_fallback=model.byte_fallback)
        tok = Tokenizer(bpe)
    elif model.model_type == MODEL_UNIGRAM:
        tok = Tokenizer(models.Unigram(list(zip(pieces, model.scores)), unk_id=model.unk_id,
                                       byte_fallback=model.byte_fallback))
    else:
        raise SentencePieceError(f"SentencePiece model_type {model.model_type} is not supported (supported: 1 "
                                 "unigram, 2 bpe); convert the tokenizer to tokenizer.json with transformers.")
    steps: list[normalizers.Normalizer] = []
    if model.precompiled_charsmap:
        steps.append(normalizers.Precompiled(model.precompiled_charsmap))
    if model.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    if model.add_dummy_prefix:
        steps.append(normalizers.Prepend("\u2581"))
    steps.append(normalizers.Replace(" ", "\u2581"))
    tok.normalizer = normalizers.Sequence(steps)
    dec: list[decoders.Decoder] = [decoders.Replace("\u2581", " ")]
    if model.byte_fallback:
        dec.append(decoders.ByteFallback())
    dec.append(decoders.Fuse())
    if model.add_dummy_prefix:
        dec.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(dec)
    token_attrs = token_attrs or {}
    special, user = [], []
    for piece, ty in zip(pieces, types):
        if ty in (CONTROL, USER_DEFINED):
            attrs = {"special": ty == CONTROL, "normalized": False, **token_attrs.get(piece, {})}
            (special if attrs["special"] else user).append(AddedToken(piece, **attrs))
    tok.add_special_tokens(special)
    tok.add_tokens(user)
    return tok


def sentencepiece_settings(model: SentencePieceModel) -> dict:
    """The special tokens of a SentencePiece model, in the form `PhiTokenizer` takes."""
    def at(i: int) -> str | None:
        return model.pieces[i] if 0 <= i < len(model.pieces) else None
    return {"bos_token": at(model.bos_id), "eos_token": at(model.eos_id), "unk_token": at(model.unk_id),
            "pad_token": at(model.pad_id)}
