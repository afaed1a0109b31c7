"""The serving engine over a tensor-parallel model: rank 0 runs the Engine (its steps broadcast to the other
ranks), rank k > 0 follows. Rank 0 writes each request's token ids to <out>/engine.json.

    python tests/parallel/engine_worker.py OUT FOLDER
"""

from __future__ import annotations

import json
import os
import sys

import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import phikit  # noqa: E402
from phikit.engine import Engine, SamplingParams  # noqa: E402
from phikit.engine.mirror import Broadcast, follow  # noqa: E402
from tests.parallel.engine_requests import REQUESTS  # noqa: E402


def main(out: str, folder: str) -> None:
    try:
        model = phikit.AutoModelForCausalLM.from_pretrained(folder, tp_plan="auto")
        if dist.get_rank() == 0:
            engine = Engine(model, None, parallel=4, ctx_size=64, deterministic=False, mirror=Broadcast())
            prompts = [r[0] for r in REQUESTS]
            params = [SamplingParams(**r[1]) for r in REQUESTS]
            results = engine.generate(prompts, params)
            engine.shutdown()  # tells the other ranks to stop
            with open(os.path.join(out, "engine.json"), "w") as f:
                json.dump([[c.token_ids for c in r.choices] for r in results], f)
        else:
            follow(Engine(model, None, parallel=4, ctx_size=64, deterministic=False))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
