"""phikit's own CPU kernels (`native/`), built once per machine and CPU level with the host C compiler.

Decoding one token streams every weight once, so its speed is the memory bandwidth a matrix-vector loop sustains (or,
for int4 on 256-bit vectors, the integer work per weight). The kernels (bf16, int8-per-channel and int4-group-wise
linears, and the attention of one new token over the cache; fp32 accumulation) read each weight row once for all rows of
a small batch. Most are written once on a thin vector layer (`native/vec.h`: AVX-512, AVX2 + FMA, NEON) in
`native/portable.c`, `native/int4.c` and `native/decode_step.c` (the fused batch-1 step, the MLP activations as lookups
in a table of PyTorch's own results for all 65536 bf16 inputs, the rotary embedding and RMSNorm); `native/kernels.c`,
`attention_prefill.c` and `lossless.c` hold what needs AVX512-BF16's dot products (faster bf16 and int4 kernels, the
causal attention of a whole prompt, the lossless 12-bit format). They are compiled on first use for the CPU level in
use (`features.py`; `compile_flags`) with `cc -O3 <flags> -fopenmp` into `~/.cache/phikit/native/<hash>/`, linked
against the OpenMP runtime torch loaded (one thread pool), checked against `abi.py` when loaded, and called through
ctypes on tensors' memory with torch.get_num_threads() threads. At the `reference` level (or without a compiler)
`available()` is False and callers keep PyTorch's kernels: results differ only in fp32 summation order (and, for the
portable int4 kernel, by the stated rounding of x to 16-bit integers: `native/int4.c`).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch

from . import abi, features, hugepages

SOURCE_DIR = Path(__file__).with_name("native")
# compiled together into one library; the ABI (phk_abi.h) is mirrored in abi.py
SOURCES = ("phk_abi.h", "phk.h", "vec.h", "portable.c", "int4.c", "kernels.c", "gemm_tiles.c", "decode_step.c",
           "attention_prefill.c", "lossless.c")
MAX_ROWS = 8  # batch rows (tokens) up to which the matrix-vector kernels beat a GEMM
MIN_ELEMENTWISE = 1 << 16  # values from which the activations run natively (a prefill; a decode step has its own)
build_error: str | None = None  # why the kernels are unavailable, for `python -m phikit`


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "phikit" / "native"


# the instruction sets of each level below the host's own (features.X86_NEEDS), for a lower level forced on a bigger
# CPU: its kernels are then the ones a CPU of that level runs
LEVEL_FLAGS = {
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "avx512": ["-march=x86-64-v4"],  # AVX-512 F/BW/CD/DQ/VL, no BF16
    "neon": ["-march=armv8-a"],  # Advanced SIMD is part of armv8-a
}


def compile_flags(level: str) -> list[str] | None:
    """The compiler's target flags for the kernels of a CPU level (`features.py`), or None for `reference` (no native
    code). The host's own level compiles with -march=native (its exact ISA and tuning); a lower level with that
    level's instruction sets only (`LEVEL_FLAGS`), tuned for the host."""
    if level == "reference":
        return None
    if level == features.level_choice().host:
        return ["-march=native"]
    return [*LEVEL_FLAGS[level], "-mtune=native"]


def _build(sources: dict[str, bytes], target: Path, flags: list[str]) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise RuntimeError("no C compiler found (install gcc, or set CC)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        for name, text in sources.items():
            (Path(tmp) / name).write_bytes(text)
        objects = [str(Path(tmp) / (name[:-2] + ".o")) for name in sources if name.endswith(".c")]
        out = Path(tmp) / "kernels.so"
        compile_cmds = [[compiler, "-O3", *flags, "-ffp-contract=off", "-fopenmp", "-fPIC", "-c",
                         obj[:-2] + ".c", "-o", obj] for obj in objects]
        runtime = _torch_openmp_runtime()  # link torch's own libgomp: one OpenMP thread pool, not two
        link_cmd = [compiler, "-shared", *objects, "-o", str(out)] + (
            [runtime, f"-Wl,-rpath,{os.path.dirname(runtime)}"] if runtime else ["-fopenmp"])
        for cmd in (*compile_cmds, link_cmd):
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if done.returncode:
                raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}")
        os.replace(out, target)  # atomic: concurrent builders each write a complete file


def _status_check(lib: ctypes.CDLL) -> Callable:
    """The ctypes `errcheck` of the functions that return an `abi.Status` (on every call, whoever calls):
    MemoryError naming the function and the bytes of the allocation that failed, RuntimeError for a stub."""
    def errcheck(status: int, fn, args) -> int:
        if status == abi.Status.OK:
            return status
        if status == abi.Status.ERR_NOMEM:
            raise MemoryError(f"{fn.__name__}: could not allocate {int(lib.phk_failed_alloc_bytes())} bytes")
        if status == abi.Status.ERR_UNSUPPORTED:
            raise RuntimeError(f"{fn.__name__} is a stub in this build of the native kernels (CPU level "
                               f"{features.level()} lacks its instructions)")
        raise RuntimeError(f"{fn.__name__} returned unknown status {status}")
    return errcheck


def _torch_openmp_runtime() -> str | None:
    """The GNU OpenMP library torch has loaded (wheels bundle their own, in torch/lib or torch.libs), or None."""
    torch_dir = os.path.dirname(torch.__file__)
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libgomp" in line}
    except OSError:
        return None
    mine = sorted(p for p in paths if p.startswith(torch_dir + os.sep) or p.startswith(torch_dir + ".libs" + os.sep))
    return mine[0] if mine else None


@lru_cache(maxsize=None)
def _library() -> ctypes.CDLL | None:
    global build_error
    try:
        level = features.level()
    except features.CpuLevelError as e:
        build_error = str(e)
        raise
    flags = compile_flags(level)
    if flags is None:
        build_error = (f"CPU level {level} has no native kernels yet ({features.level_choice().reason or 'this CPU'});"
                       " PyTorch's kernels run")
        return None
    try:
        sources = {name: (SOURCE_DIR / name).read_bytes() for name in SOURCES}
        key = hashlib.sha256(b"".join(sources.values()) + f"{torch.__version__} {_torch_openmp_runtime()} "
                             f"{' '.join(flags)}".encode())
        target = _cache_dir() / key.hexdigest()[:16] / "kernels.so"
        if not target.is_file():
            _build(sources, target, flags)
        lib = ctypes.CDLL(str(target))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        build_error = str(e)
        return None
    try:
        abi.check(lib)  # before any call that passes a struct or trusts a signature
    except RuntimeError as e:
        build_error = str(e)
        raise
    if not lib.phk_available():
        build_error = f"this compiler built no vector kernels for CPU level {level} (flags {' '.join(flags)})"
        return None
    for name, (restype, argtypes) in abi.SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, restype
        if name in abi.STATUS_FUNCTIONS:
            fn.errcheck = _status_check(lib)
    return lib


def available() -> bool:
    """Whether the native kernels run on this machine (built on first call)."""
    return _library() is not None


def has_int4() -> bool:
    """Whether the native int4 kernels run here (every level with native kernels)."""
    lib = _library()
    return lib is not None and bool(lib.phk_has_int4())


def has_int4_byte_dot() -> bool:
    """Whether the portable int4 kernel multiplies by byte dot products here (`native/int4.c`: x86's vpmaddubsw, or
    aarch64's SDOT / UDOT where the build targets the dot-product extension), for groups of 128 or more."""
    lib = _library()
    return lib is not None and lib.phk_has_int4() == 2


def has_decode_step() -> bool:
    """Whether the native batch-1 decode step and the elementwise kernels (`native/decode_step.c`, driven by
    `backends/cpu/decode_step.py`) run here: every level with native kernels."""
    lib = _library()
    return lib is not None and bool(lib.phk_has_decode_step())


def has_bf16_dot() -> bool:
    """Whether the kernels built on AVX512-BF16's dot products run here: the prefill attention, the bf16 rows of
    dequantized weights (for oneDNN's bf16 GEMM) and the lossless 12-bit kernels."""
    lib = _library()
    return lib is not None and bool(lib.phk_has_bf16_dot())


def has_c12() -> bool:
    """Whether the lossless 12-bit bf16 kernels (`native/lossless.c`) run here (they need AVX512-BF16)."""
    lib = _library()
    return lib is not None and bool(lib.phk_has_c12())


def library() -> ctypes.CDLL:
    """The loaded kernels (call only after `available()` returned True)."""
    return _library()


def usable(x: torch.Tensor, max_rows: int = MAX_ROWS) -> bool:
    """Whether a [M, K] activation qualifies for the bf16 kernel: bf16 on the CPU, at most `max_rows` rows,
    K % 16 == 0, no autograd."""
    return (x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.dim() == 2 and x.shape[0] <= max_rows
            and x.shape[1] % 16 == 0 and not (torch.is_grad_enabled() and x.requires_grad) and available())


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def linear_bf16(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x bf16 [M, K] contiguous, weight bf16 [N, K] contiguous, bias bf16 [N] | None -> y bf16 [M, N]."""
    (m, k), n = x.shape, weight.shape[0]
    y = torch.empty(m, n, dtype=torch.bfloat16)
    _library().phk_linear_bf16(_ptr(x), _ptr(weight), _ptr(bias), _ptr(y), m, n, k, torch.get_num_threads())
    return y


def linear_int8(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
    """x bf16 [M, K], qweight int8 [N, K] in phikit's layout (`quantize_math.pack_int8_native`; N % 4 == 0,
    K % 64 == 0), scales bf16 [N], bias bf16 [N] | None -> y bf16 [M, N]."""
    (m, k), n = x.shape, qweight.shape[0]
    y = torch.empty(m, n, dtype=torch.bfloat16)
    _library().phk_linear_int8(_ptr(x), _ptr(qweight), _ptr(scales), _ptr(bias), _ptr(y), m, n, k,
                               torch.get_num_threads())
    return y


def linear_int4(x: torch.Tensor, qweight: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int,
                bias: torch.Tensor | None) -> torch.Tensor:
    """x bf16 [M, K], qweight uint8 [N, K/2] in phikit's layout (`quantize_math.pack_int4_native`),
    scales_and_zeros bf16 [K/g, N, 2], bias bf16 [N] | None -> y bf16 [M, N]. Any M (cost grows with M)."""
    (m, k), n = x.shape, qweight.shape[0]
    y = torch.empty(m, n, dtype=torch.bfloat16)
    _library().phk_linear_int4(_ptr(x), _ptr(qweight), _ptr(scales_and_zeros), _ptr(bias), _ptr(y), m, n, k,
                               group_size, torch.get_num_threads())
    return y


def dequantize_int8_rows(qweight: torch.Tensor, scales: torch.Tensor, start: int, stop: int,
                         out: torch.Tensor | None = None) -> torch.Tensor | None:
    """Rows [start, stop) of an int8 weight in phikit's layout -> bf16 [stop - start, K] (q * scale, rounded once),
    into `out` (contiguous bf16 of that shape) where given; None without AVX512-BF16."""
    if not has_bf16_dot():
        return None
    k = qweight.shape[1]
    out = _rows_out(out, stop - start, k, torch.bfloat16)
    _library().phk_dequant_int8_bf16(_ptr(qweight), _ptr(scales), _ptr(out), start, stop, k, torch.get_num_threads())
    return out


def dequantize_int8_rows_f32(qweight: torch.Tensor, scales: torch.Tensor, start: int, stop: int,
                             out: torch.Tensor | None = None) -> torch.Tensor:
    """Rows [start, stop) of an int8 weight in phikit's layout -> fp32 [stop - start, K], q * scale (exact), into
    `out` (contiguous fp32 of that shape) where given."""
    k = qweight.shape[1]
    out = _rows_out(out, stop - start, k, torch.float32)
    _library().phk_dequant_int8_f32(_ptr(qweight), _ptr(scales), _ptr(out), start, stop, k, torch.get_num_threads())
    return out


def _rows_out(out: torch.Tensor | None, rows: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    if out is None:
        return torch.empty(rows, k, dtype=dtype)
    if out.dtype != dtype or tuple(out.shape) != (rows, k) or not out.is_contiguous():
        raise ValueError(f"out must be contiguous {dtype} {(rows, k)}, got {out.dtype} {tuple(out.shape)}")
    return out


def dequantize_int4_rows(qweight: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int, start: int,
                         stop: int, dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """Rows [start, stop) of an int4 weight in phikit's layout -> [stop - start, K] ((q - 8) * scale + zero in fp32,
    as torch computes it; `dtype=torch.bfloat16`: those values rounded to bf16, as `.to(torch.bfloat16)` would, at
    the avx512_bf16 level only), into `out` (contiguous, of that dtype and shape) where given."""
    n, k = qweight.shape[0], qweight.shape[1] * 2
    if dtype == torch.bfloat16 and not has_bf16_dot():
        raise RuntimeError(f"bf16 int4 rows need CPU level avx512_bf16; this process runs {features.level()}")
    out = _rows_out(out, stop - start, k, dtype)
    fn = _library().phk_dequant_int4_bf16 if dtype == torch.bfloat16 else _library().phk_dequant_int4_f32
    fn(_ptr(qweight), _ptr(scales_and_zeros), _ptr(out), start, stop, n, k, group_size, torch.get_num_threads())
    return out


def c12_encode(weight: torch.Tensor, rows_done: Callable[[int, int], None] | None = None,
               slice_bytes: int = 4 << 20) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """bf16 W [N, K] (contiguous CPU; N % 8 == 0, K % 64 == 0) -> its lossless 12-bit form (`native/lossless.c`):
    data uint8 [N/8, K/64, 768], bases uint8 [N/8, K/64, 8], aux int64 [N/8 + 1 + exceptions]. Works in slices of
    rows and calls `rows_done(a, b)` after each (a loader drops those rows' file pages, so a large head does not sit
    in memory twice)."""
    n, k = weight.shape
    lib, threads = _library(), torch.get_num_threads()
    data = torch.empty(n // 8, k // 64, 768, dtype=torch.uint8)
    hugepages.advise(data)  # before the first write: decode streams it from 2 MB pages where the host gives them
    bases = torch.empty(n // 8, k // 64, 8, dtype=torch.uint8)
    counts = torch.empty(n // 8, dtype=torch.int64)
    records = []
    step = max(8, slice_bytes // (2 * k) // 8 * 8)
    for a in range(0, n, step):
        b = min(n, a + step)
        blocks = slice(a // 8, b // 8)
        rows = weight[a:b]
        lib.phk_c12_encode(_ptr(rows), _ptr(data[blocks]), _ptr(bases[blocks]), _ptr(counts[blocks]), b - a, k,
                           threads)
        part = torch.zeros((b - a) // 8 + 1 + int(counts[blocks].sum()), dtype=torch.int64)
        torch.cumsum(counts[blocks], 0, out=part[1:(b - a) // 8 + 1])
        lib.phk_c12_exceptions(_ptr(rows), _ptr(part), b - a, k, threads)
        records.append(part[(b - a) // 8 + 1:])
        if rows_done is not None:
            rows_done(a, b)
    starts = torch.zeros(n // 8 + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=starts[1:])
    return data, bases, torch.cat([starts, *records])


def linear_c12(x: torch.Tensor, data: torch.Tensor, bases: torch.Tensor, aux: torch.Tensor,
               bias: torch.Tensor | None) -> torch.Tensor:
    """x bf16 [M, K] contiguous, W in the lossless 12-bit form (`c12_encode`), bias bf16 [N] | None -> y bf16 [M, N],
    equal bit for bit to `linear_bf16` on the original W."""
    (m, k), n = x.shape, data.shape[0] * 8
    y = torch.empty(m, n, dtype=torch.bfloat16)
    _library().phk_linear_c12(_ptr(x), _ptr(data), _ptr(bases), _ptr(aux), _ptr(bias), _ptr(y), m, n, k,
                              torch.get_num_threads())
    return y


def c12_decode_rows(data: torch.Tensor, bases: torch.Tensor, aux: torch.Tensor, start: int, stop: int,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """Rows [start, stop) of a lossless 12-bit weight -> the original bf16 [stop - start, K] (into `out`, a
    contiguous bf16 tensor of that shape, where given)."""
    n, k = data.shape[0] * 8, data.shape[1] * 64
    if out is None:
        out = torch.empty(stop - start, k, dtype=torch.bfloat16)
    elif out.dtype != torch.bfloat16 or tuple(out.shape) != (stop - start, k) or not out.is_contiguous():
        raise ValueError(f"c12_decode_rows: out must be contiguous bf16 {(stop - start, k)}, got {out.dtype} "
                         f"{tuple(out.shape)}")
    _library().phk_c12_decode_rows(_ptr(data), _ptr(bases), _ptr(aux), _ptr(out), start, stop, n, k,
                                   torch.get_num_threads())
    return out


def _elementwise_ok(x: torch.Tensor) -> bool:
    return (x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.numel() >= MIN_ELEMENTWISE
            and not (torch.is_grad_enabled() and x.requires_grad) and has_decode_step())


@lru_cache(maxsize=None)
def activation_table(fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """`fn` (PyTorch's ops on a bf16 tensor) of every bf16 value, indexed by its 16 bits: int16 [65537], the last
    entry a pad for the kernels' 32-bit reads. Computed once per function (a millisecond)."""
    bits = torch.arange(65536, dtype=torch.int32, device="cpu")
    x = torch.where(bits >= 32768, bits - 65536, bits).to(torch.int16).view(torch.bfloat16)
    with torch.no_grad():
        y = fn(x).view(torch.int16)
    return torch.cat([y, y.new_zeros(1)])


def lookup(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor | None:
    """fn(x) for a large bf16 CPU tensor by looking each value up in `activation_table(fn)`: bit for bit what
    PyTorch's ops give, on torch's threads; None where it does not apply."""
    if not _elementwise_ok(x):
        return None
    x = x.contiguous()
    y = torch.empty_like(x)
    _library().phk_lookup_bf16(_ptr(x), _ptr(activation_table(fn)), _ptr(y), x.numel(), torch.get_num_threads())
    return y


def silu_gated(gate_up: torch.Tensor, silu: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor | None:
    """up * silu(gate) for gate_up [..., 2I] = [gate, up] in bf16 -> [..., I], silu(gate) looked up in
    `activation_table(silu)` and the product rounded to bf16, as PyTorch computes it (but that a NaN in `up` keeps
    its payload where PyTorch writes its one NaN); None where it does not apply."""
    if not _elementwise_ok(gate_up):
        return None
    n = gate_up.shape[-1] // 2
    gate_up = gate_up.contiguous()
    y = gate_up.new_empty(*gate_up.shape[:-1], n)
    _library().phk_silu_gated_lookup(_ptr(gate_up), _ptr(activation_table(silu)), _ptr(y),
                                     gate_up.numel() // (2 * n), n, torch.get_num_threads())
    return y


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor | None:
    """`layers.RMSNorm` of a large bf16 CPU tensor [..., n] with a bf16 weight [n], row by row on torch's threads;
    None where it does not apply. Its mean of squares is exact where PyTorch's fp32 sum rounds (rarely a bf16 ulp)."""
    if not (_elementwise_ok(x) and weight.dtype == x.dtype and weight.dim() == 1 and weight.shape[0] == x.shape[-1]
            and not (torch.is_grad_enabled() and weight.requires_grad)):
        return None
    x, weight = x.contiguous(), weight.detach().contiguous()
    y = torch.empty_like(x)
    n = x.shape[-1]
    _library().phk_rms_norm_rows(_ptr(x), _ptr(weight), _ptr(y), x.numel() // n, n, eps, torch.get_num_threads())
    return y


def rotary(x: torch.Tensor, cos_full: torch.Tensor, sin_signed: torch.Tensor, rotary_dims: int
           ) -> torch.Tensor | None:
    """`RotaryTables.apply` of a large bf16 CPU tensor x [B, H, T, D] (a view is fine; last dim contiguous) with
    tables [B or 1, 1, T, D]: the same numbers in one pass -> [B, H, T, D] contiguous; None where it does not apply."""
    b, h, t, d = x.shape
    if not (_elementwise_ok(x) and x.stride(-1) == 1 and d <= 256 and cos_full.dtype == sin_signed.dtype == x.dtype
            and cos_full.shape[-2:] == sin_signed.shape[-2:] == (t, d) and cos_full.shape[0] in (1, b)):
        return None
    cos, sin = cos_full.reshape(-1, t, d).contiguous(), sin_signed.reshape(-1, t, d).contiguous()
    out = torch.empty(b, h, t, d, dtype=x.dtype, device="cpu")
    _library().phk_rotary(_ptr(x), _ptr(cos), _ptr(sin), _ptr(out), b, h, t, d, rotary_dims, x.stride(0), x.stride(1),
                          x.stride(2), 0 if cos.shape[0] == 1 else t * d, torch.get_num_threads())
    return out


def attention_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, pack_bytes: int = 32 << 20
                      ) -> torch.Tensor | None:
    """Causal attention of a whole prompt: q [B, H, T, D], k / v [B, KV, T, D] (views are fine; last dim
    contiguous), query t seeing keys 0..t -> out [B, T, H, D]; None where the kernel does not apply (it needs
    bf16 on the CPU, no autograd, D % 16 == 0, and AVX512-BF16). kv heads are packed in groups of up to `pack_bytes`
    (at least one head)."""
    b, h, t, d = q.shape
    kv = k.shape[1]
    if not (q.dtype == k.dtype == v.dtype == torch.bfloat16 and q.device.type == "cpu" and k.shape[2] == t
            and v.shape[2] == t and d % 16 == 0 and h % kv == 0 and q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
            and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
            and has_bf16_dot()):
        return None
    out = torch.empty(b, t, h, d, dtype=torch.bfloat16, device="cpu")
    _library().phk_attention_prefill(_ptr(q), _ptr(k), _ptr(v), _ptr(out), b, h, kv, t, d, q.stride(0), q.stride(1),
                                     q.stride(2), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1),
                                     v.stride(2), scale, pack_bytes, torch.get_num_threads())
    return out


def attention_decode_rows(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, rows: torch.Tensor,
                          first: torch.Tensor, lengths: torch.Tensor, scale: float) -> torch.Tensor | None:
    """One new token per row, each over its own cache row and length, in one call: q [B, H, 1, D], keys / values
    [N, KV, T, D] (a KV pool; last dim contiguous), rows / first / lengths int64 [B] (row b reads keys[rows[b], :,
    first[b]:lengths[b]]) -> out [B, 1, H, D], each row what `attention_decode` gives on its keys alone; None where
    the kernel does not apply."""
    b, h, t, d = q.shape
    kv = keys.shape[1]
    if not (t == 1 and q.dtype == keys.dtype == values.dtype == torch.bfloat16 and q.device.type == "cpu"
            and d % 16 == 0 and d <= 256 and h % kv == 0 and keys.stride(-1) == 1 and values.stride(-1) == 1
            and not (torch.is_grad_enabled() and (q.requires_grad or keys.requires_grad or values.requires_grad))
            and available()):
        return None  # (under autograd: PyTorch's ops, whose gradients flow)
    if not rows.dim() == first.dim() == lengths.dim() == 1:
        return None
    rows, first, lengths = (x.to(torch.int64).contiguous() for x in (rows, first, lengths))
    r, f, n = rows.tolist(), first.tolist(), lengths.tolist()  # [B] each: a few ints, checked in Python
    if (b == 0 or not len(r) == len(f) == len(n) == b or values.shape != keys.shape
            or not all(0 <= ri < keys.shape[0] and 0 <= fi < ni <= keys.shape[2] for ri, fi, ni in zip(r, f, n))):
        return None  # the kernel reads exactly these rows and keys: anything outside the pool goes to the reference
    span = max(ni - fi for fi, ni in zip(f, n))
    q = q.reshape(b, h, d).contiguous()
    out = torch.empty(b, 1, h, d, dtype=torch.bfloat16, device="cpu")
    _library().phk_attention_decode_rows(_ptr(q), _ptr(keys), _ptr(values), _ptr(out), b, h, kv, span, d,
                                         keys.stride(0), keys.stride(1), keys.stride(2), values.stride(0),
                                         values.stride(1), values.stride(2), _ptr(rows), _ptr(first), _ptr(lengths),
                                         scale, torch.get_num_threads())
    return out


def attention_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor | None:
    """Attention of one new token per row over every cached position: q [B, H, 1, D], k/v [B, KV, S, D] (views of
    the cache are fine; last dim contiguous) -> out [B, 1, H, D], or None where the kernel does not apply."""
    b, h, t, d = q.shape
    kv, s = k.shape[1], k.shape[2]
    if not (t == 1 and q.dtype == k.dtype == v.dtype == torch.bfloat16 and q.device.type == "cpu"
            and d % 16 == 0 and d <= 256 and h % kv == 0 and s > 0 and k.stride(-1) == 1 and v.stride(-1) == 1
            and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
            and available()):
        return None  # (under autograd: PyTorch's ops, whose gradients flow)
    q = q.reshape(b, h, d).contiguous()
    out = torch.empty(b, 1, h, d, dtype=torch.bfloat16, device="cpu")
    _library().phk_attention_decode(_ptr(q), _ptr(k), _ptr(v), _ptr(out), b, h, kv, s, d, k.stride(0), k.stride(1),
                                    k.stride(2), v.stride(0), v.stride(1), v.stride(2), scale,
                                    torch.get_num_threads())
    return out
