"""One tensor-parallel rank, started as torchrun would start it (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT):
loads each model folder with tp_plan="auto", runs a forward and 16 greedy tokens, and writes, per model, the
logits, the tokens and what it read from the checkpoint to <out>/<name>.rank<r>.safetensors.

    python tests/parallel/tp_worker.py OUT FOLDER [FOLDER ...]

TP_WORKER_MESH=1: the worker initialises the process group itself and passes `device_mesh=` (a 1-D DeviceMesh);
TP_WORKER_TP_SIZE=k: it passes `tp_size=k` (consecutive ranks in groups of k).
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import phikit  # noqa: E402
from tests.parallel.models import NEW_TOKENS, PROMPT  # noqa: E402


def main(out: str, folders: list[str]) -> None:
    kwargs = {}
    if os.environ.get("TP_WORKER_MESH") == "1":
        from torch.distributed.device_mesh import init_device_mesh

        dist.init_process_group("gloo")
        kwargs["device_mesh"] = init_device_mesh("cpu", (dist.get_world_size(),))
    if os.environ.get("TP_WORKER_TP_SIZE"):
        kwargs["tp_size"] = int(os.environ["TP_WORKER_TP_SIZE"])
    try:
        for folder in folders:
            model = phikit.AutoModelForCausalLM.from_pretrained(folder, tp_plan="auto", **kwargs)
            rank = dist.get_rank()
            ids = torch.tensor(PROMPT)
            with torch.no_grad():
                logits = model(ids).logits
                tokens = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=NEW_TOKENS)
            name = os.path.basename(folder)
            tp = model.tensor_parallel
            if tp.tp == 1:  # tp_size=1: each rank a whole replica
                assert model.tp_size == 1
            layer_read = sum(r for n, (r, _) in tp.reads.items() if ".layers." in n)
            layer_full = sum(f for n, (_, f) in tp.reads.items() if ".layers." in n)
            heads = model.model.layers[0].self_attn
            meta = {"tp": tp.tp, "rank": tp.rank, "layer_read": layer_read, "layer_full": layer_full,
                    "q_heads": heads.num_heads, "kv_heads": heads.num_kv_heads,
                    "all_reduce_calls": tp.stats.all_reduce_calls, "reducer": tp.reducer}
            save_file({"logits": logits.contiguous(), "tokens": tokens.contiguous()},
                      os.path.join(out, f"{name}.rank{rank}.safetensors"), metadata={"meta": json.dumps(meta)})
            for refused in (lambda: model.save_pretrained(os.path.join(out, "never")),
                            lambda: model.resize_token_embeddings(200)):
                try:
                    refused()
                except ValueError as e:
                    assert "tp_plan" in str(e), e
                else:
                    raise AssertionError("a shard must refuse to be saved or resized")
            dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
