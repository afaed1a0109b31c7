"""`phikit serve --tp 2`: the server process is rank 0 and starts one worker rank; the two shards answer a chat
completion with the same greedy text as the whole model (fp32, so both sides round alike)."""

from __future__ import annotations

import ipaddress

import pytest
import torch

import phikit

from .common import SERVED, chat_messages, chat_model, socket_peers, start_server, stop  # noqa: F401

PROMPTS = ["Tell me a story about a fox.", "def add(a, b):"]


@pytest.fixture(scope="module")
def tp_server(chat_model, tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("serve-tp"), "--tp", "2", "--dtype", "float32", "--parallel", "2",
                          model=chat_model)
    yield server
    stop(server.proc)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_tp2_chat_completion_equals_the_whole_model(tp_server, chat_model, prompt):
    model = phikit.AutoModelForCausalLM.from_pretrained(chat_model, dtype=torch.float32)
    tok = phikit.AutoTokenizer.from_pretrained(chat_model)
    ids = tok.apply_chat_template(chat_messages(prompt), add_generation_prompt=True, return_dict=False)
    want = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids):].tolist()
    if want and want[-1] in (model.config.eos_token_id, tok.eos_token_id):
        want = want[:-1]
    out = tp_server.client().chat.completions.create(model=SERVED, messages=chat_messages(prompt), temperature=0,
                                                     max_completion_tokens=24)
    assert out.choices[0].message.content == tok.decode(want, skip_special_tokens=True)
    assert out.choices[0].message.content  # a real completion, not an empty one


def loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    ip = getattr(ip, "ipv4_mapped", None) or ip  # ::ffff:7f00:1 is 127.0.0.1
    return ip.is_loopback or ip.is_unspecified


def test_the_ranks_talk_over_loopback_only(tp_server):
    for pid in [tp_server.proc.pid, *children(tp_server.proc.pid)]:
        peers = socket_peers(pid)
        assert peers and all(loopback(a) for a in peers), (pid, peers)


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_sigterm_stops_the_worker_rank_too(tp_server):
    workers = [c for c in children(tp_server.proc.pid) if "phikit.server.tensor_parallel" in
               open(f"/proc/{c}/cmdline").read().replace("\0", " ")]
    assert len(workers) == 1  # rank 1; rank 0 is the server itself
    stop(tp_server.proc)
    assert tp_server.proc.returncode == 0, tp_server.output()
    assert not alive(workers[0])
