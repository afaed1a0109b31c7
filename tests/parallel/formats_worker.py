"""One rank: load FOLDER with tp_plan="auto" in bf16, int8 and int4 (group 32) and write each format's logits and
greedy tokens to <out>/<format>.rank<r>.safetensors.

    python tests/parallel/formats_worker.py OUT FOLDER
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import phikit  # noqa: E402
from tests.parallel.models import PROMPT  # noqa: E402

FORMATS = {"bf16": dict(dtype=torch.bfloat16),
           "int8": dict(quantization_config=phikit.Int8WeightOnlyConfig()),
           "int4": dict(quantization_config=phikit.Int4WeightOnlyConfig(group_size=32))}


def run(model) -> dict[str, torch.Tensor]:
    ids = torch.tensor(PROMPT)
    with torch.no_grad():
        return {"logits": model(ids).logits.float().contiguous(),
                "tokens": model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False).contiguous(),
}


def main(out: str, folder: str) -> None:
    try:
        for name, kwargs in FORMATS.items():
            model = phikit.AutoModelForCausalLM.from_pretrained(folder, tp_plan="auto", **kwargs)
            save_file(run(model), os.path.join(out, f"{name}.rank{dist.get_rank()}.safetensors"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
