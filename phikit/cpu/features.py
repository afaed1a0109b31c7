"""What this CPU can run, as one ordered *level*, chosen once per process.

Every native kernel of phikit is written for a level; the level in use is the host's highest, lowered by the user or
by what PyTorch was told to use:

    x86-64:   reference < avx2 < avx512 < avx512_bf16
    aarch64:  reference < neon

* `reference`: no native code at all, PyTorch only (also what `PHIKIT_NATIVE=0` selects).
* `avx2`: AVX2 + FMA + F16C (every x86-64 CPU since Haswell / Zen 1): the portable kernels (`native/portable.c`,
  `native/decode_step.c`) on 8 fp32 lanes; prefills as MKL fp32 GEMMs on widened weights (PyTorch's own bf16 GEMM
  runs ~7x slower than fp32 on such CPUs).
* `avx512`: AVX-512 F/BW/VL/DQ: the portable kernels on 16 lanes; oneDNN's bf16 GEMM where it measures faster.
* `avx512_bf16`: + AVX512-BF16 dot products: faster bf16 and int4 matrix-vector kernels, the lossless 12-bit format,
  the prefill attention.
* `neon`: aarch64 Advanced SIMD: the portable kernels on 4 lanes (tested under qemu; speed unmeasured).

`PHIKIT_CPU_LEVEL=<level>` forces a lower level (tests use it to run the lower paths on a bigger CPU); a level the
host cannot run, or an unknown name, is an error naming the levels it can run. PyTorch's `ATEN_CPU_CAPABILITY` and
oneDNN's `ONEDNN_MAX_CPU_ISA`, where set, cap the level too, so `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`
makes all of phikit behave as on an AVX2 CPU.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass

X86_LEVELS = ("reference", "avx2", "avx512", "avx512_bf16")
ARM_LEVELS = ("reference", "neon")
# the CPU flags (as /proc/cpuinfo spells them) each x86 level needs on top of the one below
X86_NEEDS = {
    "avx2": ("avx2", "fma", "f16c"),
    "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq"),
    "avx512_bf16": ("avx512_bf16",),
}
# where PyTorch / oneDNN were capped by their own environment variables, the highest phikit level that respects it
_ATEN_CAPS = {"default": "reference", "avx2": "avx2", "avx512": "avx512_bf16"}
_ONEDNN_CAPS = {"sse41": "reference", "avx": "reference", "avx2": "avx2", "avx2_vnni": "avx2",
                "avx2_vnni_2": "avx2", "avx512_core": "avx512", "avx512_core_vnni": "avx512"}


class CpuLevelError(ValueError):
    """PHIKIT_CPU_LEVEL names a level that is unknown or above what this CPU runs."""


@dataclass(frozen=True)
class CpuInfo:
    arch: str  # "x86_64", "aarch64", or what platform.machine() says
    model: str  # the CPU's model name, for reports
    flags: frozenset[str]  # as /proc/cpuinfo spells them ("avx2", "avx512_bf16", "asimd", ...)

    @property
    def levels(self) -> tuple[str, ...]:
        """Every level of this architecture, lowest first."""
        return X86_LEVELS if self.arch in ("x86_64", "amd64") else ARM_LEVELS if self.arch in (
            "aarch64", "arm64") else ("reference",)

    @property
    def host_level(self) -> str:
        """The highest level whose every flag this CPU has."""
        best = "reference"
        if self.arch in ("x86_64", "amd64"):
            for level in X86_LEVELS[1:]:
                if not all(flag in self.flags for flag in X86_NEEDS[level]):
                    break
                best = level
        elif self.arch in ("aarch64", "arm64") and ("asimd" in self.flags or self.arch == "arm64"):
            best = "neon"
        return best


def _read_cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, flags) from /proc/cpuinfo; empty where there is none (macOS, Windows)."""
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("flags", "features") and not flags:
                    flags = set(value.split())
                elif key in ("model name", "cpu model") and model in ("", "unknown", platform.machine()):
                    model = value.strip()
    except OSError:
        pass
    return model, frozenset(flags)


@functools.lru_cache(maxsize=None)
def cpu_info() -> CpuInfo:
    """This machine's CPU, read once."""
    model, flags = _read_cpuinfo()
    return CpuInfo(platform.machine().lower(), model, flags)


def onednn_max_isa() -> str:
    """oneDNN's ISA cap as set in the environment (ONEDNN_MAX_CPU_ISA, or its old name DNNL_MAX_CPU_ISA), lower
    case; "" where unset."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")).strip().lower()


def _cap_from_environment(levels: tuple[str, ...]) -> tuple[str | None, str | None]:
    """(the highest level PyTorch's and oneDNN's own variables allow, the variable that set it), or (None, None)."""
    caps = []
    aten = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if aten in _ATEN_CAPS:
        caps.append((_ATEN_CAPS[aten], f"ATEN_CPU_CAPABILITY={aten}"))
    onednn = onednn_max_isa()
    if onednn in _ONEDNN_CAPS:
        caps.append((_ONEDNN_CAPS[onednn], f"ONEDNN_MAX_CPU_ISA={onednn.upper()}"))
    caps = [(level, why) for level, why in caps if level in levels]
    if not caps:
        return None, None
    return min(caps, key=lambda c: levels.index(c[0]))


@dataclass(frozen=True)
class LevelChoice:
    level: str  # the level in use
    host: str  # the highest level the CPU runs
    reason: str  # why `level` is below `host`, or "" where it is not


@functools.lru_cache(maxsize=None)
def level_choice() -> LevelChoice:
    """The level this process runs at (module docstring), decided once."""
    info = cpu_info()
    levels, host = info.levels, info.host_level
    level, reason = host, ""
    cap, why = _cap_from_environment(levels)
    if cap is not None and levels.index(cap) < levels.index(level):
        level, reason = cap, f"capped by {why}"
    forced = os.environ.get("PHIKIT_CPU_LEVEL", "").strip().lower()
    if forced:
        if forced not in levels:
            raise CpuLevelError(f"PHIKIT_CPU_LEVEL={forced!r} is not a level of this {info.arch} CPU; use one of "
                                f"{list(levels[:levels.index(host) + 1])} (this CPU runs up to {host!r})")
        if levels.index(forced) > levels.index(host):
            raise CpuLevelError(f"PHIKIT_CPU_LEVEL={forced!r} is above what this CPU runs ({host!r}: it lacks "
                                f"{_missing(info, forced)}); use one of {list(levels[:levels.index(host) + 1])}")
        if levels.index(forced) < levels.index(level):
            level, reason = forced, f"forced by PHIKIT_CPU_LEVEL={forced}"
    if os.environ.get("PHIKIT_NATIVE", "1") == "0" and level != "reference":
        level, reason = "reference", "forced by PHIKIT_NATIVE=0"
    return LevelChoice(level, host, reason)


def _missing(info: CpuInfo, level: str) -> str:
    needed = [f for lv in X86_LEVELS[1:X86_LEVELS.index(level) + 1] for f in X86_NEEDS[lv]] if level in X86_NEEDS \
        else ["asimd"]
    return ", ".join(f for f in needed if f not in info.flags) or "nothing (but the level is capped)"


def level() -> str:
    """The level in use (module docstring)."""
    return level_choice().level


def at_least(name: str) -> bool:
    """Whether the level in use is `name` or above (False for a level of another architecture)."""
    levels = cpu_info().levels
    return name in levels and levels.index(level()) >= levels.index(name)


def runnable_levels() -> tuple[str, ...]:
    """Every level this host can run, lowest first (what the tests run at)."""
    info = cpu_info()
    return info.levels[:info.levels.index(info.host_level) + 1]
