"""The Python side of the native library's C ABI (`native/phk_abi.h`), in one place.

ctypes cannot read a C header, so this module mirrors it by hand: `ABI_VERSION`, the named constants as IntEnums,
the decode step's structs as ctypes Structures, and every exported function's ctypes signature (`SIGNATURES`).
`check(lib)` runs when the library loads (`kernels._library`): it compares the library's own `PHK_ABI_VERSION`,
`sizeof` of each struct and the offset of each of its fields with this mirror, and raises a RuntimeError naming the
mismatch, so that a reordered field or a changed signature fails loudly instead of corrupting memory. Change
`phk_abi.h` and this file together, and bump the version in both.
"""

from __future__ import annotations

import ctypes
from enum import IntEnum

ABI_VERSION = 4  # PHK_ABI_VERSION in native/phk_abi.h

_REBUILD = "rebuild: delete ~/.cache/phikit/native (phikit builds the library again on next use)"
_DISAGREE = "the sources and abi.py disagree: change native/phk_abi.h and phikit/cpu/abi.py together"


class Status(IntEnum):
    """enum phk_status: what the functions that allocate return (phk_status_t, a C int: `STATUS_FUNCTIONS`)."""
    OK = 0
    ERR_NOMEM = 1  # phk_failed_alloc_bytes() says how many bytes
    ERR_UNSUPPORTED = 2  # a stub: this build lacks the instruction set the function needs


class LinearKind(IntEnum):
    """enum phk_linear_kind: `Lin.kind`."""
    NONE = 0
    BF16 = 1  # w bf16 [n, k]
    INT8 = 2  # phikit's int8 layout, scales bf16 [n]
    INT4 = 3  # phikit's int4 layout, scales = scales_and_zeros bf16 [k / group, n, 2]
    C12 = 4  # lossless 12-bit bf16: w = data, scales = bases, aux


class Act(IntEnum):
    """enum phk_act: `Model.act`."""
    GELU_NEW = 0  # fc1 -> gelu_new -> fc2 (phi)
    SILU_GATED = 1  # gate_up -> up * silu(gate) -> down (phi3)


class TilesKind(IntEnum):
    """enum phk_tiles_kind: `kind` of phk_gemm_tiles, the weight's format."""
    BF16 = 0  # w bf16 [n, k]
    INT4 = 1  # phikit's int4 layout, sz = scales_and_zeros bf16 [k / group, n, 2]
    INT8 = 2  # phikit's int8 layout, sz = scales bf16 [n]


class StructId(IntEnum):
    """enum phk_struct_id: `which` of phk_struct_size / phk_struct_offset."""
    LIN = 0
    LAYER = 1
    MODEL = 2


# C enum type name in phk_abi.h -> its mirror (tests compare them value by value)
ENUMS: dict[str, type[IntEnum]] = {"phk_status": Status, "phk_linear_kind": LinearKind, "phk_act": Act,
                                   "phk_tiles_kind": TilesKind, "phk_struct_id": StructId}
ENUM_PREFIXES: dict[str, str] = {"phk_status": "PHK_", "phk_linear_kind": "PHK_LINEAR_", "phk_act": "PHK_ACT_",
                                 "phk_tiles_kind": "PHK_TILES_", "phk_struct_id": "PHK_STRUCT_"}

_I64, _P, _F, _INT = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.c_int


class Lin(ctypes.Structure):
    """phk_lin: one linear of the decode step."""
    _fields_ = [("kind", _I64), ("n", _I64), ("k", _I64), ("group", _I64), ("w", _P), ("scales", _P), ("bias", _P),
                ("aux", _P)]


class Layer(ctypes.Structure):
    """phk_layer: one decoder layer's linears, norms and cache."""
    _fields_ = [("qkv", Lin * 3), ("o", Lin), ("up", Lin), ("down", Lin)] + [
        (name, _P) for name in ("norm1_w", "norm1_b", "norm2_w", "norm2_b", "qnorm_w", "qnorm_b", "knorm_w",
                                "knorm_b", "k_cache", "v_cache")]


class Model(ctypes.Structure):
    """phk_model: the shape and kind of the whole decoder."""
    _fields_ = [(name, _I64) for name in ("n_layers", "hidden", "heads", "kv_heads", "head_dim", "inter", "rmsnorm",
                                          "parallel", "act", "fused_qkv", "cache_head_stride", "window")] + [
        ("eps", _F), ("qk_eps", _F), ("scale", _F)]


STRUCTS: dict[StructId, tuple[str, type[ctypes.Structure]]] = {
    StructId.LIN: ("phk_lin", Lin), StructId.LAYER: ("phk_layer", Layer), StructId.MODEL: ("phk_model", Model)}

# every exported function: name -> (restype, argtypes), in phk_abi.h's order
SIGNATURES: dict[str, tuple[type | None, list]] = {
    "phk_abi_version": (_I64, []),
    "phk_struct_size": (_I64, [_I64]),
    "phk_struct_offset": (_I64, [_I64, _I64]),
    "phk_failed_alloc_bytes": (_I64, []),
    "phk_available": (_INT, []),
    "phk_has_int4": (_INT, []),
    "phk_has_decode_step": (_INT, []),
    "phk_has_c12": (_INT, []),
    "phk_has_bf16_dot": (_INT, []),
    "phk_has_gemm_tiles": (_INT, []),
    "phk_linear_bf16": (_INT, [_P, _P, _P, _P, _I64, _I64, _I64, _INT]),
    "phk_linear_int8": (_INT, [_P, _P, _P, _P, _P, _I64, _I64, _I64, _INT]),
    "phk_attention_decode": (_INT, [_P, _P, _P, _P] + [_I64] * 11 + [_F, _INT]),
    "phk_attention_decode_rows": (_INT, [_P, _P, _P, _P] + [_I64] * 11 + [_P, _P, _P, _F, _INT]),
    "phk_linear_int4": (_INT, [_P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _INT]),
    "phk_dequant_int4_f32": (None, [_P, _P, _P, _I64, _I64, _I64, _I64, _I64, _INT]),
    "phk_dequant_int8_f32": (None, [_P, _P, _P, _I64, _I64, _I64, _INT]),
    "phk_dequant_int4_bf16": (None, [_P, _P, _P, _I64, _I64, _I64, _I64, _I64, _INT]),
    "phk_dequant_int8_bf16": (None, [_P, _P, _P, _I64, _I64, _I64, _INT]),
    "phk_gemm_tiles_ok": (_INT, [_I64, _I64]),
    "phk_gemm_tiles": (_INT, [_P, _I64, _P, _P, _I64, _P, _P, _I64, _I64, _I64, _INT]),
    "phk_decode_step": (_INT, [_P, _P, _P, _P, _P, _P, _I64, _INT]),
    "phk_gelu_new": (None, [_P, _P, _I64]),  # the decode step's elementwise pieces, exported for tests
    "phk_silu_gated": (None, [_P, _P, _I64]),
    "phk_layer_norm": (None, [_P, _P, _P, _P, _I64, _F]),
    "phk_rms_norm": (None, [_P, _P, _P, _I64, _F]),
    "phk_lookup_bf16": (None, [_P, _P, _P, _I64, _INT]),
    "phk_silu_gated_lookup": (None, [_P, _P, _P, _I64, _I64, _INT]),
    "phk_rotary": (None, [_P, _P, _P, _P] + [_I64] * 9 + [_INT]),
    "phk_rms_norm_rows": (None, [_P, _P, _P, _I64, _I64, _F, _INT]),
    "phk_attention_prefill": (_INT, [_P, _P, _P, _P] + [_I64] * 14 + [_F, _I64, _INT]),
    "phk_c12_encode": (None, [_P, _P, _P, _P, _I64, _I64, _INT]),
    "phk_c12_exceptions": (None, [_P, _P, _I64, _I64, _INT]),
    "phk_linear_c12": (None, [_P, _P, _P, _P, _P, _P, _I64, _I64, _I64, _INT]),
    "phk_c12_decode_rows": (None, [_P, _P, _P, _P, _I64, _I64, _I64, _I64, _INT]),
}
# the functions declared to return phk_status_t: kernels.py gives each an errcheck that raises on anything but OK
STATUS_FUNCTIONS = frozenset({"phk_linear_bf16", "phk_linear_int8", "phk_attention_decode",
                              "phk_attention_decode_rows", "phk_linear_int4",
                              "phk_gemm_tiles", "phk_decode_step", "phk_attention_prefill"})
_ABI_FUNCTIONS = ("phk_abi_version", "phk_struct_size", "phk_struct_offset")


def _function(lib, name: str):
    fn = getattr(lib, name, None)
    if fn is None:
        raise RuntimeError(f"native ABI mismatch: the library {getattr(lib, '_name', lib)!r} has no {name}() "
                           f"(built from sources older than phikit/cpu/abi.py?); {_REBUILD}")
    if isinstance(fn, ctypes._CFuncPtr):  # a loaded library (tests may hand in a plain Python stand-in)
        fn.restype, fn.argtypes = SIGNATURES[name]
    return fn


def check(lib) -> None:
    """Raise a RuntimeError naming the first mismatch between the loaded library's ABI and this module: the version,
    then each struct's size, then each field's offset (in `_fields_` order, which is the C declaration order)."""
    version, size, offset = (_function(lib, name) for name in _ABI_FUNCTIONS)
    where = getattr(lib, "_name", None) or "the native library"
    c_version = int(version())
    if c_version != ABI_VERSION:
        raise RuntimeError(f"native ABI mismatch: {where} has PHK_ABI_VERSION {c_version}, phikit/cpu/abi.py "
                           f"expects {ABI_VERSION}. Either {_REBUILD}, or {_DISAGREE}")
    for which, (c_name, struct) in STRUCTS.items():
        c_size, py_size = int(size(int(which))), ctypes.sizeof(struct)
        if c_size != py_size:
            raise RuntimeError(f"native ABI mismatch: struct {c_name} is {c_size} bytes in C ({where}) but "
                               f"{py_size} in phikit.cpu.abi.{struct.__name__}; {_DISAGREE}; where they agree, "
                               f"{_REBUILD}")
        names = [field[0] for field in struct._fields_]
        for i, name in enumerate(names + [None]):
            c_off = int(offset(int(which), i))
            py_off = -1 if name is None else getattr(struct, name).offset
            if c_off != py_off:
                what = (f"{c_name} has more than the {len(names)} fields of abi.{struct.__name__}" if name is None
                        else f"{c_name} has {i} fields in C, abi.{struct.__name__} {len(names)}" if c_off == -1
                        else f"{c_name}.{name} (field {i}) is at offset {c_off} in C but {py_off} in "
                             f"phikit.cpu.abi.{struct.__name__}")
                raise RuntimeError(f"native ABI mismatch: {what}; {_DISAGREE}; where they agree, {_REBUILD}")
