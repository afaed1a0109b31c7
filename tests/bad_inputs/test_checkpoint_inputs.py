"""Hostile checkpoint files: safetensors headers, shard indexes whose names leave the folder, pytorch_model.bin files
that are no state dict, folders without weights. Each is a real file on disk; each must be a `CheckpointError`
naming the file (and the tensor or entry), and nothing outside the checkpoint folder may be read."""

from __future__ import annotations

import json
import os
import pathlib
import struct

import pytest
import torch
from safetensors.torch import save_file

from phikit.weights.checkpoint import CheckpointError, CheckpointReader, find_weight_files, read_safetensors_header

from .harness import Case, expect_clear_error, folder_snapshot, params

BAD = "bad.safetensors"


def _write(folder: pathlib.Path, header, data: bytes = b"\0" * 16, raw: bytes | None = None,
           length: int | None = None) -> str:
    body = raw if raw is not None else json.dumps(header).encode()
    path = folder / BAD
    path.write_bytes(struct.pack("<Q", len(body) if length is None else length) + body + data)
    return str(path)


def _read_all(path: str) -> None:
    """What the loader does: parse the header, then read every tensor."""
    with CheckpointReader([path]) as reader:
        for name in reader.refs:
            reader.get(name)


def header_case(id: str, header, data: bytes = b"\0" * 16, names=(BAD, "'w'"), raw: bytes | None = None,
                length: int | None = None) -> Case:
    return Case(id, lambda d: _read_all(_write(d, header, data, raw, length)), CheckpointError, tuple(names))


def w(dtype="F32", shape=(4,), offsets=(0, 16)) -> dict:
    return {"dtype": dtype, "shape": list(shape) if isinstance(shape, tuple) else shape,
            "data_offsets": list(offsets) if isinstance(offsets, tuple) else offsets}


HEADER_CASES = [
    header_case("offsets-negative-begin", {"w": w(offsets=(-8, 8), shape=(4,))}, names=(BAD, "'w'", "-8")),
    header_case("offsets-negative-both", {"w": w(offsets=(-16, 0))}, names=(BAD, "'w'", "-16")),
    header_case("offsets-begin-after-end", {"w": w(offsets=(16, 0))}, names=(BAD, "'w'", "[16, 0]")),
    header_case("offsets-float", {"w": w(offsets=[0.0, 16])}, names=(BAD, "'w'", "0.0")),
    header_case("offsets-float-end", {"w": w(offsets=[0, 16.5])}, names=(BAD, "'w'", "16.5")),
    header_case("offsets-bool", {"w": w(offsets=[False, 16])}, names=(BAD, "'w'", "false")),
    header_case("offsets-strings", {"w": w(offsets=["0", "16"])}, names=(BAD, "'w'", '"0"')),
    header_case("offsets-three", {"w": w(offsets=[0, 8, 16])}, names=(BAD, "'w'", "data_offsets")),
    header_case("offsets-one", {"w": w(offsets=[16])}, names=(BAD, "'w'", "data_offsets")),
    header_case("offsets-not-list", {"w": w(offsets="0-16")}, names=(BAD, "'w'", "0-16")),
    header_case("offsets-null", {"w": w(offsets=None)}, names=(BAD, "'w'", "null")),
    header_case("offsets-nan", None, raw=b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[NaN,16]}}',
                names=(BAD, "'w'", "NaN")),
    header_case("offsets-huge-digits", None, raw=b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,' +
                b"9" * 5000 + b"]}}", names=(BAD,)),
    header_case("offsets-past-the-file", {"w": w(shape=(8,), offsets=(0, 32))}, names=(BAD, "'w'", "truncated")),
    header_case("bytes-disagree-with-shape", {"w": w(shape=(3,))}, names=(BAD, "'w'", "[3]", "12 bytes")),
    header_case("bytes-disagree-with-dtype", {"w": w(dtype="F64")}, names=(BAD, "'w'", "F64", "32 bytes")),
    header_case("shape-negative", {"w": w(shape=[-4])}, names=(BAD, "'w'", "-4")),
    header_case("shape-negative-pair", {"w": w(shape=[-2, -2])}, names=(BAD, "'w'", "[-2, -2]")),
    header_case("shape-float", {"w": w(shape=[4.0])}, names=(BAD, "'w'", "4.0")),
    header_case("shape-string", {"w": w(shape="4")}, names=(BAD, "'w'", '"4"')),
    header_case("shape-bool", {"w": w(shape=[True, 4])}, names=(BAD, "'w'", "true")),
    header_case("shape-nested", {"w": w(shape=[[4]])}, names=(BAD, "'w'", "[[4]]")),
    header_case("shape-null", {"w": w(shape=None)}, names=(BAD, "'w'", "null")),
    header_case("overlapping-tensors", {"w": w(), "v": w(shape=(2,), offsets=(8, 16))},
                names=(BAD, "overlaps", "'w'", "'v'")),
    header_case("aliased-tensors", {"w": w(), "v": w()}, names=(BAD, "overlaps")),
    header_case("hole-before-tensor", {"w": w(shape=(2,), offsets=(8, 16))}, names=(BAD, "'w'", "no tensor")),
    header_case("bytes-after-last-tensor", {"w": w(shape=(2,), offsets=(0, 8))}, names=(BAD, "8 bytes", "16")),
    header_case("dtype-unknown", {"w": w(dtype="F8_E4M3", shape=(16,))}, names=(BAD, "'w'", "F8_E4M3")),
    header_case("dtype-lowercase", {"w": w(dtype="f32")}, names=(BAD, "'w'", "'f32'")),
    header_case("dtype-number", {"w": w(dtype=4)}, names=(BAD, "'w'", "4")),
    header_case("dtype-null", {"w": w(dtype=None)}, names=(BAD, "'w'", "None")),
    header_case("header-list", [w()], names=(BAD, "list")),
    header_case("header-string", "w", names=(BAD, "str")),
    header_case("header-number", 5, names=(BAD, "int")),
    header_case("header-null", None, raw=b"null", names=(BAD, "NoneType")),
    header_case("metadata-string", {"__metadata__": "pt", "w": w()}, names=(BAD, "__metadata__", "pt")),
    header_case("metadata-int-values", {"__metadata__": {"format": 1}, "w": w()}, names=(BAD, "__metadata__")),
    header_case("metadata-list", {"__metadata__": ["format"], "w": w()}, names=(BAD, "__metadata__")),
    header_case("metadata-nested", {"__metadata__": {"a": {"b": "c"}}, "w": w()}, names=(BAD, "__metadata__")),
    header_case("entry-number", {"w": 5}, names=(BAD, "'w'", "5")),
    header_case("entry-list", {"w": [0, 16]}, names=(BAD, "'w'")),
    header_case("entry-lacks-dtype", {"w": {"shape": [4], "data_offsets": [0, 16]}}, names=(BAD, "'w'", "dtype")),
    header_case("entry-lacks-shape", {"w": {"dtype": "F32", "data_offsets": [0, 16]}}, names=(BAD, "'w'", "shape")),
    header_case("entry-lacks-offsets", {"w": {"dtype": "F32", "shape": [4]}}, names=(BAD, "'w'", "data_offsets")),
    header_case("duplicate-tensor-name", None, raw=json.dumps({"w": w()}).encode()[:-1] + b',"w":' +
                json.dumps(w()).encode() + b"}", names=(BAD, "'w'", "twice")),
    header_case("duplicate-field", None, raw=b'{"w":{"dtype":"F32","dtype":"F16","shape":[4],"data_offsets":[0,16]}}',
                names=(BAD, "'dtype'", "twice")),
    header_case("json-corrupt", None, raw=b'{"w": {"dtype": "F32", ', names=(BAD, "corrupt")),
    header_case("json-not-utf8", None, raw=b'{"\xff\xfe": 1}', names=(BAD, "corrupt")),
    header_case("json-deep-nesting", None, raw=b"[" * 200_000 + b"]" * 200_000, names=(BAD, "corrupt")),
    header_case("length-past-the-file", {"w": w()}, length=10_000, names=(BAD, "10000", "truncated")),
    header_case("length-huge", {"w": w()}, length=2**63, names=(BAD, str(2**63))),
    Case("file-shorter-than-length-prefix", lambda d: _read_all(_raw(d, b"\x01\x00")), CheckpointError,
         (BAD, "truncated")),
    Case("file-empty", lambda d: _read_all(_raw(d, b"")), CheckpointError, (BAD, "0 bytes")),
    Case("file-is-a-folder", lambda d: _read_all(_folder(d)), CheckpointError, (BAD,)),
]


def _raw(folder: pathlib.Path, data: bytes) -> str:
    (folder / BAD).write_bytes(data)
    return str(folder / BAD)


def _folder(folder: pathlib.Path) -> str:
    (folder / BAD).mkdir()
    return str(folder / BAD)


@pytest.fixture
def shard_folder(tmp_path) -> pathlib.Path:
    """ckpt/ with two real shards, and a real shard just outside it (elsewhere/) that an index must not reach."""
    ckpt, elsewhere = tmp_path / "ckpt", tmp_path / "elsewhere"
    ckpt.mkdir()
    elsewhere.mkdir()
    save_file({"a": torch.ones(2)}, ckpt / "model-00001-of-00002.safetensors")
    save_file({"b": torch.ones(2)}, ckpt / "model-00002-of-00002.safetensors")
    save_file({"c": torch.full((2,), 7.0)}, elsewhere / "x.safetensors")
    torch.save({"c": torch.ones(2)}, elsewhere / "x.bin")
    return ckpt


INDEX = "model.safetensors.index.json"
GOOD = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}


def _index(folder: pathlib.Path, body, name: str = INDEX) -> list[str]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    (folder / name).write_bytes(raw)
    return find_weight_files(str(folder))


def index_case(id: str, body, names=(INDEX,), name: str = INDEX) -> Case:
    return Case(id, lambda d: _index(d, body, name), CheckpointError, tuple(names))


def entry_case(id: str, shard, extra_names=()) -> Case:
    return index_case(id, {"weight_map": {**GOOD, "c": shard}}, (INDEX, "'c'", *extra_names))


INDEX_CASES = [
    entry_case("shard-parent-dir", "../elsewhere/x.safetensors", ("../elsewhere/x.safetensors", "inside")),
    entry_case("shard-parent-deep", "a/../../elsewhere/x.safetensors", ("'..' component",)),
    entry_case("shard-parent-only", "..", ("'..' component",)),
    Case("shard-absolute", lambda d: _index(d, {"weight_map": {**GOOD, "c": str(d.parent / "elsewhere" /
                                                                                 "x.safetensors")}}),
         CheckpointError, (INDEX, "'c'", "absolute")),
    entry_case("shard-absolute-root", "/etc/x.safetensors", ("absolute",)),
    entry_case("shard-backslash-parent", "..\\elsewhere\\x.safetensors", ("backslash",)),
    entry_case("shard-unc-path", "\\\\server\\share\\x.safetensors", ("backslash",)),
    entry_case("shard-drive-letter", "C:/elsewhere/x.safetensors", ("absolute",)),
    entry_case("shard-drive-relative", "C:x.safetensors", ("absolute",)),
    entry_case("shard-empty-name", "", ("empty",)),
    entry_case("shard-nul-byte", "model-00001-of-00002.safetensors\0.txt", ("NUL",)),
    entry_case("shard-dot-component", "./model-00001-of-00002.safetensors", ("'.'",)),
    entry_case("shard-empty-component", "sub//x.safetensors", ("empty",)),
    entry_case("shard-trailing-slash", "sub/", ("empty",)),
    entry_case("shard-int", 5, ("int",)),
    entry_case("shard-null", None, ("NoneType",)),
    entry_case("shard-list", ["model-00001-of-00002.safetensors"], ("list",)),
    entry_case("shard-object", {"file": "x.safetensors"}, ("dict",)),
    entry_case("shard-bool", True, ("bool",)),
    entry_case("shard-wrong-suffix", "model-00001-of-00002.bin", (".safetensors",)),
    entry_case("shard-absent", "model-00003-of-00003.safetensors", ("absent", "model-00003-of-00003")),
    index_case("index-list", [GOOD], (INDEX, "list")),
    index_case("index-string", "weight_map", (INDEX, "str")),
    index_case("index-null", None, (INDEX, "NoneType")),
    index_case("weight-map-missing", {"metadata": {}}, (INDEX, "weight_map")),
    index_case("weight-map-list", {"weight_map": list(GOOD.values())}, (INDEX, "weight_map")),
    index_case("weight-map-string", {"weight_map": "model.safetensors"}, (INDEX, "weight_map")),
    index_case("weight-map-empty", {"weight_map": {}}, (INDEX, "empty")),
    index_case("index-corrupt-json", b'{"weight_map": {', (INDEX, "not a valid shard index")),
    index_case("index-not-utf8", b'{"weight_map": {"\xff": 1}}', (INDEX, "not a valid shard index")),
    index_case("index-deep-nesting", b"[" * 200_000 + b"]" * 200_000, (INDEX, "not a valid shard index")),
    index_case("index-empty-file", b"", (INDEX,)),
    Case("index-is-a-folder", lambda d: (d / INDEX).mkdir() or find_weight_files(str(d)), CheckpointError,
         (INDEX,)),
    index_case("bin-index-parent-dir", {"weight_map": {"c": "../elsewhere/x.bin"}},
               ("pytorch_model.bin.index.json", "'c'", "inside"), name="pytorch_model.bin.index.json"),
    index_case("bin-index-absolute", {"weight_map": {"c": "/elsewhere/x.bin"}},
               ("pytorch_model.bin.index.json", "absolute"), name="pytorch_model.bin.index.json"),
    index_case("bin-index-names-safetensors", {"weight_map": {"a": "model-00001-of-00002.safetensors"}},
               ("pytorch_model.bin.index.json", ".bin"), name="pytorch_model.bin.index.json"),
]


def _bin(folder: pathlib.Path, obj=None, raw: bytes | None = None) -> None:
    path = folder / "pytorch_model.bin"
    if raw is not None:
        path.write_bytes(raw)
    else:
        torch.save(obj, path)
    _read_all_files(find_weight_files(str(folder)))


def _read_all_files(files: list[str]) -> None:
    with CheckpointReader(files) as reader:
        for name in reader.refs:
            reader.get(name)


BIN = "pytorch_model.bin"
FOLDER_CASES = [
    Case("bin-holds-a-list", lambda d: _bin(d, [torch.ones(2)]), CheckpointError, (BIN, "list")),
    Case("bin-holds-a-tensor", lambda d: _bin(d, torch.ones(2)), CheckpointError, (BIN, "Tensor")),
    Case("bin-value-not-tensor", lambda d: _bin(d, {"w": 3}), CheckpointError, (BIN, "'w'", "int")),
    Case("bin-key-not-string", lambda d: _bin(d, {3: torch.ones(2)}), CheckpointError, (BIN, "3")),
    Case("bin-corrupt", lambda d: _bin(d, raw=b"PK\x03\x04 not a zip"), CheckpointError, (BIN, "weights-only")),
    Case("bin-empty", lambda d: _bin(d, raw=b""), CheckpointError, (BIN,)),
    Case("folder-missing", lambda d: find_weight_files(str(d / "nope")), CheckpointError, ("nope",)),
    Case("folder-is-a-file", lambda d: (d / "f").write_text("x") and find_weight_files(str(d / "f")),
         CheckpointError, ("f",)),
    Case("folder-empty", lambda d: find_weight_files(str(d)), CheckpointError, ("no weights", "model.safetensors")),
    Case("weights-file-is-a-folder", lambda d: (d / "model.safetensors").mkdir() or find_weight_files(str(d)),
         CheckpointError, ("no weights",)),
    Case("use-safetensors-but-only-bin", lambda d: torch.save({"w": torch.ones(1)}, d / BIN) or find_weight_files(
        str(d), use_safetensors=True), CheckpointError, ("model.safetensors", "use_safetensors=True")),
    Case("variant-absent", lambda d: save_file({"w": torch.ones(1)}, d / "model.safetensors") or find_weight_files(
        str(d), variant="fp16"), CheckpointError, ("model.fp16.safetensors",)),
    Case("variant-with-slash", lambda d: find_weight_files(str(d), variant="../x"), ValueError, ("variant", "../x")),
    Case("variant-not-string", lambda d: find_weight_files(str(d), variant=16), ValueError, ("variant", "16")),
]

CASES = HEADER_CASES + INDEX_CASES + FOLDER_CASES


@pytest.mark.parametrize("case", params(HEADER_CASES + FOLDER_CASES))
def test_bad_checkpoint_file_is_a_clear_error(case, tmp_path) -> None:
    expect_clear_error(case, tmp_path)


@pytest.mark.parametrize("case", params(INDEX_CASES))
def test_bad_shard_index_is_a_clear_error_and_reads_nothing_outside(case, shard_folder) -> None:
    outside = folder_snapshot(shard_folder.parent / "elsewhere")
    expect_clear_error(case, shard_folder)
    assert folder_snapshot(shard_folder.parent / "elsewhere") == outside


def test_good_header_and_index_still_load(shard_folder) -> None:
    (shard_folder / INDEX).write_text(json.dumps({"metadata": {"total_size": 16}, "weight_map": GOOD}))
    files = find_weight_files(str(shard_folder))
    assert [os.path.basename(f) for f in files] == sorted(GOOD.values())
    with CheckpointReader(files) as reader:
        assert torch.equal(reader.get("a"), torch.ones(2)) and torch.equal(reader.get("b"), torch.ones(2))


def test_zero_sized_and_unaligned_tensors_are_fine(tmp_path) -> None:
    """Edge cases the strict checks must not refuse: empty tensors sharing an offset, odd byte offsets."""
    header = {"e": w(shape=(0,), offsets=(0, 0)), "u8": w(dtype="U8", shape=(1,), offsets=(0, 1)),
              "f": w(dtype="F32", shape=(2,), offsets=(1, 9))}
    path = _write(tmp_path, header, data=bytes(range(9)))
    refs = read_safetensors_header(path)
    assert refs["e"].shape == (0,) and refs["f"].shape == (2,)
    with CheckpointReader([path]) as reader:
        assert reader.get("e").numel() == 0
        assert torch.equal(reader.get("f"), torch.frombuffer(bytearray(bytes(range(1, 9))), dtype=torch.float32))


def test_hub_cache_symlinks_are_followed(tmp_path) -> None:
    """Snapshot folders of the hub cache are symlinks into ../../blobs: the names are checked, not the links."""
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshots" / "abc"
    blobs.mkdir()
    snap.mkdir(parents=True)
    save_file({"a": torch.ones(2)}, blobs / "1111")
    save_file({"b": torch.zeros(2)}, blobs / "2222")
    (blobs / "3333").write_text(json.dumps({"weight_map": GOOD}))
    for name, blob in ((GOOD["a"], "1111"), (GOOD["b"], "2222"), (INDEX, "3333")):
        os.symlink(os.path.join("..", "..", "blobs", blob), snap / name)
    with CheckpointReader(find_weight_files(str(snap))) as reader:
        assert torch.equal(reader.get("b"), torch.zeros(2))
