"""FastLinear, used by default for bf16 CPU loads: the same numbers as nn.Linear up to summation order."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import phikit
from phikit.cpu.gemm import FastLinear

from .oracle import pair


@pytest.mark.parametrize("name", ["phi-2", "phi-4-mini"])
def test_bf16_load_uses_fast_linears_with_the_same_logits(tmp_path, name: str) -> None:
    ours, _ = pair(name)
    ours.to(torch.bfloat16).save_pretrained(tmp_path)
    model = phikit.AutoModelForCausalLM.from_pretrained(tmp_path)
    kinds = {n: type(m) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert all(k is FastLinear for n, k in kinds.items() if n != "lm_head")
    tied = ours.config.tie_word_embeddings
    assert (kinds["lm_head"] is nn.Linear) == (tied and FastLinear.needs_packing())  # packing would copy the head
    if tied:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ids = torch.randint(3, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = model(ids).logits.float(), ours(ids).logits.float()
    torch.testing.assert_close(got, want, rtol=2**-6, atol=2**-6)  # bf16: one rounding step, summation order
    assert torch.equal(model.generate(ids, max_new_tokens=8), ours.generate(ids, max_new_tokens=8))
    model.save_pretrained(tmp_path / "again")  # state_dict still holds the original weights
    again = phikit.AutoModelForCausalLM.from_pretrained(tmp_path / "again", dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, ours.float()(ids).logits)


def test_a_model_built_from_its_config_and_cast_to_bf16_runs_what_a_bf16_load_runs(tmp_path) -> None:
    """`Model(config).to(torch.bfloat16)`, no loader (how benchmarks and many users build one): its linears are
    FastLinear once cast (`_apply`), not `F.linear`, whose bf16 GEMM runs ~7x slower than fp32 below AVX-512 (an 8-row
    engine decode on the AVX2 host took 76 s so, 19.5 s with FastLinear), so its logits equal the loaded model's."""
    ours, _ = pair("phi-2")
    assert all(type(m) is nn.Linear for m in ours.modules() if isinstance(m, nn.Linear))  # fp32: as transformers
    ours.to(torch.bfloat16)
    assert all(type(m) is FastLinear for m in ours.modules() if isinstance(m, nn.Linear))
    ours.save_pretrained(tmp_path)
    loaded = phikit.AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(3, 96, (2, 20), generator=torch.Generator().manual_seed(1))  # 40 rows: kernel or GEMM alike
    with torch.no_grad():
        for batch in (ids[:1, :1], ids[:1], ids):
            assert torch.equal(ours(batch).logits, loaded(batch).logits)


def test_amx_is_read_from_the_cpu_flags_and_onednn_cap(monkeypatch, request):
    """`gemm.has_amx` (which moves int4's kernel / GEMM crossover to 12 rows): the CPU's amx_tile and amx_bf16 flags
    at level avx512_bf16, unless ONEDNN_MAX_CPU_ISA caps oneDNN below AMX."""
    from phikit.cpu import features, gemm

    request.addfinalizer(gemm.has_amx.cache_clear)  # later tests see this host's own answer
    monkeypatch.setattr(torch._C._cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    monkeypatch.setattr(gemm, "onednn_bf16", lambda: True)
    monkeypatch.setattr(gemm.features, "at_least", lambda level: True)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)

    def answer(flags: set[str], isa: str | None) -> bool:
        monkeypatch.setattr(gemm.features, "cpu_info", lambda: features.CpuInfo("x86_64", "test", frozenset(flags)))
        if isa is None:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        else:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
        gemm.has_amx.cache_clear()
        return gemm.has_amx()

    amx = {"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}
    assert answer(amx, None) and answer(amx, "AVX512_CORE_AMX") and answer(amx, "ALL")
    assert not answer(amx, "AVX512_CORE_BF16") and not answer(amx, "AVX2")
    assert not answer({"avx512f", "avx512_bf16"}, None)
