"""Tensor parallelism on CPU with gloo: two real rank processes (OMP_NUM_THREADS=1 each, a free loopback port, the
process group destroyed in `finally`) load each tiny model with tp_plan="auto"; their logits equal the whole
model's (fp32) and their 16 greedy tokens are the same, on every family shape that shards differently."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import phikit
from phikit.parallel import TensorParallelError, assign_heads, valid_tp_values
from phikit.parallel.heads import HeadShard

from .common import WORKER, free_port, loopback_name, read_rank, run_ranks
from .models import MODELS, NEW_TOKENS, PROMPT, save_all


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return save_all(str(tmp_path_factory.mktemp("tp_models")))


@pytest.fixture(scope="module")
def two_ranks(checkpoints, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tp_out"))
    run_ranks([WORKER, out, *checkpoints.values()])
    return out


def whole(folder: str):
    model = phikit.AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.tensor(PROMPT)
    with torch.no_grad():
        logits = model(ids).logits
        tokens = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=NEW_TOKENS)
    return logits, tokens


@pytest.mark.parametrize("name", list(MODELS))
def test_tp2_logits_and_greedy_tokens_equal_the_whole_model(name, checkpoints, two_ranks):
    logits, tokens = whole(checkpoints[name])
    assert len(set(tokens[0, len(PROMPT[0]):].tolist())) > 1, "the probe needs tokens that vary"
    for rank in (0, 1):
        got, meta = read_rank(two_ranks, name, rank)
        assert meta["tp"] == 2 and meta["rank"] == rank
        torch.testing.assert_close(got["logits"], logits)
        assert got["tokens"].tolist() == tokens.tolist()
        assert meta["all_reduce_calls"] > 0


def test_shared_memory_all_reduce_is_chosen_on_one_x86_machine(two_ranks):
    import platform

    _, meta = read_rank(two_ranks, "phi3", 0)
    want = "shared memory" if platform.machine().lower() in ("x86_64", "amd64") else "gloo"
    assert meta["reducer"] == want


def test_gloo_all_reduce_and_a_device_mesh(checkpoints, tmp_path):
    """PHIKIT_TP_SHM=0: every all-reduce through gloo (the path where ranks are on several machines), on every
    family; the ranks initialise the group themselves and pass a 1-D `device_mesh`, as transformers accepts."""
    run_ranks([WORKER, str(tmp_path), *checkpoints.values()], PHIKIT_TP_SHM="0", TP_WORKER_MESH="1")
    for name, folder in checkpoints.items():
        logits, tokens = whole(folder)
        for rank in (0, 1):
            got, meta = read_rank(str(tmp_path), name, rank)
            assert meta["reducer"] == "gloo" and meta["tp"] == 2
            torch.testing.assert_close(got["logits"], logits)
            assert got["tokens"].tolist() == tokens.tolist()


def test_tp_size_below_the_world_size_makes_replicas(checkpoints, tmp_path):
    """tp_size=1 of 2 ranks: two one-rank groups, each rank a whole model (no collective inside a forward)."""
    run_ranks([WORKER, str(tmp_path), checkpoints["phi4mini"]], TP_WORKER_TP_SIZE="1")
    logits, tokens = whole(checkpoints["phi4mini"])
    for rank in (0, 1):
        got, meta = read_rank(str(tmp_path), "phi4mini", rank)
        assert meta["tp"] == 1 and meta["all_reduce_calls"] == 0 and meta["layer_read"] == meta["layer_full"]
        torch.testing.assert_close(got["logits"], logits)


def test_phi_parallel_block_needs_one_all_reduce_per_layer(checkpoints, two_ranks):
    # the phi2 worker ran one forward of 2 layers, then a generate of 16 steps (prefill + 15 decode steps)
    _, meta = read_rank(two_ranks, "phi2", 0)
    assert meta["all_reduce_calls"] == 2 * (1 + 1 + NEW_TOKENS - 1)
    _, meta = read_rank(two_ranks, "phi3", 0)  # sequential blocks: attention and MLP branches, one each
    assert meta["all_reduce_calls"] == 2 * 2 * (1 + 1 + NEW_TOKENS - 1)


@pytest.mark.parametrize("name", ["phi2", "phi3", "phi4mini", "phimoe"])
def test_each_rank_reads_half_of_the_layer_weights(name, two_ranks):
    for rank in (0, 1):
        _, meta = read_rank(two_ranks, name, rank)
        share = meta["layer_read"] / meta["layer_full"]
        assert 0.49 < share < 0.52, (rank, share)  # norms and the router are replicated; biases on rank 0


def test_replicated_kv_heads_are_read_once_per_rank(two_ranks):
    # 6 query / 3 kv heads at tp=2: each rank holds 3 query heads and kv heads (0, 0, 1) or (1, 2, 2)
    for rank in (0, 1):
        _, meta = read_rank(two_ranks, "uneven_kv", rank)
        assert (meta["q_heads"], meta["kv_heads"]) == (3, 3)
        assert meta["layer_read"] / meta["layer_full"] < 0.6


def test_under_torchrun(checkpoints, tmp_path):
    out = str(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME=loopback_name(),
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), WORKER, out, checkpoints["phi4mini"]]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    logits, tokens = whole(checkpoints["phi4mini"])
    for rank in (0, 1):
        got, _ = read_rank(out, "phi4mini", rank)
        torch.testing.assert_close(got["logits"], logits)
        assert got["tokens"].tolist() == tokens.tolist()


def brute_force(num_heads: int, num_kv: int, tp: int, rank: int) -> HeadShard:
    """The largest run length g' of consecutive local query heads that always share a kv head, found by trying
    every divisor of the local head count."""
    local = num_heads // tp
    first = rank * local
    kv_of = [h // (num_heads // num_kv) for h in range(first, first + local)]
    for g in sorted((d for d in range(1, local + 1) if local % d == 0), reverse=True):
        runs = [kv_of[i:i + g] for i in range(0, local, g)]
        if all(len(set(run)) == 1 for run in runs):
            return HeadShard(rank, tp, range(first, first + local), tuple(run[0] for run in runs))
    raise AssertionError("unreachable: g' = 1 always works")


@pytest.mark.parametrize("heads", [(40, 10, 4), (24, 8, 3), (32, 32, 8), (6, 3, 2), (6, 2, 2), (32, 8, 2)])
def test_head_assignment_matches_brute_force(heads):
    num_heads, num_kv, tp = heads
    for rank in range(tp):
        got = assign_heads(num_heads, num_kv, tp, rank)
        assert got == brute_force(num_heads, num_kv, tp, rank)
        for i, h in enumerate(got.q_heads):  # every local query head reads its own kv head
            assert got.kv_heads[i // got.group] == h // (num_heads // num_kv)
    # every kv head is held by some rank
    assert set().union(*(assign_heads(num_heads, num_kv, tp, r).kv_heads for r in range(tp))) == set(range(num_kv))


def test_intermediate_parts_keep_whole_blocks():
    from phikit.parallel.heads import alignment, split_sizes

    assert split_sizes(8192, 2, alignment(8192, 2)) == [4096, 4096]
    assert split_sizes(8192, 3, alignment(8192, 3)) == [2816, 2688, 2688]  # whole 128-column int4 groups
    assert split_sizes(17920, 4, alignment(17920, 4)) == [4480] * 4  # Phi-3-medium
    assert split_sizes(100, 2, alignment(100, 2)) == [50, 50]


def test_phi3_medium_at_tp4_replicates_by_group():
    assert [assign_heads(40, 10, 4, r).kv_heads for r in range(4)] == [
        (0, 0, 1, 1, 2), (2, 3, 3, 4, 4), (5, 5, 6, 6, 7), (7, 8, 8, 9, 9)]


def test_a_tp_that_cannot_work_names_the_heads_and_the_valid_values():
    with pytest.raises(TensorParallelError, match=r"tp=3 does not divide num_attention_heads=40 "
                                                  r"\(num_key_value_heads=10\).*1, 2, 4, 5, 8, 10, 20, 40"):
        assign_heads(40, 10, 3, 0)
    assert valid_tp_values(24) == [1, 2, 3, 4, 6, 8, 12, 24]


def test_tp_plan_errors_name_the_fix(checkpoints, monkeypatch):
    with pytest.raises(TensorParallelError, match="pass tp_plan='auto'"):
        phikit.AutoModelForCausalLM.from_pretrained(checkpoints["phi3"], tp_plan={"layers.*": "colwise"})
    with pytest.raises(TensorParallelError, match="only with tp_plan='auto'"):
        phikit.AutoModelForCausalLM.from_pretrained(checkpoints["phi3"], tp_size=2)
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(TensorParallelError, match="torchrun --nproc-per-node N"):
        phikit.AutoModelForCausalLM.from_pretrained(checkpoints["phi3"], tp_plan="auto")


def test_engine_steps_broadcast_to_the_worker_rank(checkpoints, tmp_path):
    """Batched (ragged) decode, n > 1 and prefix reuse on a sharded model: rank 0's engine gives the whole model's
    greedy tokens while rank 1 mirrors every step."""
    import json

    from phikit.engine import Engine, SamplingParams

    from .common import ROOT
    from .engine_requests import REQUESTS

    run_ranks([os.path.join(ROOT, "tests", "parallel", "engine_worker.py"), str(tmp_path), checkpoints["phi3"]])
    got = json.loads((tmp_path / "engine.json").read_text())
    model = phikit.AutoModelForCausalLM.from_pretrained(checkpoints["phi3"])
    engine = Engine(model, None, parallel=4, ctx_size=64, deterministic=False)
    want = engine.generate([r[0] for r in REQUESTS], [SamplingParams(**r[1]) for r in REQUESTS])
    assert got == [[c.token_ids for c in r.choices] for r in want]
    assert len(got[2]) == 2 and len(set(map(tuple, sum(got, [])))) > 1


def test_bf16_and_quantized_shards(checkpoints, tmp_path):
    """The other weight formats load sharded too, each quantized as the whole model is: int4 groups never straddle
    ranks (the intermediate size is split in blocks of 32-128), and int8's per-row scales of a column-sharded
    projection (o_proj, down_proj) come from the whole row (an all-reduce of the row maxima while loading), so both
    equal the whole quantized model up to fp32 summation order. bf16 rounds each rank's partial sums (bf16
    tolerance)."""
    from safetensors.torch import load_file

    from .common import ROOT
    from .formats_worker import FORMATS, run

    folder = checkpoints["phi3"]
    run_ranks([os.path.join(ROOT, "tests", "parallel", "formats_worker.py"), str(tmp_path), folder])
    tolerance = {"bf16": 0.1, "int8": 1e-4, "int4": 1e-4}
    for name, kwargs in FORMATS.items():
        want = run(phikit.AutoModelForCausalLM.from_pretrained(folder, **kwargs))
        for rank in (0, 1):
            got = load_file(str(tmp_path / f"{name}.rank{rank}.safetensors"))
            torch.testing.assert_close(got["logits"], want["logits"], atol=tolerance[name], rtol=0)
            if name != "bf16":
                assert got["tokens"].tolist() == want["tokens"].tolist()
