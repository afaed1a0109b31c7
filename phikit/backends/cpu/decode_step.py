"""A batch-1 decode step of every layer in one native call (`native/decode_step.c`), for phi and phi3 models.

Decoding one token at batch 1 is a chain of ~10 small ops per layer around the matrix-vector products; in Python
they cost ~10 ms of a 42 ms int4 token on the 2-core development host. `Decoder.run` hands such a step here: the
layer loop runs in C with the very kernels the modules call (bf16, int8, int4 linears; one-query attention), and
every elementwise op computed as PyTorch computes it on bf16 tensors, so results equal the module path up to
fp32 rounding inside norms and tanh/exp (see the C file). The embedding, rope tables, final norm and head stay in
Python.

When it applies (else `step` returns None and the modules run): bf16 on the CPU, no autograd, eval mode, one row
and one new token, a cache with contiguous slot buffers (`slot_buffers()`: `StaticCache`, what `generate()` uses
by default), no padding in the attention mask, the `sdpa` attention implementation, no hooks, and every layer of a
supported kind: phi (parallel block, LayerNorm, gelu_new, optional qk_layernorm) or phi3 (sequential, RMSNorm,
silu-gated MLP), with linears that are plain bf16 (`nn.Linear` / `FastLinear`), lossless 12-bit, or `Int8Linear` /
`Int4Linear` in phikit's native layout. PHIKIT_NATIVE_STEP=0 turns it off. The plan (pointers to every weight) is
built once per model and checked on each call: replaced modules or tensors, hooks, or a layout change rebuild it.
"""

from __future__ import annotations

import ctypes
import operator
import os
import weakref

import torch
import torch.nn as nn

from ...cpu import kernels as native_kernels
from ...cpu.abi import Act, LinearKind
from ...cpu.abi import Layer as _Layer, Lin as _Lin, Model as _Model  # phk_abi.h's structs, checked on load
from ...model.cache import CacheProtocol
from ...cpu.gemm import FastLinear
from ...model.layers import FcMLP, GatedMLP, RMSNorm
from ...formats.lossless import LosslessBf16Linear
from ...formats.int4 import Int4Linear
from ...formats.int8 import Int8Linear
from ...model.rope import RotaryTables, cos_sin

_BF16 = torch.bfloat16


class Unsupported(Exception):
    """A layer this step cannot run; the message says which (for `explain`)."""


class _Plan:
    """Pointers to every weight of a decoder plus what must stay unchanged for them to remain valid."""

    def __init__(self, decoder: nn.Module) -> None:
        self.modules: list[tuple[dict, str, nn.Module]] = []  # (parent._modules, name, module)
        self.tensors: list[tuple[dict, str, torch.Tensor | None]] = []  # (module._parameters/_buffers, name, tensor)
        self.reason: str | None = None
        self.layers = (_Layer * len(decoder.layers))()
        self.model = _Model()
        self.cache_tensors: tuple[weakref.ref, ...] = ()  # the cache tensors the layers point at
        try:
            self._fill(decoder)
        except Unsupported as e:
            self.reason = str(e)
        self._columns()

    # ---- validity --------------------------------------------------------------------------------------------
    def _columns(self) -> None:
        """What `valid` compares, column by column: each check runs as one C-level map over a few hundred items
        (a Python loop over them cost ~0.85 ms a token, 3% of a phi-1.5 int4 token)."""
        parents, names, mods = zip(*self.modules) if self.modules else ((),) * 3
        self._parents, self._names, self._mods, self._classes = parents, names, mods, tuple(map(type, mods))
        self._hooked = (list(map(bool, map(_HOOKS, mods))), list(map(bool, map(_PRE_HOOKS, mods))))
        self._dropout = tuple(m for m in mods if getattr(type(m), "owns_dropout", False))
        self._dropout_training = list(map(_TRAINING, self._dropout))
        stores, tnames, tensors = zip(*self.tensors) if self.tensors else ((),) * 3
        self._stores, self._tnames, self._tensors = stores, tnames, tensors
        self._live = tuple(t for t in tensors if t is not None)
        self._ptrs = list(map(torch.Tensor.data_ptr, self._live))

    def valid(self) -> bool:
        """Whether every module and tensor the plan points at is still in place, unchanged in class, hooks, training
        mode (where it applies dropout) and data pointer."""
        mods = self._mods
        return (all(map(operator.is_, map(dict.get, self._parents, self._names), mods))
                and all(map(operator.is_, map(type, mods), self._classes))
                and list(map(bool, map(_HOOKS, mods))) == self._hooked[0]
                and list(map(bool, map(_PRE_HOOKS, mods))) == self._hooked[1]
                and list(map(_TRAINING, self._dropout)) == self._dropout_training
                and all(map(operator.is_, map(dict.get, self._stores, self._tnames), self._tensors))
                and list(map(torch.Tensor.data_ptr, self._live)) == self._ptrs)

    def _module(self, parent: nn.Module, name: str) -> nn.Module:
        module = parent._modules.get(name)
        if module is None:
            raise Unsupported(f"no module {name!r} in {type(parent).__name__}")
        self.modules.append((parent._modules, name, module))
        if module.training and getattr(type(module), "owns_dropout", False):
            raise Unsupported(f"{name} is in training mode")
        if module._forward_hooks or module._forward_pre_hooks:
            raise Unsupported(f"{name} has forward hooks")
        return module

    def _tensor(self, module: nn.Module, name: str, optional: bool = False, shape: tuple[int, ...] | None = None,
                dtype: torch.dtype = _BF16) -> int | None:
        """The data pointer of module.`name` after checking what the C loop will read: a contiguous CPU tensor of
        `shape` and `dtype` (the loop trusts both: a mismatch would read out of bounds or misread the values)."""
        store = module._buffers if name in module._buffers else module._parameters
        tensor = store.get(name)
        self.tensors.append((store, name, tensor))
        if tensor is None:
            if optional:
                return None
            raise Unsupported(f"{type(module).__name__} has no {name!r}")
        if tensor.device.type != "cpu" or not tensor.is_contiguous():
            raise Unsupported(f"{type(module).__name__}.{name} is not a contiguous CPU tensor")
        if tensor.dtype != dtype:
            raise Unsupported(f"{type(module).__name__}.{name} is {tensor.dtype}, the native step needs {dtype}")
        if shape is not None and tuple(tensor.shape) != shape:
            raise Unsupported(f"{type(module).__name__}.{name} has shape {tuple(tensor.shape)}, expected {shape}")
        return tensor.data_ptr()

    # ---- building --------------------------------------------------------------------------------------------
    def _linear(self, parent: nn.Module, name: str, into: _Lin, n: int, k: int) -> None:
        """Fill `into` from parent.`name`, a linear expected to map k features to n."""
        module = self._module(parent, name)
        cls = type(module)
        into.n, into.k = n, k
        into.bias = self._tensor(module, "bias", optional=True, shape=(n,))
        if cls in (nn.Linear, FastLinear):
            into.kind, into.w, multiple = LinearKind.BF16, self._tensor(module, "weight", shape=(n, k)), 16
        elif cls is Int8Linear and module.layout == "phikit":
            into.kind, into.w = LinearKind.INT8, self._tensor(module, "qweight", shape=(n, k), dtype=torch.int8)
            multiple = 64
            into.scales = self._tensor(module, "scales", shape=(n,))
        elif cls is Int4Linear and module.layout == "phikit" and native_kernels.has_int4():
            into.kind, into.w = LinearKind.INT4, self._tensor(module, "qweight", shape=(n, k // 2), dtype=torch.uint8)
            multiple = 128
            g = module.group_size
            into.scales, into.group = self._tensor(module, "scales_and_zeros", shape=(k // g, n, 2)), g
        elif cls is LosslessBf16Linear and n % 8 == 0 and native_kernels.has_c12():
            b, g = n // 8, k // 64
            into.kind, multiple = LinearKind.C12, 64
            into.w = self._tensor(module, "data", shape=(b, g, 768), dtype=torch.uint8)
            into.scales = self._tensor(module, "bases", shape=(b, g, 8), dtype=torch.uint8)
            into.aux = self._tensor(module, "aux", dtype=torch.int64)
            if module.aux.numel() < b + 1 or int(module.aux[b]) != module.exceptions:  # the C loop trusts the index
                raise Unsupported(f"{name}.aux does not index its {module.exceptions} exception records")
        else:
            raise Unsupported(f"{name} is a {cls.__name__}" + (f" in the {module.layout!r} layout"
                                                                 if cls in (Int8Linear, Int4Linear) else ""))
        if into.k % multiple:
            raise Unsupported(f"{name} has in_features={into.k}, not a multiple of {multiple}")

    def _norm(self, parent: nn.Module, name: str, rms: bool, size: int) -> tuple[int, int | None, float]:
        norm = self._module(parent, name)
        if rms and type(norm) is RMSNorm:
            return self._tensor(norm, "weight", shape=(size,)), None, norm.variance_epsilon
        if not rms and type(norm) is nn.LayerNorm and norm.elementwise_affine and norm.bias is not None:
            return self._tensor(norm, "weight", shape=(size,)), self._tensor(norm, "bias", shape=(size,)), norm.eps
        raise Unsupported(f"{name} is a {type(norm).__name__}")

    def _fill(self, decoder: nn.Module) -> None:
        config, model = decoder.config, self.model
        arch = config.architecture()
        if arch.mlp == "moe":
            raise Unsupported("mixture-of-experts layers")
        rms = arch.norm == "rmsnorm"
        model.n_layers, model.hidden = len(decoder.layers), config.hidden_size
        model.heads, model.kv_heads, model.head_dim = (config.num_attention_heads, config.num_key_value_heads,
                                                       config.head_dim)
        model.rmsnorm, model.parallel, model.fused_qkv = int(rms), int(arch.parallel_residual), int(arch.fused_qkv)
        model.window = config.sliding_window or 0
        if model.head_dim % 16 or model.head_dim > 256:
            raise Unsupported(f"head_dim={model.head_dim} (the attention kernel takes multiples of 16 up to 256)")
        e, d, inter = config.hidden_size, model.head_dim, config.intermediate_size
        qs, kvs = model.heads * d, model.kv_heads * d
        model.inter = inter
        for i, layer in enumerate(decoder.layers):
            self._module(decoder.layers, str(i))
            attn, out = self._module(layer, "self_attn"), self.layers[i]
            if arch.fused_qkv:
                self._linear(attn, "qkv_proj", out.qkv[0], qs + 2 * kvs, e)
            else:
                for j, (name, n) in enumerate((("q_proj", qs), ("k_proj", kvs), ("v_proj", kvs))):
                    self._linear(attn, name, out.qkv[j], n, e)
            self._linear(attn, attn.out_name, out.o, e, qs)
            if attn.qk_layernorm:
                out.qnorm_w, out.qnorm_b, model.qk_eps = self._norm(attn, "q_layernorm", False, d)
                out.knorm_w, out.knorm_b, _ = self._norm(attn, "k_layernorm", False, d)
            model.scale = attn.scale
            out.norm1_w, out.norm1_b, model.eps = self._norm(layer, "input_layernorm", rms, e)
            if not arch.parallel_residual:
                out.norm2_w, out.norm2_b, _ = self._norm(layer, "post_attention_layernorm", rms, e)
            mlp = self._module(layer, layer.mlp_name)
            if type(mlp) is FcMLP and mlp.act_name in ("gelu_new", "gelu_fast") and arch.parallel_residual:
                model.act = Act.GELU_NEW
                self._linear(mlp, "fc1", out.up, inter, e)
                self._linear(mlp, "fc2", out.down, e, inter)
            elif type(mlp) is GatedMLP and mlp.act_name in ("silu", "swish") and not arch.parallel_residual:
                model.act = Act.SILU_GATED
                self._linear(mlp, "gate_up_proj", out.up, 2 * inter, e)
                self._linear(mlp, "down_proj", out.down, e, inter)
            else:
                raise Unsupported(f"layer {i}'s MLP ({type(mlp).__name__}, {getattr(mlp, 'act_name', '?')})")

    def bind_cache(self, cache: CacheProtocol) -> bool:
        """Point every layer at its slots in the cache's contiguous buffers (batch row 0); False where the cache
        has none (`slot_buffers` is None) or its tensors do not fit."""
        buffers = cache.slot_buffers()
        if buffers is None:
            return False
        keys, values = buffers
        model = self.model
        if len(keys) != model.n_layers or len(values) != model.n_layers:  # e.g. a StaticCache before its first
            return False  # update, whose buffers do not exist yet (matching the empty `cache_tensors` of a new plan)
        tensors = (*keys, *values)
        if len(tensors) == len(self.cache_tensors) and all(a is b() for a, b in zip(tensors, self.cache_tensors)):
            return True
        capacity = keys[0].shape[2]
        shape = (1, model.kv_heads, capacity, model.head_dim)
        if any(t.dtype != _BF16 or t.device.type != "cpu" or tuple(t.shape) != shape or not t.is_contiguous()
               for t in tensors):
            return False
        for layer, k, v in zip(self.layers, keys, values):
            layer.k_cache, layer.v_cache = k.data_ptr(), v.data_ptr()
        model.cache_head_stride = capacity * model.head_dim
        self.cache_tensors = tuple(weakref.ref(t) for t in tensors)  # weak: a dropped cache is freed
        return True


_HOOKS, _PRE_HOOKS = operator.attrgetter("_forward_hooks"), operator.attrgetter("_forward_pre_hooks")
_TRAINING = operator.attrgetter("training")  # compared only for classes that `owns_dropout` (decoder.py)


_PLANS: "weakref.WeakKeyDictionary[nn.Module, _Plan]" = weakref.WeakKeyDictionary()  # outside the module: a
# model stays deep-copyable and picklable (ctypes pointers are neither), and a copy builds its own plan


def _plan(decoder: nn.Module) -> _Plan:
    plan = _PLANS.get(decoder)
    if plan is None or not plan.valid():
        plan = _PLANS[decoder] = _Plan(decoder)
    return plan


def enabled() -> bool:
    return os.environ.get("PHIKIT_NATIVE_STEP", "1") != "0" and native_kernels.has_decode_step()


def explain(decoder: nn.Module) -> str | None:
    """Why this decoder's layers cannot take the native step, or None when they can."""
    if not enabled():
        return "disabled (PHIKIT_NATIVE_STEP=0) or the native kernels are unavailable: " + str(
            native_kernels.build_error or "this CPU lacks AVX512-BF16")
    return _plan(decoder).reason


def step(decoder: nn.Module, x: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor,
         long: torch.Tensor, cache, start: int) -> torch.Tensor | None:
    """x [1, 1, hidden] (the new token's embedding), already `cache.prepare`d into slot `start` -> the last layer's
    output [1, 1, hidden] (before the final norm), or None where the module path must run (module docstring)."""
    if (x.shape[:2] != (1, 1) or x.dtype != _BF16 or x.device.type != "cpu" or decoder.training
            or torch.is_grad_enabled() or decoder.config._attn_implementation != "sdpa" or not enabled()
            or torch.nn.modules.module._global_forward_hooks or torch.nn.modules.module._global_forward_pre_hooks):
        return None
    if attention_mask is not None and not bool(attention_mask.all()):
        return None
    plan = _plan(decoder)
    if plan.reason is not None or not plan.bind_cache(cache):
        return None
    cos, sin = cos_sin(decoder.rope, position_ids, long, x.dtype)  # [1, 1, R]
    rotary = RotaryTables.build(cos, sin, decoder.config.head_dim)
    out = x.reshape(-1).clone()  # [hidden], updated in place layer by layer
    cos_full, sin_signed = rotary.cos_full.contiguous(), rotary.sin_signed.contiguous()
    native_kernels.library().phk_decode_step(ctypes.addressof(plan.model), ctypes.addressof(plan.layers),
                                             out.data_ptr(), cos_full.data_ptr(), sin_signed.data_ptr(),
                                             rotary.partner.data_ptr(), start, torch.get_num_threads())
    return out.view(1, 1, -1)
