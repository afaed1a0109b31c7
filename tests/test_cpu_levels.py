"""CPU levels (`phikit/cpu/features.py`): what the host runs, what a user may force, and the kernel and model tests
run again at every level below the host's (and with the native kernels off) so that a run on a big CPU proves the
paths of smaller ones too. Below avx512, PyTorch itself is capped as on an AVX2 CPU (ATEN_CPU_CAPABILITY=avx2,
ONEDNN_MAX_CPU_ISA=AVX2): oneDNN then has no bf16 GEMM, which is the AVX2 user's situation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from phikit.cpu import features

ROOT = Path(__file__).resolve().parent.parent
# the kernel and model tests: every level must pass them (skipping only what needs a higher level's kernels)
LEVEL_TESTS = ("test_native_kernels.py", "test_native_decode.py", "test_lossless.py", "test_cpu_kernels.py",
               "test_quantize.py", "test_parity.py", "test_numerics.py", "test_longrope.py", "test_generate.py",
               "test_loading.py", "test_default_model.py", "test_bench.py", "test_ops.py")
AVX2_PYTORCH = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def level_env(level: str) -> dict[str, str]:
    """The environment of a process that runs at `level` on this host."""
    env = {k: v for k, v in os.environ.items() if k not in ("PHIKIT_NATIVE", "ATEN_CPU_CAPABILITY",
                                                             "ONEDNN_MAX_CPU_ISA", "PHIKIT_CPU_LEVEL")}
    env["PHIKIT_CPU_LEVEL"] = level
    if level in ("reference", "avx2"):
        env.update(AVX2_PYTORCH)  # PyTorch as on an AVX2 CPU (no bf16 GEMM in oneDNN)
    return env


def run_level(level: str, code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=level_env(level),
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_host_level_follows_the_cpu_flags() -> None:
    info = features.CpuInfo("x86_64", "test", frozenset({"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl"}))
    assert info.host_level == "avx2"  # no avx512dq: not the avx512 level
    assert features.CpuInfo("x86_64", "t", frozenset({"avx2", "fma"})).host_level == "reference"  # no f16c
    full = {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"}
    assert features.CpuInfo("x86_64", "t", frozenset(full)).host_level == "avx512_bf16"
    assert features.CpuInfo("aarch64", "t", frozenset({"asimd", "fp"})).host_level == "neon"
    assert features.CpuInfo("riscv64", "t", frozenset()).levels == ("reference",)


def test_forcing_a_level_the_cpu_cannot_run_is_a_clear_error() -> None:
    levels = features.cpu_info().levels
    code = "from phikit.cpu import features; features.level()"
    if features.cpu_info().host_level != levels[-1]:
        above = levels[levels.index(features.cpu_info().host_level) + 1]
        env = {**os.environ, "PHIKIT_CPU_LEVEL": above}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert done.returncode != 0 and f"PHIKIT_CPU_LEVEL='{above}' is above what this CPU runs" in done.stderr
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PHIKIT_CPU_LEVEL": "avx1024"})
    assert done.returncode != 0 and "PHIKIT_CPU_LEVEL='avx1024' is not a level" in done.stderr
    assert "use one of ['reference'" in done.stderr


@pytest.mark.parametrize("level", features.runnable_levels())
def test_level_is_what_runs(level: str) -> None:
    """At each level the native library holds that level's kernels and no others, and PyTorch's own capping
    variables lower the level as they lower PyTorch."""
    out = run_level(level, "from phikit.cpu import features, kernels as k; print(features.level(), k.available(), "
                           "k.has_decode_step(), k.has_int4(), k.has_bf16_dot(), k.has_c12())")
    name, native, step, int4, bf16, c12 = out.split()
    assert name == level
    assert native == step == int4 == str(level != "reference")  # the portable kernels: every level above reference
    assert bf16 == c12 == str(level == "avx512_bf16")


def test_pytorch_capped_to_avx2_caps_the_level() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PHIKIT_CPU_LEVEL", "PHIKIT_NATIVE")}
    env.update(AVX2_PYTORCH)
    done = subprocess.run([sys.executable, "-c", "from phikit.cpu import features; print(features.level_choice())"],
                          capture_output=True, text=True, env=env, check=True)
    expected = "avx2" if features.cpu_info().host_level != "reference" else "reference"
    assert f"level='{expected}'" in done.stdout


@pytest.mark.skipif(os.environ.get("PHIKIT_LEVEL_SUITE") == "1", reason="already inside a level run")
@pytest.mark.parametrize("level", [lv for lv in features.runnable_levels() if lv != features.level()])
def test_kernel_and_model_tests_pass_at_every_lower_level(level: str) -> None:
    """The kernel and model tests again, in a fresh process at `level` (each skips only what needs a higher level's
    kernels, and says so)."""
    env = {**level_env(level), "PHIKIT_LEVEL_SUITE": "1"}
    files = [str(ROOT / "tests" / name) for name in LEVEL_TESTS if (ROOT / "tests" / name).exists()]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *files],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=1200)
    tail = done.stdout[-4000:]
    assert done.returncode == 0, f"at level {level}:\n{tail}\n{done.stderr[-2000:]}"
    assert " passed" in tail


@pytest.mark.parametrize("level", features.runnable_levels())
def test_doctor_says_what_runs_and_why_not(level: str) -> None:
    out = run_level(level, "from phikit.cli import main; main(['doctor'])")
    assert f"level in use: {level}" in out
    assert f"table cpu-{level}" in out
    if level != "avx512_bf16":  # every op the level lacks says which level it needs
        assert "PyTorch (reference): needs CPU level avx512_bf16" in out
    if level in ("reference", "avx2"):
        assert "oneDNN bf16 GEMM here: no" in out and "fp32 GEMM on widened weight slices" in out
    if level == "reference":
        assert "fp32 GEMM on weights widened" in out and "native kernels: not in use" in out
    else:
        assert "native matrix-vector kernel" in out and "fused native step" in out
