"""`phikit serve --tp N`: the server process is rank 0 (HTTP, scheduling, sampling); it starts N - 1 worker ranks
(`python -m phikit.server.tensor_parallel`), each loading its shard of the same checkpoint. All ranks join one
gloo (CPU) or NCCL (CUDA) group on loopback; rank 0's engine broadcasts every step (`phikit/engine/mirror.py`).
Under torchrun (RANK / WORLD_SIZE set) torchrun starts the ranks instead and rank k > 0 runs the worker here.

A worker exits when rank 0 sends "stop" (engine shutdown) or, should rank 0 die, when its parent is gone.
The group waits without a deadline: an idle server sends nothing for hours, which is not a fault.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import torch

NO_DEADLINE = datetime.timedelta(days=365)
WORKER_EXIT_S = 10.0


def under_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def threads_per_rank(tp: int) -> int:
    return max(1, (os.cpu_count() or 1) // tp)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_workers(options: Any) -> list[subprocess.Popen]:
    """Rank 0 (this process): set its own rank's environment and start ranks 1 .. tp - 1."""
    if under_torchrun():
        return []
    port = _free_port()
    threads = threads_per_rank(options.tp)
    common = {"WORLD_SIZE": str(options.tp), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
              "LOCAL_WORLD_SIZE": str(options.tp)}
    if "GLOO_SOCKET_IFNAME" not in os.environ and "lo" in (name for _, name in socket.if_nameindex()):
        common["GLOO_SOCKET_IFNAME"] = "lo"  # the ranks talk over loopback, not the host name's interface
    os.environ.update(common, RANK="0", LOCAL_RANK="0")
    torch.set_num_threads(threads)
    payload = json.dumps(dataclasses.asdict(options))
    procs = []
    for rank in range(1, options.tp):
        env = dict(os.environ, **common, RANK=str(rank), LOCAL_RANK=str(rank), OMP_NUM_THREADS=str(threads),
                   PHIKIT_TP_PARENT=str(os.getpid()))
        procs.append(subprocess.Popen([sys.executable, "-m", "phikit.server.tensor_parallel", payload], env=env))
    return procs


def stop_workers(procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + WORKER_EXIT_S
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def init_group(device: str | None) -> None:
    """Join the ranks' process group (from the environment start_workers or torchrun set)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device and device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, timeout=NO_DEADLINE)


def load_sharded(options: Any):
    """This rank's shard of options.model."""
    from ..hf.auto import AutoModelForCausalLM
    from .options import quantization_for

    init_group(options.device)
    model = AutoModelForCausalLM.from_pretrained(options.model, dtype=options.dtype, device_map=options.device,
                                                 quantization_config=quantization_for(options.weights),
                                                 tp_plan="auto")
    return model.eval()


def _exit_with_parent(parent: int) -> None:
    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(0)
            time.sleep(1.0)

    threading.Thread(target=watch, name="phikit-tp-parent", daemon=True).start()


def worker_main(options: Any) -> int:
    """Rank k > 0: load the shard, then run rank 0's steps until it says stop."""
    import torch.distributed as dist

    from ..engine import Engine
    from ..engine.mirror import follow

    parent = os.environ.get("PHIKIT_TP_PARENT")
    if parent:
        _exit_with_parent(int(parent))
    torch.set_num_threads(threads_per_rank(options.tp))
    try:
        model = load_sharded(options)
        engine = Engine(model, None, parallel=options.parallel, ctx_size=options.ctx_size,
                        max_num_batched_tokens=options.max_num_batched_tokens, deterministic=options.deterministic,
                        prefix_cache=options.prefix_cache)
        follow(engine)
        return 0
    except Exception as e:  # noqa: BLE001 - one line, as the server's own errors
        print(f"phikit: error: tensor-parallel rank {os.environ.get('RANK')}: {' '.join(str(e).split())}",
              file=sys.stderr, flush=True)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str]) -> int:
    from .options import ServeOptions

    return worker_main(ServeOptions(**json.loads(argv[0])))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
