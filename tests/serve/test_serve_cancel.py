"""Clients that leave: a stream closed after 2 chunks and a non-streaming request whose client gave up are aborted
in the engine (running back to 0, `requests_aborted_total` up, within 2 s), and a bounded flood of streams, a third
of them leaving early, leaves every surviving answer equal to its solo output and the server healthy, its sockets
on loopback only."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from tests.serve.common import LOOPBACK, SERVED, socket_peers, start_server, stop

LONG = 400  # tokens: the bundled model decodes them in ~0.4 s alone, ~1.5 s as 4 choices (n=4) on this 2-core host


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("cancel"), "--parallel", "4", "--max-queue", "64")  # bundled model
    yield srv
    stop(srv.proc)


def wait_for_abort(server, aborted_before: float, within_s: float = 2.0) -> dict:
    deadline = time.monotonic() + within_s
    while True:
        m = server.metrics()
        if m["phikit:num_requests_running"] == 0 and m["phikit:requests_aborted_total"] > aborted_before:
            return m
        assert time.monotonic() < deadline, f"not aborted within {within_s} s: running " \
            f"{m['phikit:num_requests_running']}, aborted {m['phikit:requests_aborted_total']}"
        time.sleep(0.05)


def test_a_stream_closed_after_2_chunks_is_aborted_within_2_s(server):
    before = server.metrics()["phikit:requests_aborted_total"]
    body = {"model": SERVED, "prompt": "def f(x):", "max_tokens": LONG, "temperature": 0, "ignore_eos": True,
            "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as response:
        seen = 0
        for line in response.iter_lines():
            if line.startswith("data: "):
                seen += 1
                if seen == 2:
                    break
    wait_for_abort(server, before)


def test_a_non_streaming_client_that_gives_up_is_aborted(server):
    """The client gives up after 0.3 s; the server polls for it every 0.1 s (`runner.DISCONNECT_POLL_S`). Four
    choices keep the request running ~1.5 s: as one choice it could finish (~0.4 s) before a loaded CI machine let the
    poll see the disconnect, and a finished request is not an aborted one (a flake seen in the eighteenth session)."""
    before = server.metrics()["phikit:requests_aborted_total"]
    body = {"model": SERVED, "prompt": "def f(x):", "max_tokens": LONG, "ignore_eos": True, "n": 4}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.url + "/v1/completions", json=body, timeout=0.3)
    wait_for_abort(server, before, within_s=3.0)


async def _stream_text(client: httpx.AsyncClient, url: str, body: dict, leave_after: int | None) -> str | None:
    """The streamed text, or None for a client that leaves after `leave_after` events."""
    text, events = "", 0
    async with client.stream("POST", url, json=body) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                return text
            events += 1
            if leave_after is not None and events >= leave_after:
                return None
            text += json.loads(line[len("data: "):])["choices"][0]["text"]
    raise AssertionError("the stream ended without data: [DONE]")


def test_a_bounded_flood_with_leavers_keeps_every_survivor_correct(server):
    prompts = ["def fibonacci(n):", "import os\n", "class Stack:", "for i in range(10):"]
    url = server.url + "/v1/completions"

    def body(p: str) -> dict:
        return {"model": SERVED, "prompt": p, "max_tokens": 16, "temperature": 0, "stream": True}

    async def flood():
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            solo = {p: await _stream_text(client, url, body(p), None) for p in prompts}
            jobs = [(prompts[i % 4], 2 if i % 3 == 0 else None) for i in range(48)]
            results = await asyncio.gather(*(_stream_text(client, url, body(p), leave) for p, leave in jobs))
        return solo, jobs, results

    seen: set[str] = set()

    async def watch(done: asyncio.Event) -> None:  # the server's sockets, sampled while the flood runs
        while not done.is_set():
            seen.update(socket_peers(server.proc.pid))
            await asyncio.sleep(0.05)

    async def flood_and_watch():
        done = asyncio.Event()
        watcher = asyncio.create_task(watch(done))
        try:
            return await flood()
        finally:
            done.set()
            await watcher

    solo, jobs, results = asyncio.run(flood_and_watch())
    assert seen and seen <= LOOPBACK, f"the server touched addresses beyond loopback: {seen - LOOPBACK}"
    for (prompt, leave), got in zip(jobs, results):
        if leave is None:
            assert got == solo[prompt]
    deadline = time.monotonic() + 5
    while server.metrics()["phikit:num_requests_running"] != 0:
        assert time.monotonic() < deadline, "requests still running after the flood"
        time.sleep(0.05)
    assert httpx.get(server.url + "/health", timeout=30).json() == {"status": "ok"}
    m = server.metrics()
    assert m["phikit:num_requests_waiting"] == 0
    assert m['phikit:request_success_total{finished_reason="length"}'] >= 32
