"""The native library's C ABI (`phikit/cpu/native/phk_abi.h`) against its Python mirror (`phikit/cpu/abi.py`).

The header is parsed as text (enums, struct fields, prototypes: no compiler needed); the built library is asked for
its version, struct sizes and field offsets where it is available; `abi.check` is fed stand-ins that disagree; and
allocations too large for any machine must surface as MemoryError, not a crash.
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import pytest
import torch

from phikit.cpu import abi, kernels

NATIVE = Path(kernels.__file__).with_name("native")
HEADER = NATIVE / "phk_abi.h"


def _text(path: Path) -> str:
    return re.sub(r"/\*.*?\*/", " ", path.read_text(), flags=re.S)  # without comments


def _library():
    if not kernels.available():
        pytest.skip(f"the native kernels are unavailable here: {kernels.build_error or 'no AVX-512'}")
    return kernels.library()


# ---- the header as text ------------------------------------------------------------------------------------------

def test_version_in_header_matches():
    (version,) = re.findall(r"#define\s+PHK_ABI_VERSION\s+(\d+)", _text(HEADER))
    assert int(version) == abi.ABI_VERSION


def test_enums_match_header():
    found = dict(re.findall(r"enum\s+(phk_\w+)\s*\{(.*?)\}", _text(HEADER), flags=re.S))
    assert set(found) == set(abi.ENUMS)
    for c_name, body in found.items():
        prefix = abi.ENUM_PREFIXES[c_name]
        members = {name: int(value) for name, value in re.findall(r"(\w+)\s*=\s*(\d+)", body)}
        assert all(name.startswith(prefix) for name in members), (c_name, members)
        c_values = {name[len(prefix):]: value for name, value in members.items()}
        py_values = {member.name: member.value for member in abi.ENUMS[c_name]}
        assert c_values == py_values, c_name


def test_struct_fields_match_header_and_offset_tables():
    text = _text(HEADER)
    c_src = _text(NATIVE / "kernels.c")
    for c_name, struct in abi.STRUCTS.values():
        (body,) = re.findall(r"typedef\s+struct\s*\{([^{}]*)\}\s*" + c_name + r"\s*;", text)
        names = []
        for decl in body.split(";"):
            decl = decl.strip()
            if decl:  # "type *a, *b" or "phk_lin qkv[3]": the names in order
                first, *rest = decl.split(",")
                names += [re.sub(r"\[.*\]", "", part).strip(" *") for part in [first.split()[-1], *rest]]
        assert names == [field[0] for field in struct._fields_], c_name
        # kernels.c's offset table lists the same fields in the same order (phk_struct_offset indexes it)
        table = re.findall(r"offsetof\(" + c_name + r",\s*(\w+)\)", c_src)
        assert table == names, c_name


def _ctype(param: str):
    param = param.strip()
    if "*" in param:
        return ctypes.c_void_p
    base = " ".join(param.split()[:-1])
    return {"int64_t": ctypes.c_int64, "int": ctypes.c_int, "float": ctypes.c_float}[base]


def test_signatures_match_header():
    restypes = {"void": None, "int": ctypes.c_int, "int64_t": ctypes.c_int64, "phk_status_t": ctypes.c_int}
    protos = re.findall(r"^(void|int|int64_t|phk_status_t)\s+(phk_\w+)\s*\(([^)]*)\)\s*;", _text(HEADER),
                        flags=re.M)
    assert {name for _, name, _ in protos} == set(abi.SIGNATURES)
    assert {name for ret, name, _ in protos if ret == "phk_status_t"} == abi.STATUS_FUNCTIONS
    for ret, name, params in protos:
        argtypes = [] if params.strip() == "void" else [_ctype(p) for p in params.split(",")]
        assert abi.SIGNATURES[name] == (restypes[ret], argtypes), name


def test_decode_step_uses_the_abi_structs():
    from phikit.backends.cpu import decode_step
    assert (decode_step._Lin, decode_step._Layer, decode_step._Model) == (abi.Lin, abi.Layer, abi.Model)


# ---- check() on stand-ins ----------------------------------------------------------------------------------------

class _FakeLibrary:
    """What `check` reads, from Python: the mirror's own numbers unless told otherwise."""

    _name = "/fake/kernels.so"

    def __init__(self, version=abi.ABI_VERSION, sizes=None, offsets=None):
        self.version, self.sizes, self.offsets = version, sizes or {}, offsets or {}

    def phk_abi_version(self):
        return self.version

    def phk_struct_size(self, which):
        return self.sizes.get(which, ctypes.sizeof(abi.STRUCTS[abi.StructId(which)][1]))

    def phk_struct_offset(self, which, field):
        if (which, field) in self.offsets:
            return self.offsets[which, field]
        fields = abi.STRUCTS[abi.StructId(which)][1]._fields_
        return getattr(abi.STRUCTS[abi.StructId(which)][1], fields[field][0]).offset if field < len(fields) else -1


def test_check_accepts_the_mirror_itself():
    abi.check(_FakeLibrary())


def test_check_names_a_struct_whose_size_disagrees():
    with pytest.raises(RuntimeError, match=r"struct phk_model is 120 bytes in C .* but 112 in phikit\.cpu\.abi\.Model"
                       r".*the sources and abi\.py disagree"):
        abi.check(_FakeLibrary(sizes={abi.StructId.MODEL: 120}))


def test_check_names_a_field_whose_offset_disagrees():
    with pytest.raises(RuntimeError, match=r"phk_lin\.n \(field 1\) is at offset 16 in C but 8"):
        abi.check(_FakeLibrary(offsets={(abi.StructId.LIN, 1): 16}))
    with pytest.raises(RuntimeError, match=r"phk_layer has more than the 14 fields"):
        abi.check(_FakeLibrary(offsets={(abi.StructId.LAYER, 14): 464}))


def test_check_names_a_version_mismatch_and_the_fix():
    with pytest.raises(RuntimeError, match=rf"PHK_ABI_VERSION {abi.ABI_VERSION + 1}.*expects {abi.ABI_VERSION}.*"
                       r"rebuild: delete ~/\.cache/phikit/native"):
        abi.check(_FakeLibrary(version=abi.ABI_VERSION + 1))


def test_check_names_a_missing_function():
    class Old:
        _name = "/fake/old.so"
    with pytest.raises(RuntimeError, match=r"has no phk_abi_version\(\).*rebuild"):
        abi.check(Old())


def test_status_errcheck_raises_memory_error_naming_function_and_bytes():
    class Lib:
        def phk_failed_alloc_bytes(self):
            return 12345

    class Fn:
        __name__ = "phk_linear_int8"
    errcheck = kernels._status_check(Lib())
    assert errcheck(abi.Status.OK, Fn(), ()) == 0
    with pytest.raises(MemoryError, match=r"phk_linear_int8: could not allocate 12345 bytes"):
        errcheck(abi.Status.ERR_NOMEM, Fn(), ())
    with pytest.raises(RuntimeError, match=r"phk_linear_int8 is a stub"):
        errcheck(abi.Status.ERR_UNSUPPORTED, Fn(), ())


# ---- the built library ---------------------------------------------------------------------------------------------

def test_library_reports_the_mirror_abi():
    lib = _library()
    assert lib.phk_abi_version() == abi.ABI_VERSION
    for which, (c_name, struct) in abi.STRUCTS.items():
        assert lib.phk_struct_size(which) == ctypes.sizeof(struct), c_name
        offsets = [lib.phk_struct_offset(which, i) for i in range(len(struct._fields_) + 1)]
        assert offsets == [getattr(struct, f[0]).offset for f in struct._fields_] + [-1], c_name
    assert lib.phk_struct_size(len(abi.STRUCTS)) == -1
    abi.check(lib)


def test_every_status_function_has_an_errcheck():
    lib = _library()
    for name in abi.SIGNATURES:
        fn = getattr(lib, name)
        assert fn.restype is abi.SIGNATURES[name][0] and fn.argtypes == abi.SIGNATURES[name][1], name
        assert (getattr(fn, "errcheck", None) is not None) == (name in abi.STATUS_FUNCTIONS), name


# Sizes whose buffers (about 2^60 bytes, past any address space) no machine can allocate, so malloc fails even where
# the kernel overcommits memory; the kernels allocate before touching any of the (tiny) tensors passed.
HUGE = 1 << 58


def test_failed_allocation_is_a_memory_error():
    lib = _library()
    x = torch.zeros(64, dtype=torch.bfloat16)
    y = torch.zeros(64, dtype=torch.bfloat16)
    p = x.data_ptr()
    # x as fp32 [M, 64]
    with pytest.raises(MemoryError, match=rf"phk_linear_int8: could not allocate {HUGE * 4} bytes"):
        lib.phk_linear_int8(p, p, p, None, y.data_ptr(), HUGE // 64, 4, 64, 1)
    # one thread's scores: S + 16 floats
    with pytest.raises(MemoryError, match=rf"phk_attention_decode: could not allocate {(HUGE + 16) * 4} bytes"):
        lib.phk_attention_decode(p, p, p, y.data_ptr(), 1, 1, 1, HUGE, 16, 0, 0, 16, 0, 0, 16, 1.0, 1)
    if kernels.has_bf16_dot():  # the AVX512-BF16 kernel: the sums of x per group, M x (256 / 64) floats
        with pytest.raises(MemoryError, match=rf"phk_linear_int4: could not allocate {HUGE * 4} bytes"):
            lib.phk_linear_int4(p, p, p, None, y.data_ptr(), HUGE // 4, 4, 256, 64, 1)
    else:  # the portable kernel: x as 16-bit integers (M x 256) and the blocks' scales and sums (M x 8 floats)
        with pytest.raises(MemoryError, match=r"phk_linear_int4: could not allocate [1-9]\d{15,} bytes"):
            lib.phk_linear_int4(p, p, p, None, y.data_ptr(), HUGE // 1024, 4, 256, 64, 1)


def test_failed_allocation_in_the_decode_step_and_prefill():
    lib = _library()
    model = abi.Model(n_layers=1, hidden=HUGE, heads=1, kv_heads=1, head_dim=16, inter=16, act=abi.Act.GELU_NEW)
    x = torch.zeros(64, dtype=torch.bfloat16)
    p = x.data_ptr()
    with pytest.raises(MemoryError, match=r"phk_decode_step: could not allocate \d+ bytes"):
        lib.phk_decode_step(ctypes.addressof(model), p, p, p, p, p, 0, 1)
    if not kernels.has_bf16_dot():
        return  # the prefill attention is a stub below avx512_bf16 (test_stubs_fail_visibly)
    t = HUGE // 16  # the packed keys of one head: T rounded up to 32, times D = 16, in bf16
    with pytest.raises(MemoryError, match=rf"phk_attention_prefill: could not allocate {t * 16 * 2} bytes"):
        lib.phk_attention_prefill(p, p, p, p, 1, 1, 1, t, 16, 0, 0, 16, 0, 0, 16, 0, 0, 16, 1.0, 32 << 20, 1)


def test_stubs_fail_visibly():
    lib = _library()
    if kernels.has_bf16_dot():
        pytest.skip("this build has the real prefill attention (its stub is built below PHIKIT_CPU_LEVEL=avx512_bf16)")
    x = torch.zeros(64, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match=r"phk_attention_prefill is a stub"):
        lib.phk_attention_prefill(*([x.data_ptr()] * 4), *([1] * 14), 1.0, 1, 1)
