"""The native batch-1 decode step (phikit/native_decode.py, native/decode_step.c) against the per-module path.

The step computes every elementwise op as PyTorch does on bf16 tensors (fp32, rounded after each op) and calls the
same linear and attention kernels, so its numbers equal the module path's except where fp32 rounding inside a
norm's reduction or tanh/exp lands on the other side of a bf16 rounding boundary. The pieces are checked one by
one against PyTorch (exact in >= 99.9% / 99% of elements); whole models within a few bf16 steps, because one
flipped rounding spreads through the layers and steps after it.
"""

from __future__ import annotations

import math

import copy
import gc
import weakref

import pytest
import torch
import torch.nn as nn

import phikit
from phikit.ops import bind
from phikit.backends import cpu as cpu_backend
from phikit.backends.cpu import decode_step as native_decode
from phikit.cpu import kernels as native_kernels
from phikit.model.cache import DynamicCache, StaticCache
from phikit.cpu.gemm import use_fast_linears
from phikit.lora import apply_lora

pytestmark = pytest.mark.skipif(not native_kernels.has_decode_step(),
                                reason="the native decode step needs native kernels (a C compiler, a level above "
                                       f"reference): {native_kernels.build_error}")

VOCAB = 512


def _longrope(n: int) -> dict:
    return {"type": "longrope", "short_factor": [1.0 + 0.02 * i for i in range(n)],
            "long_factor": [1.5 + 0.3 * i for i in range(n)], "original_max_position_embeddings": 24}


CASES = {
    "phi-1.5": (phikit.PhiConfig, dict(partial_rotary_factor=0.5)),
    "phi-qk-layernorm": (phikit.PhiConfig, dict(partial_rotary_factor=0.5, qk_layernorm=True)),
    "phi-3-window": (phikit.Phi3Config, dict(sliding_window=20, pad_token_id=0)),
    # partial rotary, GQA, tied embeddings, LongRoPE crossing its original length (24) while decoding
    "phi-4-mini": (phikit.Phi3Config, dict(num_key_value_heads=2, partial_rotary_factor=0.75,
                                           tie_word_embeddings=True, max_position_embeddings=256,
                                           original_max_position_embeddings=24, rope_scaling=_longrope(24),
                                           pad_token_id=0)),
}
QUANT = {"bf16": None, "int8": phikit.Int8WeightOnlyConfig(), "int4": phikit.Int4WeightOnlyConfig(group_size=64),
         "lossless": phikit.LosslessBf16Config()}


def build(case: str, weights: str = "bf16") -> nn.Module:
    cls, extra = CASES[case]
    config = cls(vocab_size=VOCAB, hidden_size=256, intermediate_size=768, num_hidden_layers=3,
                 num_attention_heads=4, **extra)
    torch.manual_seed(0)
    model = (phikit.PhiForCausalLM if cls is phikit.PhiConfig else phikit.Phi3ForCausalLM)(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name and name.endswith("weight")
                    else 0.08 * torch.randn_like(p))
    model = model.to(torch.bfloat16).eval()
    use_fast_linears(model)  # as from_pretrained does: the module path then runs the same linear kernels
    if QUANT[weights] is not None:
        phikit.quantize_model(model, QUANT[weights])
    return model


@pytest.fixture
def spy(monkeypatch):
    """Records, per decode step, whether the native step ran (True) or handed back to the modules (False)."""
    ran: list[bool] = []
    step = native_decode.step

    def recording(*args, **kwargs):
        out = step(*args, **kwargs)
        ran.append(out is not None)
        return out

    monkeypatch.setattr(native_decode, "step", recording)
    return ran


def decode(model: nn.Module, steps: int = 10, prompt: int = 17, cache=None, mask_zero: bool = False) -> torch.Tensor:
    """fp32 logits [steps, V] of a prefill then `steps` cached one-token forwards (fixed random next tokens)."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (1, prompt), generator=gen)
    cache = cache if cache is not None else StaticCache(max_cache_len=64, max_batch_size=1)
    mask = torch.ones(1, prompt, dtype=torch.long)
    if mask_zero:
        mask[0, 3] = 0
    out = []
    with torch.no_grad():
        model(ids, attention_mask=mask, past_key_values=cache, use_cache=True)
        for i in range(steps):
            tok = torch.randint(0, VOCAB, (1, 1), generator=gen)
            mask = torch.cat((mask, torch.ones(1, 1, dtype=torch.long)), dim=1)
            out.append(model(tok, attention_mask=mask, past_key_values=cache, use_cache=True).logits[0, -1].float())
    return torch.stack(out)


def assert_same_numbers(native: torch.Tensor, modules: torch.Tensor) -> None:
    """Equal up to a bf16 rounding flipped by the norms' fp32 reductions (summed in another order than PyTorch's),
    which then spreads through later layers and steps: logits within a few bf16 steps, the same next tokens."""
    worst = (native - modules).abs().max().item()
    assert worst <= 0.03 * modules.abs().max().item(), worst
    assert (native.argmax(-1) == modules.argmax(-1)).float().mean().item() >= 0.9


def _bf16_close(y: torch.Tensor, ref: torch.Tensor, identical: float) -> None:
    """y equals ref (both bf16) in at least `identical` of the elements and everywhere within one bf16 step."""
    assert (y == ref).float().mean().item() >= identical, (y == ref).float().mean().item()
    assert bool(((y.float() - ref.float()).abs() <= ref.float().abs() * 2.0**-7 + 1e-30).all())


def test_elementwise_pieces_round_as_pytorch_does() -> None:
    """gelu_new (8 ops, each rounded to bf16), up * silu(gate), LayerNorm and RMSNorm against PyTorch on bf16
    tensors: the elementwise chains are exact but where tanh / exp differ in the last fp32 bit; the norms but where
    their reductions do."""
    from phikit.model.layers import RMSNorm

    lib, gen, ptr = native_kernels.library(), torch.Generator().manual_seed(5), lambda t: t.data_ptr()
    x = (torch.randn(100_003, generator=gen) * 3).bfloat16()  # an odd length: the tail masks
    y = torch.empty_like(x)
    lib.phk_gelu_new(ptr(x), ptr(y), x.numel())
    _bf16_close(y, torch_gelu_new(x), 0.999)
    gate_up = (torch.randn(2 * 4099, generator=gen) * 3).bfloat16()
    y = torch.empty(4099, dtype=torch.bfloat16)
    lib.phk_silu_gated(ptr(gate_up), ptr(y), 4099)
    gate, up = gate_up.chunk(2)
    _bf16_close(y, up * torch.nn.functional.silu(gate), 0.999)
    for n in (64, 80, 2048, 3072):
        rows = (torch.randn(64, n, generator=gen) * 2 + 0.3).bfloat16()
        w, b = (1 + 0.1 * torch.randn(n, generator=gen)).bfloat16(), (0.1 * torch.randn(n, generator=gen)).bfloat16()
        ln, rms = torch.empty_like(rows), torch.empty_like(rows)
        for i in range(64):
            lib.phk_layer_norm(ptr(rows[i]), ptr(w), ptr(b), ptr(ln[i]), n, 1e-5)
            lib.phk_rms_norm(ptr(rows[i]), ptr(w), ptr(rms[i]), n, 1e-5)
        _bf16_close(ln, torch.nn.functional.layer_norm(rows, (n,), w, b, 1e-5), 0.99)
        norm = RMSNorm(n, 1e-5).bfloat16()
        norm.weight.data.copy_(w)
        with torch.no_grad():
            _bf16_close(rms, norm(rows), 0.99)


def torch_gelu_new(x: torch.Tensor) -> torch.Tensor:
    """layers.gelu_new in PyTorch's ops (the module now runs large bf16 tensors natively)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def test_prefill_activations_run_natively_and_equal_pytorch(monkeypatch) -> None:
    """A bf16 prefill's MLP activations (phi: gelu_new; phi3: up * silu(gate)) take the multi-threaded native
    table lookups and give PyTorch's numbers bit for bit, every bf16 input included (NaN, inf, subnormals, odd
    lengths for the tail masks); under autograd, and for small tensors, PyTorch's ops run."""
    from phikit.model.layers import FcMLP, GatedMLP
    from phikit.ops.activations import gelu_new as _gelu_new_ops

    gen = torch.Generator().manual_seed(6)
    calls = []
    for name in ("lookup", "silu_gated"):
        real = getattr(native_kernels, name)
        monkeypatch.setattr(native_kernels, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))
    x = torch.randn(2, 300, 256, generator=gen).bfloat16()  # 600 tokens: 600 x 1024 activations
    fc, gated = FcMLP(256, 1024, "gelu_new").bfloat16(), GatedMLP(256, 1024, "silu").bfloat16()
    bind(fc, cpu_backend.ops()), bind(gated, cpu_backend.ops())  # standalone modules: the model binds at build
    with torch.no_grad():
        h = fc.fc1(x)
        assert torch.equal(fc.ops.activations[fc.act_name](h), torch_gelu_new(h))
        gate, up = gated.gate_up_proj(x).chunk(2, dim=-1)
        assert torch.equal(gated(x), gated.down_proj(up * torch.nn.functional.silu(gate)))
    assert calls == ["lookup", "silu_gated"]
    every = torch.arange(-32768, 32768, dtype=torch.int16).view(torch.bfloat16)  # all 65536 bit patterns
    every = torch.cat([every, every[:12345]])  # and a length off the 16-lane blocks
    ours, theirs = native_kernels.lookup(every, _gelu_new_ops), torch_gelu_new(every)
    assert torch.equal(ours.view(torch.int16), theirs.view(torch.int16))  # NaNs compare by their bits
    up = torch.randn(every.shape, generator=gen).bfloat16()
    ours = native_kernels.silu_gated(torch.cat([every, up])[None], torch.nn.functional.silu)[0]
    assert torch.equal(ours.view(torch.int16), (up * torch.nn.functional.silu(every)).view(torch.int16))
    assert native_kernels.lookup(h[:, :10], _gelu_new_ops) is None  # a decode-sized tensor: PyTorch's ops
    assert native_kernels.lookup(h.float(), _gelu_new_ops) is None
    assert native_kernels.silu_gated(gated.gate_up_proj(x), torch.nn.functional.silu) is None  # grad enabled


@pytest.mark.parametrize("weights", ["bf16", "int8", "int4", "lossless"])
@pytest.mark.parametrize("case", list(CASES))
def test_native_step_equals_the_module_path(case: str, weights: str, spy, monkeypatch) -> None:
    if weights == "lossless" and not native_kernels.has_c12():
        pytest.skip("the lossless 12-bit kernels need AVX512-BF16")
    model = build(case, weights)
    assert native_decode.explain(model.model) is None
    native = decode(model)
    assert spy == [True] * 10  # every one-token step ran natively
    monkeypatch.setenv("PHIKIT_NATIVE_STEP", "0")
    spy.clear()
    modules = decode(model)
    assert spy == [False] * 10
    assert_same_numbers(native, modules)


def test_generate_takes_the_native_step_by_default_and_gives_the_same_tokens(spy, monkeypatch) -> None:
    model = build("phi-1.5", "int4")
    ids = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(3))
    native = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert spy and all(spy)
    monkeypatch.setenv("PHIKIT_NATIVE_STEP", "0")
    assert torch.equal(model.generate(ids, max_new_tokens=12, do_sample=False), native)


@pytest.mark.parametrize("weights", ["bf16", "int4"])
def test_a_one_token_prompt_on_a_fresh_model_runs_the_modules_first(weights: str, spy, monkeypatch) -> None:
    """A one-token prompt makes the prefill itself a [1, 1] step, before the StaticCache has allocated its buffers;
    on a fresh plan (no cache bound yet) that once bound null cache pointers and crashed in C (`phikit generate
    "import"` on the bundled model). The prefill must run the modules and every later step natively."""
    model = build("phi-3-window", weights)
    ids = torch.tensor([[7]])
    native = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert spy == [False] + [True] * 5  # the prefill: modules (no buffers yet); the 5 decode steps: native
    monkeypatch.setenv("PHIKIT_NATIVE_STEP", "0")
    assert torch.equal(model.generate(ids, max_new_tokens=6, do_sample=False), native)


def test_what_the_step_does_not_take_runs_the_modules(spy) -> None:
    model = build("phi-1.5")
    reference = decode(model)
    spy.clear()
    decode(model, cache=DynamicCache())  # the dynamic cache grows by concatenation: modules
    decode(model, mask_zero=True)  # padding needs the full mask: modules
    assert spy and not any(spy)

    seen = []
    handle = model.model.layers[1].mlp.register_forward_hook(lambda *args: seen.append(1))
    spy.clear()
    decode(model)
    assert not any(spy) and len(seen) == 11  # the hook saw the prefill and every step
    handle.remove()
    spy.clear()
    assert torch.equal(decode(model), reference) and all(spy)  # the plan is valid again without the hook


def test_replaced_weights_and_wrapped_layers_are_seen(spy, monkeypatch) -> None:
    model = build("phi-3-window")
    decode(model)
    layer = model.model.layers[0].mlp
    with torch.no_grad():
        layer.down_proj.weight = nn.Parameter(torch.randn_like(layer.down_proj.weight) * 0.08)
    spy.clear()
    native = decode(model)
    assert all(spy)
    monkeypatch.setenv("PHIKIT_NATIVE_STEP", "0")
    assert_same_numbers(native, decode(model))  # the new weight, not the freed old one
    monkeypatch.delenv("PHIKIT_NATIVE_STEP")

    apply_lora(model, r=4)
    model.eval()
    assert "LoRALinear" in native_decode.explain(model.model)
    spy.clear()
    decode(model)
    assert spy and not any(spy)


def test_a_layer_in_training_mode_and_swapped_data_are_seen(spy, monkeypatch) -> None:
    model = build("phi-1.5")
    reference = decode(model)
    model.model.layers[2].train()  # its dropout would apply: the modules run
    spy.clear()
    decode(model)
    assert spy and not any(spy)
    model.model.layers[2].eval()
    spy.clear()
    assert torch.equal(decode(model), reference) and all(spy)

    fc2 = model.model.layers[0].mlp.fc2
    old = fc2.weight.data  # kept alive: a stale plan would read these values without crashing
    with torch.no_grad():
        fc2.weight.data = old * 2  # the same Parameter object, new memory
    spy.clear()
    native = decode(model)
    assert all(spy)
    monkeypatch.setenv("PHIKIT_NATIVE_STEP", "0")
    assert_same_numbers(native, decode(model))  # the new values, not the old ones


def test_models_stay_copyable_and_unsupported_layers_are_explained(spy) -> None:
    model = build("phi-1.5")
    cache = StaticCache(max_cache_len=64, max_batch_size=1)
    first = decode(model, cache=cache)
    kept = weakref.ref(cache.keys[0])
    del cache
    gc.collect()
    assert kept() is None  # the step's plan does not keep a finished cache alive
    twin = copy.deepcopy(model)  # ctypes pointers live outside the module: deepcopy and pickle still work
    spy.clear()
    assert torch.equal(decode(twin), first) and all(spy)

    moe = phikit.PhimoeForCausalLM(phikit.PhimoeConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=64,
                                                       num_hidden_layers=1, num_attention_heads=4,
                                                       num_key_value_heads=2, num_local_experts=4))
    assert native_decode.explain(moe.model) == "mixture-of-experts layers"


def test_a_weight_of_another_shape_is_refused_not_read_out_of_bounds() -> None:
    model = build("phi-1.5")
    fc1 = model.model.layers[2].mlp.fc1
    fc1.weight = nn.Parameter(fc1.weight.detach()[:512].clone(), requires_grad=False)  # 512 rows, config says 768
    assert native_decode.explain(model.model) == "FastLinear.weight has shape (512, 256), expected (768, 256)"


def test_prefill_rms_norm_runs_natively_and_rounds_as_pytorch_does(monkeypatch) -> None:
    """A bf16 prefill's RMSNorm runs natively, row by row: PyTorch's numbers but where its fp32 sum of squares
    rounds differently (a rare bf16 ulp); small tensors, fp32 and autograd keep PyTorch's ops."""
    from phikit.model.layers import RMSNorm

    gen = torch.Generator().manual_seed(8)
    norm = RMSNorm(3072, 1e-5).bfloat16()
    bind(norm, cpu_backend.ops())  # a standalone module: a model binds its backend's ops when built
    with torch.no_grad():
        norm.weight.copy_((1 + 0.1 * torch.randn(3072, generator=gen)).bfloat16())
    x = (torch.randn(2, 40, 3072, generator=gen) * 3 + 0.5).bfloat16()
    calls = []
    real = native_kernels.rms_norm
    monkeypatch.setattr(native_kernels, "rms_norm", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        ours = norm(x)
        assert calls == [1]
        monkeypatch.setattr(native_kernels, "rms_norm", lambda *a: None)
        theirs = norm(x)
    _bf16_close(ours, theirs, 0.999)
    assert real(x[:, :1], norm.weight, 1e-5) is None  # a decode-sized tensor
    assert real(x.float(), norm.weight.float(), 1e-5) is None
    assert real(x, norm.weight, 1e-5) is None  # grad enabled and the weight requires it
