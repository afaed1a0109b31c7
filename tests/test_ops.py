"""The seam (`phikit/ops`): a model gets its backend's table once, when built or loaded; the model's modules call
only the table; a table pickles by name; and the CPU table's ops give the reference's numbers at this level."""

from __future__ import annotations

import copy
import pickle

import torch

import phikit
from phikit.backends import cpu as cpu_backend
from phikit.cpu import features
from phikit.cpu.gemm import FastLinear, onednn_bf16, prefers_fp32_gemm
from phikit.ops import REFERENCE, bind, bound, by_name, reference
from phikit.ops.activations import ACTIVATIONS, GATED

SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0)


def tiny(seed: int = 0, **extra) -> phikit.Phi3ForCausalLM:
    torch.manual_seed(seed)
    return phikit.Phi3ForCausalLM(phikit.Phi3Config(**{**SMALL, **extra})).eval()


def test_a_built_model_carries_the_cpu_table_of_this_level() -> None:
    model = tiny()
    ops = bound(model)
    assert ops is cpu_backend.ops() and ops.name == f"cpu-{features.level()}"
    assert all(m.ops is ops for m in model.modules() if "ops" in vars(m))
    assert by_name(ops.name) is ops


def test_tables_pickle_by_name_and_models_stay_copyable() -> None:
    model = tiny()
    again = pickle.loads(pickle.dumps(model))
    assert bound(again) is bound(model)  # the same registered table, not a copy of its functions
    assert bound(copy.deepcopy(model)) is bound(model)
    assert by_name("no-such-table") is REFERENCE  # a table this process lacks: the reference runs
    ids = torch.randint(1, 128, (1, 9))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)


def test_rebinding_the_reference_changes_no_fp32_number() -> None:
    """fp32 runs the reference functions under either table (the native kernels take bf16 only)."""
    model = tiny()
    ids = torch.randint(1, 128, (2, 11))
    with torch.no_grad():
        ours = model(ids).logits
        bind(model, REFERENCE)
        assert bound(model) is REFERENCE
        assert torch.equal(model(ids).logits, ours)


def test_the_cpu_table_gives_the_reference_numbers_in_bf16() -> None:
    """bf16 forwards with this level's table against the reference table: every native op of the table is bit for
    bit the reference but RMSNorm (its exact mean of squares may differ by a bf16 ulp where PyTorch's fp32 sum
    rounds) and prefill attention (its own summation order), so logits agree to bf16 precision."""
    model = tiny(1, max_position_embeddings=2048).to(torch.bfloat16)
    ids = torch.randint(1, 128, (1, 1100))  # 1100 x 64 values: large enough for the elementwise kernels
    with torch.no_grad():
        ours = model(ids).logits.float()
        bind(model, REFERENCE)
        theirs = model(ids).logits.float()
    torch.testing.assert_close(ours, theirs, rtol=0.02, atol=0.02)


def test_activation_and_attention_registries_are_the_configs() -> None:
    assert set(phikit.config.ACTIVATIONS) == set(ACTIVATIONS) == set(GATED) == set(REFERENCE.activations)
    x = torch.randn(3, 8)
    gate_up = torch.randn(3, 16)
    assert torch.equal(GATED["silu"](gate_up), gate_up[:, 8:] * torch.nn.functional.silu(gate_up[:, :8]))
    assert torch.equal(ACTIVATIONS["gelu_pytorch_tanh"](x), torch.nn.functional.gelu(x, approximate="tanh"))


def test_decode_attention_reference_is_sdpa_over_every_key() -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 1, 16), torch.randn(2, 2, 7, 16), torch.randn(2, 2, 7, 16)
    out = reference.decode_attention(q, k, v, 0.25)
    kk, vv = reference.repeat_kv(k, 2), reference.repeat_kv(v, 2)
    expected = torch.softmax(q @ kk.transpose(2, 3) * 0.25, -1) @ vv  # [B, H, 1, D]
    torch.testing.assert_close(out, expected.transpose(1, 2))


def test_bf16_linears_never_use_pytorch_bf16_gemm_without_bf16_instructions(tmp_path) -> None:
    """A bf16 load gets FastLinear layers; below avx512 (no oneDNN bf16 here) every product runs as an fp32 GEMM
    on widened weights, the path whose speed does not collapse on an AVX2 CPU."""
    tiny().save_pretrained(tmp_path)
    model = phikit.Phi3ForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert isinstance(model.model.layers[0].mlp.down_proj, FastLinear)
    assert bound(model) is cpu_backend.ops()
    if not features.at_least("avx512"):
        assert not onednn_bf16() and prefers_fp32_gemm(1) and prefers_fp32_gemm(512)
    ids = torch.randint(1, 128, (1, 5))
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 9)


class SlotRowCache:
    """A cache written against `CacheProtocol` alone (no phikit base class): one contiguous row of slots per layer,
    as a serving engine's slot pool holds them."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.length, self.start, self.end = capacity, 0, 0, 0
        self.rope_long = None
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.positions = None

    @property
    def num_slots(self) -> int:
        return self.end

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def prepare(self, position_ids, start, batch, inputs=None) -> None:
        self.start, self.end = start, start + position_ids.shape[-1]
        if self.positions is None:
            self.positions = torch.zeros(batch, self.capacity, dtype=torch.long)
        self.positions[:, start:self.end] = position_ids.expand(batch, -1)
        self.length = max(self.length, self.end)

    def update(self, layer_idx, key, value):
        if layer_idx == len(self.keys):
            shape = (key.shape[0], key.shape[1], self.capacity, key.shape[3])
            self.keys.append(key.new_zeros(shape))
            self.values.append(value.new_zeros(shape))
        self.keys[layer_idx][:, :, self.start:self.end] = key
        self.values[layer_idx][:, :, self.start:self.end] = value
        return self.keys[layer_idx][:, :, :self.end], self.values[layer_idx][:, :, :self.end]

    def layer0_inputs(self):
        return None, self.positions[:, :self.length]

    def replace_rows(self, rows, other) -> None:
        raise NotImplementedError("no LongRoPE model in this test")

    def slot_buffers(self):
        return self.keys, self.values


def test_a_cache_that_implements_only_the_protocol_serves_generation(monkeypatch) -> None:
    """Decoding through a protocol-only cache equals decoding through StaticCache, token by token, in fp32 and in
    bf16; in bf16 the backend's fused step (where this level has one) runs on it too: it reads `slot_buffers()`,
    not a cache class."""
    from phikit.backends.cpu import decode_step
    from phikit.generation.step import forward_step
    from phikit.model.cache import CacheProtocol

    assert isinstance(SlotRowCache(4), CacheProtocol)
    ran = []
    real = decode_step.step
    monkeypatch.setattr(decode_step, "step", lambda *a: ran.append(1) or real(*a))
    for dtype in (torch.float32, torch.bfloat16):
        model = tiny(3).to(dtype)
        ids = torch.randint(1, 128, (1, 7))
        results = []
        for cache in (phikit.StaticCache(max_cache_len=32), SlotRowCache(32)):
            seq, mask = ids, torch.ones_like(ids)
            with torch.no_grad():
                for _ in range(6):
                    token = forward_step(model, seq, mask, cache)[:, -1].argmax(-1, keepdim=True)
                    seq, mask = torch.cat((seq, token), 1), torch.cat((mask, torch.ones_like(token)), 1)
            results.append(seq)
        assert torch.equal(results[0], results[1])
    assert bool(ran) == (bound(tiny()).decode_step is not None)


def test_widened_slices_are_exact_and_reuse_one_buffer() -> None:
    """Below avx512 every bf16 product widens weight slices to fp32: the very values of `.float()`, written into one
    reused buffer (a fresh tensor per slice page-faulted its way to 0.6x an fp32 GEMM's speed), and the product equals
    the fp32 GEMM on `.float()` slices bit for bit."""
    from phikit.cpu.gemm import gemm_via_fp32, widened

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3000, 256, generator=gen).bfloat16()
    rows = widened(w)
    first = rows(0, 1000)
    assert torch.equal(first, w[:1000].float())
    pointer = first.data_ptr()
    second = rows(1000, 2000)
    assert second.data_ptr() == pointer and torch.equal(second, w[1000:2000].float())
    x = torch.randn(3, 256, generator=gen).bfloat16()
    assert torch.equal(gemm_via_fp32(x, widened(w), 3000, None), gemm_via_fp32(x, lambda a, b: w[a:b].float(), 3000,
                                                                                None))
