"""Folders that only have a SentencePiece `tokenizer.model`, and GGUF vocabularies: import, conformance, errors.

No `tokenizer.model` fixture exists, so the test writes one: the Phi-3 vocabulary of the GGUF fixture (pieces,
scores, types) serialised as a `sentencepiece.ModelProto` by a tiny protobuf writer. When the `sentencepiece`
package is installed, it checks that the written file is a real SentencePiece model by tokenizing with it too.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from phikit.tokenizer.gguf_vocab import GGUFError, read_gguf_metadata
from phikit.tokenizer.sentencepiece_model import SentencePieceError, read_sentencepiece_model
from phikit.tokenizer.tokenization import AutoTokenizer, PhiTokenizer
from tests.tokenizer_cases import LLAMA_CPP, TOKENIZERS, llama_cpp_cases, phi_cases, require_fixtures

require_fixtures()

PHI3_GGUF = LLAMA_CPP / "ggml-vocab-phi-3.gguf"


# ----------------------------------------------------------------------------- a minimal protobuf writer

def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32 values are written as 10-byte two's complement varints
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field_varint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _field_bytes(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _field_float(number: int, value: float) -> bytes:
    return _varint(number << 3 | 5) + struct.pack("<f", value)


def write_sentencepiece_model(path: Path, pieces: list[str], scores: list[float], types: list[int]) -> None:
    """Serialise a BPE ModelProto with byte fallback, Llama/Phi-3 style (no normalisation, dummy prefix)."""
    body = b"".join(_field_bytes(1, _field_bytes(1, p.encode()) + _field_float(2, s) + _field_varint(3, t))
                    for p, s, t in zip(pieces, scores, types))
    trainer = (_field_varint(3, 2) + _field_varint(4, len(pieces)) + _field_varint(35, 1) + _field_varint(40, 0)
               + _field_varint(41, 1) + _field_varint(42, 2) + _field_varint(43, -1))
    normalizer = _field_bytes(1, b"identity") + _field_varint(3, 1) + _field_varint(4, 0) + _field_varint(5, 1)
    path.write_bytes(body + _field_bytes(2, trainer) + _field_bytes(3, normalizer))


@pytest.fixture(scope="module")
def spm_folder(tmp_path_factory) -> Path:
    """A Phi-3 folder with only tokenizer.model (32000 pieces) and Phi-3-mini's tokenizer_config.json."""
    meta = read_gguf_metadata(PHI3_GGUF)
    n = 32000  # the .model file holds the base pieces; chat tokens come from tokenizer_config.json
    types = meta["tokenizer.ggml.token_type"][:n]
    types[2] = 3  # </s> is a control piece in SentencePiece; GGUF marks it user-defined
    folder = tmp_path_factory.mktemp("phi3-spm")
    write_sentencepiece_model(folder / "tokenizer.model", meta["tokenizer.ggml.tokens"][:n],
                              meta["tokenizer.ggml.scores"][:n], types)
    shutil.copy(TOKENIZERS / "phi-3-mini" / "tokenizer_config.json", folder / "tokenizer_config.json")
    return folder


def test_protobuf_reader_reads_pieces_and_flags(spm_folder: Path) -> None:
    model = read_sentencepiece_model(spm_folder / "tokenizer.model")
    assert len(model.pieces) == 32000 and model.pieces[:3] == ["<unk>", "<s>", "</s>"]
    assert (model.model_type, model.byte_fallback, model.unk_id, model.bos_id, model.eos_id, model.pad_id) == \
        (2, True, 0, 1, 2, -1)
    assert (model.add_dummy_prefix, model.remove_extra_whitespaces) == (True, False)
    assert model.pieces[29871] == "▁" and model.types[3] == 6


def test_spm_folder_passes_phi3_cases(spm_folder: Path) -> None:
    tok = AutoTokenizer.from_pretrained(spm_folder)
    bad = [text for text, ids in llama_cpp_cases("phi-3") if tok.encode(text, add_special_tokens=False) != ids]
    assert bad == []
    assert len(tok) == 32011 and tok.eos_token_id == 32000 and tok.convert_tokens_to_ids("<|end|>") == 32007
    case = phi_cases()["chat_template_and_ids"][0]  # Phi-3-mini: chat tokens from the config, with rstrip
    assert tok.apply_chat_template(case["messages"], add_generation_prompt=True, return_dict=False) == \
        case["expected_ids"]
    assert tok.decode(case["expected_ids"], skip_special_tokens=True) == \
        AutoTokenizer.from_pretrained(TOKENIZERS / "phi-3-mini").decode(case["expected_ids"], skip_special_tokens=True)


def test_written_model_is_a_real_sentencepiece_model(spm_folder: Path) -> None:
    spm = pytest.importorskip("sentencepiece", reason="optional cross-check with the sentencepiece library")
    proc = spm.SentencePieceProcessor(model_file=str(spm_folder / "tokenizer.model"))
    for text, ids in llama_cpp_cases("phi-3"):
        if text.strip() == "" and text:  # whitespace-only: SentencePiece drops the lone '▁' Hugging Face keeps
            continue
        assert proc.encode(text) == ids, text


def test_corrupt_tokenizer_model_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.model"
    path.write_bytes(b"\x0a\xff\xff\xff\xff\x0f garbage")
    with pytest.raises(SentencePieceError, match=str(path)):
        AutoTokenizer.from_pretrained(tmp_path)
    path.write_bytes(b"")
    with pytest.raises(SentencePieceError, match="no vocabulary pieces"):
        AutoTokenizer.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------- GGUF

def test_gguf_settings_and_stop_tokens() -> None:
    tok = PhiTokenizer.from_gguf(PHI3_GGUF)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (1, 32000, 32000, 0)
    assert tok.convert_tokens_to_ids("<|end|>") == 32007 and len(tok) == 32064
    assert tok.model_max_length == 4096 and tok.add_bos_token
    assert tok.encode("Hello") == [1, 15043]
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=False, tokenize=False)
    assert text == "<s><|user|>\nHi<|end|>\n<|assistant|>\n"


@pytest.mark.parametrize("damage", ["magic", "truncated", "version", "type"])
def test_corrupt_gguf_names_the_file(tmp_path: Path, damage: str) -> None:
    data = bytearray(PHI3_GGUF.read_bytes())
    if damage == "magic":
        data[:4] = b"GGUX"
    elif damage == "truncated":
        data = data[:5000]
    elif damage == "version":
        data[4:8] = struct.pack("<I", 99)
    else:  # first key's value type
        key_len = struct.unpack_from("<Q", data, 24)[0]
        struct.pack_into("<I", data, 32 + key_len, 77)
    path = tmp_path / "broken.gguf"
    path.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match=str(path)):
        AutoTokenizer.from_pretrained(path)


def test_gguf_without_tokenizer_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "weights-only.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))
    with pytest.raises(GGUFError, match="tokenizer.ggml.model"):
        PhiTokenizer.from_gguf(path)
