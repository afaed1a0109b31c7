#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` (CPU, this machine's instruction set) from the llama.cpp that the
# llama-cpp-python sdist vendors, for benchmarks/serve.py. Idempotent: a built binary is reused.
#
#   bash benchmarks/build_llama_server.sh      # prints the binary's path on its last line
#
# Environment: PYTHON (default: the venv's python, else python3), LLAMA_SERVER_CACHE (default
# ~/.cache/phikit/llama-server), LLAMA_CPP_PYTHON_VERSION (default: the newest sdist), JOBS (default 2),
# LEVEL (default `native`: this machine's instruction set; `avx2`: AVX2+FMA+F16C only, into build-avx2/, the peer of
# `phikit serve --cpu-level avx2`).
#
# Flags, as this llama.cpp (llama-cpp-python 0.3.36) spells them:
#   - LLAMA_CURL is deprecated there (it only warns): downloads go through LLAMA_OPENSSL, which we turn off too;
#   - LLAMA_USE_PREBUILT_UI=OFF: the default fetches the web UI from a hub bucket at build time (no network here);
#   - LLAMA_BUILD_TOOLS stays ON because the server lives under tools/; only the llama-server target is built.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$here/../.venv/bin/python" ]]; then PYTHON="$here/../.venv/bin/python"
  elif [[ -x /work/main/.venv/bin/python ]]; then PYTHON=/work/main/.venv/bin/python
  else PYTHON=python3; fi
fi
cache="${LLAMA_SERVER_CACHE:-$HOME/.cache/phikit/llama-server}"
jobs="${JOBS:-2}"
mkdir -p "$cache"
cd "$cache"

existing=$(ls -d llama_cpp_python-*/ 2>/dev/null | sort -V | tail -1 || true)
if [[ -n "${LLAMA_CPP_PYTHON_VERSION:-}" ]]; then
  src="llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}"
else
  src="${existing%/}"
fi
level="${LEVEL:-native}"
case "$level" in
  native) build=build ;;
  avx2) build=build-avx2 ;;
  *) echo "LEVEL=$level: use native or avx2" >&2; exit 2 ;;
esac
bin="$cache/${src:-none}/vendor/llama.cpp/$build/bin/llama-server"
if [[ -n "$src" && -x "$bin" ]]; then
  echo "llama-server already built" >&2
  echo "$bin"
  exit 0
fi

if [[ -z "$src" || ! -d "$src" ]]; then
  spec="llama-cpp-python${LLAMA_CPP_PYTHON_VERSION:+==$LLAMA_CPP_PYTHON_VERSION}"
  tarball=$(ls llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION:-*}.tar.gz 2>/dev/null | sort -V | tail -1 || true)
  if [[ -z "$tarball" ]]; then
    echo "downloading the $spec sdist ..." >&2
    "$PYTHON" -m pip download --no-binary :all: --no-deps "$spec" -d "$cache" >&2
    tarball=$(ls llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION:-*}.tar.gz | sort -V | tail -1)
  fi
  echo "extracting $tarball ..." >&2
  tar xzf "$tarball"
  src="${tarball%.tar.gz}"
fi

cd "$src/vendor/llama.cpp"
test -d tools/server || { echo "no tools/server in $PWD" >&2; exit 1; }
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
# This llama.cpp's AMX kernels segfault on q8_0 / q4_0 files (an AMX Xeon host, llama-cpp-python 0.3.36; as
# ggml-org/llama.cpp#20824 reports): on a CPU with AMX, build for its AVX-512 level with them off.
isa=(-DGGML_NATIVE=ON)
if grep -qw amx_int8 /proc/cpuinfo 2>/dev/null; then
  isa=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON
       -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON
       -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
fi
if [[ "$level" == avx2 ]]; then
  isa=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF
       -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF
       -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
fi
cmake -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  "${isa[@]}" -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_LLGUIDANCE=OFF >&2
time cmake --build "$build" --target llama-server -j"$jobs" >&2
test -x "$build/bin/llama-server"
echo "$PWD/$build/bin/llama-server"
