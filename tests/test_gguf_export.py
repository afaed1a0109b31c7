"""GGUF export: read the file back with gguf.GGUFReader and check names, shapes, types, metadata, rope factors,
the tokenizer arrays (against llama.cpp's own Phi-3 vocabulary file) and every tensor's values within its format's
precision; q8_0 and q4_0 are checked bit for bit against independent implementations of the block formats. If
llama-cpp-python is installed, llama.cpp itself runs an exported model and its logits are compared with phikit's."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

import phikit
from phikit.gguf_export import _float_tensors, export_gguf, vocabulary_for_gguf
from phikit.formats.configs import Int8WeightOnlyConfig
from phikit.formats.quantize import quantize_model
from phikit.model.rope import longrope_attention_factor
from tests.oracle import make_config, randomize
from tests.tokenizer_cases import LLAMA_CPP, TOKENIZERS, llama_cpp_cases

gguf = pytest.importorskip("gguf", reason="GGUF export needs the gguf package: pip install -e .[gguf]")
needs_fixtures = pytest.mark.skipif(not (TOKENIZERS / "phi-3-mini" / "tokenizer.json").is_file(),
                                    reason=f"tokenizer fixtures not found at {TOKENIZERS}")
CLASSES = {"phi": phikit.PhiForCausalLM, "phi3": phikit.Phi3ForCausalLM, "phimoe": phikit.PhimoeForCausalLM}


def build(name: str, **overrides) -> torch.nn.Module:
    config = make_config(name, **overrides)
    model = CLASSES[config.model_type](config)
    randomize(model)
    return model.eval()


def fields(reader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def model_tensors_by_gguf_name(model, arch: str) -> dict[str, torch.Tensor]:
    """The model's float tensors under their GGUF names (independent lookup through gguf's name map)."""
    arch_id = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    names = gguf.get_tensor_name_map(arch_id, model.config.num_hidden_layers)
    return {names.get_name(n, try_suffixes=(".weight", ".bias")): get().float()
            for n, _, get in _float_tensors(model)}


def q8_0_reference(w: torch.Tensor) -> torch.Tensor:
    """ggml's q8_0 round trip: blocks of 32 along each row, d = max|x| / 127 (stored fp16), q = roundf(x / d)."""
    blocks = w.float().reshape(-1, 32)
    d = blocks.abs().amax(dim=1, keepdim=True) / 127
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    v = blocks * inv
    q = torch.sign(v) * torch.floor(v.abs() + 0.5)  # C roundf: halves away from zero
    return (d.half().float() * q).reshape(w.shape)


def q4_0_reference(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ggml's q4_0 round trip: blocks of 32 along each row, d = max / -8 where max is the block's signed value of
    largest magnitude (stored fp16), q = min(15, (int)(x / d + 8.5)) - 8. Returns it and d (fp32, one per block)."""
    blocks = w.float().reshape(-1, 32)
    peak = blocks.gather(1, blocks.abs().argmax(dim=1, keepdim=True))  # first of equal magnitudes, as ggml
    d = peak / -8
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    q = torch.trunc(blocks * inv + 8.5).clamp(max=15) - 8
    return (d.half().float() * q).reshape(w.shape), d


def dequantized_copy(model, reader, arch: str) -> torch.nn.Module:
    """`model` with every parameter replaced by what the GGUF file holds (dequantized): the weights llama.cpp runs."""
    import copy

    arch_id = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    names = gguf.get_tensor_name_map(arch_id, model.config.num_hidden_layers)
    tensors = {t.name: t for t in reader.tensors}
    model = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in model.named_parameters():  # a tied lm_head is the embedding: listed once
            t = tensors[names.get_name(n, try_suffixes=(".weight", ".bias"))]
            p.copy_(torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy()).reshape(p.shape))
    return model


# ----- layout and metadata ------------------------------------------------------------------------------------------
def test_phi2_tensor_names_shapes_and_metadata(tmp_path) -> None:
    model = build("phi-2")
    reader = gguf.GGUFReader(export_gguf(model, None, tmp_path / "m.gguf", "f16"))
    tensors = {t.name: t for t in reader.tensors}
    per_block = {f"attn_{p}.{s}" for p in ("q", "k", "v", "output") for s in ("weight", "bias")} | {
        f"{p}.{s}" for p in ("attn_norm", "ffn_up", "ffn_down") for s in ("weight", "bias")}
    expected = {"token_embd.weight", "output_norm.weight", "output_norm.bias", "output.weight", "output.bias"} | {
        f"blk.{i}.{n}" for i in range(3) for n in per_block}
    assert set(tensors) == expected
    assert list(tensors["blk.0.ffn_up.weight"].shape) == [80, 160]  # GGUF lists ne0 (columns) first
    assert tensors["blk.0.ffn_up.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert tensors["blk.0.ffn_up.bias"].tensor_type == gguf.GGMLQuantizationType.F32  # 1-D stays f32
    meta = fields(reader)
    c = model.config
    assert meta["general.architecture"] == "phi2"
    assert (meta["phi2.context_length"], meta["phi2.embedding_length"], meta["phi2.feed_forward_length"],
            meta["phi2.block_count"], meta["phi2.attention.head_count"], meta["phi2.attention.head_count_kv"]) == (
        c.max_position_embeddings, 80, 160, 3, 4, 4)
    assert meta["phi2.rope.dimension_count"] == c.rotary_dim == 8  # partial_rotary_factor 0.4 of head_dim 20
    assert meta["phi2.attention.layer_norm_epsilon"] == pytest.approx(c.layer_norm_eps)
    assert meta["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16


def test_phi3_longrope_factors_and_metadata(tmp_path) -> None:
    model = build("phi-3-128k")
    reader = gguf.GGUFReader(export_gguf(model, None, tmp_path / "m.gguf", "q8_0"))
    tensors = {t.name: t for t in reader.tensors}
    rp = model.config.rope_parameters
    assert torch.equal(torch.from_numpy(tensors["rope_factors_long.weight"].data.copy()), torch.tensor(rp["long_factor"]))
    assert torch.equal(torch.from_numpy(tensors["rope_factors_short.weight"].data.copy()), torch.tensor(rp["short_factor"]))
    assert "blk.0.attn_qkv.weight" in tensors and "blk.0.ffn_up.weight" in tensors  # fused, as llama.cpp expects
    assert list(tensors["blk.0.ffn_up.weight"].shape) == [64, 256]  # gate and up rows together
    meta = fields(reader)
    assert meta["general.architecture"] == "phi3"
    assert meta["phi3.rope.scaling.original_context_length"] == 24 and meta["phi3.context_length"] == 256
    assert meta["phi3.rope.scaling.attn_factor"] == pytest.approx(longrope_attention_factor(rp, 256))
    assert meta["phi3.rope.dimension_count"] == 16 and meta["phi3.attention.sliding_window"] == 0
    assert meta["phi3.attention.layer_norm_rms_epsilon"] == pytest.approx(model.config.rms_norm_eps)
    mini = fields(gguf.GGUFReader(export_gguf(build("phi-3-mini-4k"), None, tmp_path / "s.gguf", "f16")))
    assert mini["phi3.attention.sliding_window"] == 7 and "phi3.rope.scaling.attn_factor" not in mini


def test_phi4_mini_tied_head_gqa_and_partial_rotary(tmp_path) -> None:
    model = build("phi-4-mini")
    reader = gguf.GGUFReader(export_gguf(model, None, tmp_path / "m.gguf", "bf16"))
    names = {t.name for t in reader.tensors}
    assert "output.weight" not in names and "token_embd.weight" in names  # llama.cpp reuses the embedding
    meta = fields(reader)
    assert meta["phi3.attention.head_count_kv"] == 2 and meta["phi3.rope.dimension_count"] == 12


# ----- values -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0", "q4_0"])
@pytest.mark.parametrize("name", ["phi-2", "phi-3-128k"])
def test_tensors_round_trip_within_format_precision(name: str, outtype: str, tmp_path) -> None:
    model = build(name)
    arch = "phi2" if model.config.model_type == "phi" else "phi3"
    reader = gguf.GGUFReader(export_gguf(model, None, tmp_path / "m.gguf", outtype))
    expected = model_tensors_by_gguf_name(model, arch)
    Q = gguf.GGMLQuantizationType
    seen = 0
    for t in reader.tensors:
        if t.name.startswith("rope_factors"):
            continue
        got = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy()).reshape(expected[t.name].shape)
        w = expected[t.name]
        if t.tensor_type == Q.F32:
            assert torch.equal(got, w), t.name
        elif t.tensor_type == Q.F16:
            assert torch.equal(got, w.half().float()), t.name
        elif t.tensor_type == Q.BF16:
            assert torch.equal(got, w.bfloat16().float()), t.name  # round to nearest even, as torch
        elif t.tensor_type == Q.Q8_0:  # q8_0 files, and the head of q4_0 files
            assert (outtype == "q8_0" or (outtype == "q4_0" and t.name == "output.weight")) and w.dim() == 2
            assert w.shape[1] % 32 == 0
            assert torch.equal(got, q8_0_reference(w)), t.name
            step = w.reshape(-1, 32).abs().amax(1, keepdim=True) / 127
            # half a step, plus the fp16 rounding of the scale (2^-11 relative) times |q| <= 127
            assert bool(((got - w).reshape(-1, 32).abs() <= step * (0.5 + 127 * 2**-11)).all()), t.name
        else:
            assert t.tensor_type == Q.Q4_0 and outtype == "q4_0" and w.dim() == 2 and w.shape[1] % 32 == 0
            ref, d = q4_0_reference(w)
            assert torch.equal(got, ref), t.name
            # |x / d| <= 8 in every block. Rounding to the nearest level costs at most half a step |d|, except for
            # x / d >= 7.5 (values opposite in sign to `max`, nearly as large), clamped to q = 7: up to one step.
            # Plus the fp16 rounding of d (2^-11 relative) times |q| <= 8, which also covers fp32 rounding of x / d.
            blocks = w.reshape(-1, 32)
            clamped = blocks * torch.where(d == 0, torch.zeros_like(d), 1 / d) >= 7.5
            bound = d.abs() * (torch.where(clamped, 1.0, 0.5) + 8 * 2**-11)
            err = (got - w).reshape(-1, 32).abs()
            assert bool((err <= bound).all()), t.name
            assert bool((err <= d.abs() * (1 + 8 * 2**-11)).all()), t.name  # never more than one step
        seen += 1
    assert seen == len(expected)
    if outtype in ("q8_0", "q4_0") and name == "phi-2":  # 80-wide rows are not whole 32-value blocks: f16 instead
        assert {t.tensor_type for t in reader.tensors if t.name == "blk.0.attn_q.weight"} == {Q.F16}


@pytest.mark.parametrize("name", ["phi-2", "phi-3-128k", "phi-4-mini"])
def test_q4_0_types_sizes_and_file_type(name: str, tmp_path) -> None:
    model = build(name)
    reader = gguf.GGUFReader(export_gguf(model, None, tmp_path / "m.gguf", "q4_0"))
    arch = "phi2" if model.config.model_type == "phi" else "phi3"
    expected = model_tensors_by_gguf_name(model, arch)
    Q = gguf.GGMLQuantizationType
    assert fields(reader)["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q4_0
    head = "token_embd.weight" if model.config.tie_word_embeddings else "output.weight"  # computes the logits
    quantized = set()
    for t in reader.tensors:
        shape = tuple(expected[t.name].shape) if t.name in expected else (int(t.n_elements),)
        if len(shape) == 1:
            want = Q.F32  # norms, biases, rope factors
        elif t.name == head:  # kept at 8 bits, as llama-quantize keeps it at 6 or more
            want = Q.Q8_0 if shape[1] % 32 == 0 else Q.F16
        else:
            want = Q.Q4_0 if shape[1] % 32 == 0 else Q.F16
        assert t.tensor_type == want, t.name
        n = int(torch.tensor(shape).prod())
        # q4_0: 18 bytes (fp16 scale + 32 nibbles) per 32 values; q8_0: 34 (fp16 scale + 32 int8)
        assert t.n_bytes == {Q.F32: 4 * n, Q.F16: 2 * n, Q.Q4_0: n // 32 * 18, Q.Q8_0: n // 32 * 34}[want], t.name
        if want in (Q.Q4_0, Q.Q8_0):
            quantized.add(t.name)
    if name == "phi-2":  # 80 columns: f16; ffn_down's 160 columns are 5 blocks
        assert "blk.0.ffn_down.weight" in quantized and "blk.0.attn_q.weight" not in quantized
        assert "token_embd.weight" not in quantized
    else:  # every matrix quantized, the token embedding (tied head for phi-4-mini) and the output included
        written = {t.name for t in reader.tensors}  # a tied lm_head is not written (llama.cpp reuses token_embd)
        assert {n for n, w in expected.items() if w.dim() == 2 and n in written} == quantized
        assert "token_embd.weight" in quantized and ("output.weight" in quantized) == (name != "phi-4-mini")
        assert {t.name for t in reader.tensors if t.tensor_type == Q.Q8_0} == {head}


def test_quantized_model_exports_its_dequantized_weights(tmp_path) -> None:
    model = quantize_model(build("phi-3-mini-4k"), Int8WeightOnlyConfig())
    reader = gguf.GGUFReader(export_gguf(model, None, tmp_path / "m.gguf", "f32"))
    qkv = next(t for t in reader.tensors if t.name == "blk.0.attn_qkv.weight")
    expected = model.model.layers[0].self_attn.qkv_proj.dequantize()
    assert torch.equal(torch.from_numpy(qkv.data.copy()), expected)


def test_unsupported_models_and_types_raise(tmp_path) -> None:
    with pytest.raises(NotImplementedError, match="PhiMoE.*sparsemixer"):
        export_gguf(build("phi-3.5-moe"), None, tmp_path / "m.gguf")
    with pytest.raises(NotImplementedError, match="qk_layernorm"):
        export_gguf(build("phi-qk-layernorm"), None, tmp_path / "m.gguf")
    with pytest.raises(ValueError, match="q4_k"):
        export_gguf(build("phi-2"), None, tmp_path / "m.gguf", "q4_k")
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


# ----- tokenizer ----------------------------------------------------------------------------------------------------
@needs_fixtures
def test_phi3_vocabulary_equals_llama_cpp_and_tokenizes_the_same(tmp_path) -> None:
    tok = phikit.AutoTokenizer.from_pretrained(TOKENIZERS / "phi-3-mini")
    model = build("phi-3-mini-4k", vocab_size=32064)
    path = export_gguf(model, tok, tmp_path / "m.gguf", "f16")
    meta = fields(gguf.GGUFReader(path))
    official = fields(gguf.GGUFReader(str(LLAMA_CPP / "ggml-vocab-phi-3.gguf")))
    assert meta["tokenizer.ggml.model"] == "llama"
    assert len(meta["tokenizer.ggml.tokens"]) == len(meta["tokenizer.ggml.scores"]) == len(
        meta["tokenizer.ggml.token_type"]) == 32064
    assert meta["tokenizer.ggml.tokens"] == official["tokenizer.ggml.tokens"]
    assert meta["tokenizer.ggml.token_type"][:32011] == official["tokenizer.ggml.token_type"][:32011]
    assert meta["tokenizer.ggml.eos_token_id"] == 32000 and meta["tokenizer.ggml.eot_token_id"] == 32007
    assert meta["tokenizer.chat_template"] == tok.chat_template
    back = phikit.PhiTokenizer.from_gguf(path)  # SentencePiece merges rebuilt from our scores
    for text, ids in llama_cpp_cases("phi-3"):
        assert back.encode(text, add_special_tokens=False) == ids, text


@needs_fixtures
def test_phi2_gpt2_vocabulary_with_merges(tmp_path) -> None:
    tok = phikit.AutoTokenizer.from_pretrained(TOKENIZERS / "phi-2")
    model = build("phi-2", vocab_size=51200)
    vocab = vocabulary_for_gguf(tok, 51200)
    data = json.loads((TOKENIZERS / "phi-2" / "tokenizer.json").read_text(encoding="utf-8"))
    assert vocab["model"] == "gpt2" and vocab["pre"] == "phi-2"
    assert len(vocab["tokens"]) == 51200 and len(vocab["merges"]) == len(data["model"]["merges"])
    path = export_gguf(model, tok, tmp_path / "m.gguf", "f16")
    back = phikit.PhiTokenizer.from_gguf(path)
    for text, _ in llama_cpp_cases("gpt-2"):
        assert back.encode(text) == tok.encode(text), text
    with pytest.raises(ValueError, match="50295 tokens but the model.s embedding has 50000 rows"):
        vocabulary_for_gguf(tok, 50000)


# ----- command line -------------------------------------------------------------------------------------------------
@needs_fixtures
@pytest.mark.parametrize("outtype", ["q8_0", "q4_0"])
def test_export_command(outtype: str, tmp_path, capsys) -> None:
    from phikit.export_cli import add_export_parser, run_export

    model = build("phi-3-mini-4k", vocab_size=32064)
    model.save_pretrained(tmp_path / "ckpt")
    phikit.AutoTokenizer.from_pretrained(TOKENIZERS / "phi-3-mini").save_pretrained(tmp_path / "ckpt")
    parser = argparse.ArgumentParser(prog="phikit")
    add_export_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "out.gguf"
    args = parser.parse_args(["export", "--model", str(tmp_path / "ckpt"), "--format", "gguf", "--outtype", outtype,
                              "-o", str(out)])
    assert run_export(args) == 0
    assert "wrote" in capsys.readouterr().err
    meta = fields(gguf.GGUFReader(str(out)))
    file_type = {"q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[outtype]
    assert meta["general.file_type"] == file_type and meta["tokenizer.ggml.model"] == "llama"


# ----- llama.cpp itself (optional) ----------------------------------------------------------------------------------
LLAMA_CASES = {  # name: (overrides, tokenizer, max |logit difference|)
    # ggml computes GELU through an fp16 lookup table: about 2e-3 on these logits (|logit| <= 6)
    "phi-2": (dict(vocab_size=51200, hidden_size=64, intermediate_size=128), "phi-2", 1e-2),
    # llama.cpp 0.3.36 does not apply Phi-3's sliding window (phikit and transformers do): tested without one
    "phi-3-mini-4k": (dict(vocab_size=32064, sliding_window=None), "phi-3-mini", 1e-3),
    "phi-3-128k": (dict(vocab_size=32064), "phi-3-mini", 1e-3),  # 30 tokens > 24: long factors on both sides
    "phi-4-mini": (dict(vocab_size=32064), "phi-3-mini", 1e-3),  # tied head, GQA, partial rotary
}


def llama_cpp_logits(llama_cpp, path, ids: list[int]) -> torch.Tensor:
    """llama.cpp's logits [T, V] for `ids` from the GGUF at `path`."""
    # f32 KV cache (type 0): llama.cpp's default f16 cache alone moves these logits by ~1e-2
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2,
                          type_k=0, type_v=0)
    llm.eval(ids)
    return torch.tensor(llm.scores[: len(ids)])


@needs_fixtures
@pytest.mark.parametrize("name", list(LLAMA_CASES))
def test_llama_cpp_runs_the_export_like_phikit(name: str, tmp_path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (optional, test only)")
    overrides, tok_dir, tol = LLAMA_CASES[name]
    model = build(name, **overrides)
    path = export_gguf(model, phikit.AutoTokenizer.from_pretrained(TOKENIZERS / tok_dir), tmp_path / "m.gguf", "f32")
    ids = [int(i) for i in torch.randint(3, 1000, (30,), generator=torch.Generator().manual_seed(0))]
    theirs = llama_cpp_logits(llama_cpp, path, ids)
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0]
    assert (theirs - ours).abs().max().item() < tol
    top2 = ours.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * tol  # greedy choices that a difference below tol cannot flip
    assert torch.equal(theirs.argmax(-1)[clear], ours.argmax(-1)[clear]) and clear.sum() >= 20


# llama.cpp multiplies q4_0 (and q8_0) weights with activations it first quantizes to q8_0 blocks, so its logits
# differ from phikit's on the very same (dequantized) weights by up to ~0.35 on these |logit| <= 7 models, for q8_0
# files as much as q4_0 ones (measured 0.11 phi-2, 0.32 phi-3-128k). q4_0 itself moves the logits by ~1.5-5 from the
# float model, so llama.cpp must be far closer to the dequantized weights than to the float ones.
Q4_0_TOL = 0.5


@needs_fixtures
@pytest.mark.parametrize("name", ["phi-2", "phi-3-128k"])
def test_llama_cpp_runs_the_q4_0_export_like_phikit_on_its_weights(name: str, tmp_path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (optional, test only)")
    overrides, tok_dir, _ = LLAMA_CASES[name]
    model = build(name, **overrides)
    path = export_gguf(model, phikit.AutoTokenizer.from_pretrained(TOKENIZERS / tok_dir), tmp_path / "m.gguf", "q4_0")
    reader = gguf.GGUFReader(path)
    assert any(t.tensor_type == gguf.GGMLQuantizationType.Q4_0 for t in reader.tensors)
    arch = "phi2" if model.config.model_type == "phi" else "phi3"
    q4 = dequantized_copy(model, reader, arch)
    ids = [int(i) for i in torch.randint(3, 1000, (30,), generator=torch.Generator().manual_seed(0))]
    theirs = llama_cpp_logits(llama_cpp, path, ids)
    with torch.no_grad():
        ours = q4(torch.tensor([ids])).logits[0]
        dense = model(torch.tensor([ids])).logits[0]
    gap = (theirs - ours).abs().max().item()
    assert gap < Q4_0_TOL
    assert gap < 0.2 * (dense - ours).abs().max().item()  # it runs our q4_0 weights, not something near the float ones
    top2 = ours.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * Q4_0_TOL  # greedy choices that a difference below the tolerance cannot flip
    assert torch.equal(theirs.argmax(-1)[clear], ours.argmax(-1)[clear])
