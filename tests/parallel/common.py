"""Start tensor-parallel ranks as real processes on loopback and read what they wrote."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from safetensors import safe_open

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tp_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int) -> dict[str, str]:
    env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
               GLOO_SOCKET_IFNAME=loopback_name())
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def loopback_name() -> str:
    names = [n for _, n in socket.if_nameindex()]
    return "lo" if "lo" in names else names[0]


def run_ranks(args: list[str], world: int = 2, timeout: float = 600, **env: str) -> None:
    """Start `world` ranks of `python <args>` (extra environment `env`) and wait for all; a failing rank fails
    with its output."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, *args], env={**rank_env(r, world, port), **env}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(world)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"rank {r} exited {p.returncode}:\n{out[-4000:]}"


def read_rank(out: str, name: str, rank: int) -> tuple[dict, dict]:
    with safe_open(os.path.join(out, f"{name}.rank{rank}.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(f.metadata()["meta"])
    return tensors, meta
