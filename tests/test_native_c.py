"""The portable kernels at the C level (tests/native/check_portable.c against scalar references in double), built
with the library's own sources for every x86-64 level this host runs, and cross-compiled for aarch64 NEON and run
under qemu-aarch64 (Debian's gcc-aarch64-linux-gnu and qemu-user; `.ci/run` installs them where it can). ARM
speed is not measured anywhere: only correctness runs here, emulated."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from phikit.cpu import features, kernels

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "tests" / "native" / "check_portable.c"
C_SOURCES = [str(kernels.SOURCE_DIR / name) for name in kernels.SOURCES if name.endswith(".c")]
AARCH64_CC, QEMU = "aarch64-linux-gnu-gcc", "qemu-aarch64"


def _build_and_run(compiler: str, flags: list[str], out: Path, runner: list[str]) -> str:
    cmd = [compiler, "-O2", *flags, "-ffp-contract=off", "-fopenmp", f"-I{kernels.SOURCE_DIR}", str(CHECK),
           *C_SOURCES, "-lm", "-o", str(out)]
    built = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, f"{' '.join(cmd)}:\n{built.stderr[-3000:]}"
    ran = subprocess.run([*runner, str(out)], capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0 and ran.stdout.rstrip().endswith("0 failed"), ran.stdout[-3000:] + ran.stderr[-2000:]
    return ran.stdout


X86_LEVELS = [lv for lv in features.runnable_levels() if lv != "reference"] if features.cpu_info().arch in (
    "x86_64", "amd64") else []


@pytest.mark.skipif(not X86_LEVELS, reason="not an x86-64 host")
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
@pytest.mark.parametrize("level", X86_LEVELS or ["none"])
def test_portable_kernels_at_each_x86_level(level: str, tmp_path: Path) -> None:
    flags = kernels.LEVEL_FLAGS.get(level, ["-march=native"]) if level != features.cpu_info().host_level \
        else ["-march=native"]
    out = _build_and_run(shutil.which("cc") or "gcc", flags, tmp_path / f"check_{level}", [])
    assert "linear_int4" in out and "attention_decode" in out


# the same levels with the VNNI dot products a CPU of that level may add (vec.h's vi_madd16 uses them where the
# compiler targets them, as -march=native does on such a host): built only where this host runs them
VNNI_BUILDS = [(name, flags) for name, flags, flag, level in (
    ("avx2+avx_vnni", ["-mavx2", "-mfma", "-mf16c", "-mavxvnni"], "avx_vnni", "avx2"),
    ("avx512+avx512_vnni", ["-march=x86-64-v4", "-mavx512vnni"], "avx512_vnni", "avx512"))
    if level in X86_LEVELS and flag in features.cpu_info().flags]


@pytest.mark.skipif(not VNNI_BUILDS, reason="this host has no AVX-VNNI / AVX512-VNNI")
@pytest.mark.parametrize("name,flags", VNNI_BUILDS or [("none", [])])
def test_portable_kernels_with_vnni(name: str, flags: list[str], tmp_path: Path) -> None:
    out = _build_and_run(shutil.which("cc") or "gcc", flags, tmp_path / "check_vnni", [])
    assert "linear_int4" in out


@pytest.mark.skipif(shutil.which(AARCH64_CC) is None or shutil.which(QEMU) is None,
                    reason=f"needs {AARCH64_CC} and {QEMU} (Debian: apt-get install gcc-aarch64-linux-gnu qemu-user)")
def test_portable_kernels_on_aarch64_neon_under_qemu(tmp_path: Path) -> None:
    """The NEON build (4 fp32 lanes) of the same source, linked statically and run emulated."""
    out = _build_and_run(AARCH64_CC, ["-march=armv8-a", "-static"], tmp_path / "check_neon", [QEMU])
    assert "linear_int4" in out and "attention_decode" in out


@pytest.mark.skipif(shutil.which(AARCH64_CC) is None or shutil.which(QEMU) is None,
                    reason=f"needs {AARCH64_CC} and {QEMU} (Debian: apt-get install gcc-aarch64-linux-gnu qemu-user)")
def test_int4_byte_kernel_on_aarch64_dotprod_under_qemu(tmp_path: Path) -> None:
    """An Armv8.2 build with the dot-product extension (what -march=native gives on such a CPU: Cortex-A76 / Neoverse
    N1 and later): the int4 byte kernel on SDOT / UDOT (vec.h's vb_*), against the same scalar references, emulated
    (qemu-user's default CPU has the extension). The binary must hold those instructions: without them the build
    would silently fall back to the 16-bit kernel and this would test nothing new."""
    exe = tmp_path / "check_dotprod"
    out = _build_and_run(AARCH64_CC, ["-march=armv8.2-a+dotprod", "-static"], exe, [QEMU])
    assert "linear_int4" in out and "GS=128" in out
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if objdump is not None:
        text = subprocess.run([objdump, "-d", str(exe)], capture_output=True, text=True, timeout=300).stdout
        assert "\tsdot\t" in text and "\tudot\t" in text


@pytest.mark.skipif(shutil.which(AARCH64_CC) is None, reason=f"needs {AARCH64_CC}")
def test_aarch64_build_has_neon_kernels_and_stubs_for_the_rest(tmp_path: Path) -> None:
    """The library as phikit/cpu/kernels.py builds it, cross-compiled: it links, exports the whole ABI, and its
    portable kernels are NEON code (fused multiply-adds on 4 lanes), not scalar loops."""
    objects = []
    for source in C_SOURCES:
        obj = tmp_path / (Path(source).stem + ".o")
        done = subprocess.run([AARCH64_CC, "-O3", "-march=armv8-a", "-ffp-contract=off", "-fopenmp", "-fPIC", "-c",
                               source, "-o", str(obj)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        objects.append(str(obj))
    lib = tmp_path / "kernels.so"
    done = subprocess.run([AARCH64_CC, "-shared", *objects, "-fopenmp", "-o", str(lib)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if objdump is None:
        return
    text = subprocess.run([objdump, "-d", str(lib)], capture_output=True, text=True, timeout=300).stdout
    symbols = subprocess.run([objdump, "-T", str(lib)], capture_output=True, text=True, timeout=300).stdout
    from phikit.cpu import abi

    missing = [name for name in abi.SIGNATURES if name not in symbols]
    assert not missing, f"not exported by the aarch64 build: {missing}"
    assert "fmla\tv" in text  # vector fused multiply-adds
