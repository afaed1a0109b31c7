"""`phikit bench --paired`: which engines it pairs, that its child process really runs two engines in turns on a
checkpoint written to disk, and how it reports paired ratios. (The speeds themselves are benchmarks, not tests.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

import phikit
from phikit import bench
from phikit.cpu import kernels as native_kernels


def test_paired_specs_pair_each_format_with_its_peer():
    gguf = {"bf16": "/m-bf16.gguf", "q4_0": "/m-q4_0.gguf"}  # no q8_0 file: int8 has no llama.cpp peer
    pairs = bench.paired_specs(("bf16", "int8", "int4"), ["phikit", "transformers", "llama.cpp"], gguf)
    assert pairs == [
        ("phikit", "llama.cpp-bf16", [["phikit", "bf16"], ["llama.cpp", "/m-bf16.gguf"]]),
        ("phikit-int4", "llama.cpp-q4_0", [["phikit", "int4"], ["llama.cpp", "/m-q4_0.gguf"]]),
        ("phikit", "transformers", [["phikit", "bf16"], ["transformers", "bf16"]]),
    ]
    assert bench.paired_specs(("int8",), ["phikit", "transformers"], gguf) == []  # transformers runs bf16 only
    # the lossless 12-bit form holds the bf16 values: its peers are llama.cpp's bf16 file and transformers' bf16
    assert bench.paired_specs(("lossless",), ["phikit", "transformers", "llama.cpp"], gguf) == [
        ("phikit-lossless", "llama.cpp-bf16", [["phikit", "lossless"], ["llama.cpp", "/m-bf16.gguf"]]),
        ("phikit-lossless", "transformers", [["phikit", "lossless"], ["transformers", "bf16"]]),
    ]
    # phikit alone: each other format against its own bf16
    assert bench.paired_specs(("bf16", "int8", "int4"), ["phikit"], gguf) == [
        ("phikit-int8", "phikit", [["phikit", "int8"], ["phikit", "bf16"]]),
        ("phikit-int4", "phikit", [["phikit", "int4"], ["phikit", "bf16"]]),
    ]


def test_paired_child_runs_two_engines_in_turns(tmp_path):
    config = phikit.Phi3Config(vocab_size=32064, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, max_position_embeddings=64, pad_token_id=0)
    torch.manual_seed(0)
    phikit.Phi3ForCausalLM(config).to(torch.bfloat16).save_pretrained(str(tmp_path))
    specs = [["phikit", "lossless"] if native_kernels.has_c12() else ["phikit", "bf16"], ["phikit", "int8"]]
    out = subprocess.run([sys.executable, "-m", "phikit.bench.paired", json.dumps(specs), str(tmp_path), "8", "3", "1",
                          "3"], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    sides = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(sides) == 2
    for side in sides:
        assert len(side["decode_tok_s"]) == len(side["prefill_tok_s"]) == 3  # one sample per round
        assert all(v > 0 for v in side["decode_tok_s"] + side["prefill_tok_s"])
    assert out.stderr.count("round ") == 3


def test_format_paired_gives_median_and_range():
    result = {"a": "phikit-int8", "b": "llama.cpp-q8_0", "decode_tok_s": (31.2, 21.3),
              "decode_ratio": (1.46, 1.15, 1.66), "prefill_tok_s": (150.0, 92.0), "prefill_ratio": (1.63, 1.5, 1.7)}
    table = bench.format_paired("phi-1.5", [result], 128, 16, 2, 10)
    assert "10 alternating rounds" in table
    assert "| phikit-int8 | llama.cpp-q8_0 | 31.20, 21.30 | 1.46x [1.15, 1.66] | 150.0, 92.0 | 1.63x [1.50, 1.70] |" in table


def test_cpu_level_and_llama_cpp_options_check_their_values(tmp_path, monkeypatch):
    """`--cpu-level` sets the level of every engine process (an unknown or too high one is features.py's error, before
    any checkpoint is written); `--llama-cpp` must name a folder holding a llama_cpp package."""
    import pytest

    from phikit.bench import cli
    from phikit.cpu import features

    for var in ("PHIKIT_CPU_LEVEL", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
                "PYTHONPATH"):
        monkeypatch.setenv(var, "")  # recorded, so that what set_cpu_level writes is undone after the test
        monkeypatch.delenv(var)
    with pytest.raises(SystemExit, match=r"--cpu-level avx1024: .*is not a level of this .* use one of \['reference'"):
        cli.main(["--cpu-level", "avx1024", "--folder", str(tmp_path / "never")])
    assert not (tmp_path / "never").exists()
    with pytest.raises(SystemExit, match=r"--llama-cpp .* holds no llama_cpp package; install one there with"):
        cli.main(["--llama-cpp", str(tmp_path), "--folder", str(tmp_path / "never")])
    lowest = features.runnable_levels()[0]
    cli.set_cpu_level(lowest)
    assert os.environ["PHIKIT_CPU_LEVEL"] == lowest
    if lowest in ("reference", "avx2"):
        assert os.environ["ATEN_CPU_CAPABILITY"] == "avx2" and os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX2"
        assert os.environ["MKL_ENABLE_INSTRUCTIONS"] == "AVX2"
    level = subprocess.run([sys.executable, "-c", "from phikit.cpu import features; print(features.level())"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert level == lowest  # what an engine process started now runs at


def test_a_llama_cpp_crash_on_an_amx_cpu_says_how_to_build_a_peer_that_runs(monkeypatch):
    from phikit.bench import driver
    from phikit.cpu import features

    amx = features.CpuInfo("x86_64", "test", frozenset({"avx2", "avx512f", "amx_tile", "amx_int8"}))
    monkeypatch.setattr(driver.features, "cpu_info", lambda: amx)
    hint = driver.llama_crash_hint(-11, "q4_0")
    assert "signal 11" in hint and "q4_0" in hint and "-DGGML_AMX_INT8=OFF" in hint and "--llama-cpp DIR" in hint
    assert driver.llama_crash_hint(-11, "bf16") == ""  # bf16 files do not reach llama.cpp's AMX kernels
    assert driver.llama_crash_hint(1, "q4_0") == ""  # an ordinary failure: its own error says enough
    no_amx = features.CpuInfo("x86_64", "test", frozenset({"avx2", "avx512f"}))
    monkeypatch.setattr(driver.features, "cpu_info", lambda: no_amx)
    assert driver.llama_crash_hint(-11, "q4_0") == ""
