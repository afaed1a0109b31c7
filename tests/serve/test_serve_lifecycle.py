"""The server's life: /health answers 503 "loading" before the model is attached (the app without an engine, in
process), and SIGTERM drains a real server: /health and new requests 503 while the running request finishes, then
exit status 0."""

from __future__ import annotations

import json
import signal
import threading

import httpx
import pytest

from tests.serve.common import SERVED, start_server, stop


def test_health_is_503_loading_until_the_engine_is_attached():
    from fastapi.testclient import TestClient

    from phikit.server.app import create_app

    client = TestClient(create_app(None, None, SERVED))
    health = client.get("/health")
    assert health.status_code == 503 and health.json() == {"status": "loading"}
    models = client.get("/v1/models")
    assert models.status_code == 503 and models.json()["error"]["code"] == "model_loading"
    assert "retry-after" in models.headers
    assert client.post("/v1/completions", json={"prompt": "x"}).status_code == 503
    assert client.get("/metrics").status_code == 200


def test_sigterm_drains_then_exits_0(tmp_path):
    server = start_server(tmp_path / "drain", "--drain-timeout-s", "60")
    try:
        body = {"model": SERVED, "prompt": "def f(x):", "max_tokens": 300, "ignore_eos": True, "temperature": 0,
                "stream": True}
        started, events = threading.Event(), []

        def stream() -> None:
            with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=120) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[len("data: "):])
                        started.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert started.wait(60), server.output()
        server.proc.send_signal(signal.SIGTERM)
        health = httpx.get(server.url + "/health", timeout=30)
        assert health.status_code == 503 and health.json() == {"status": "draining"}
        refused = httpx.post(server.url + "/v1/completions", json={"model": SERVED, "prompt": "x", "max_tokens": 2},
                             timeout=30)
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "server_error"
        reader.join(60)
        assert events[-1] == "[DONE]", server.output()
        last = json.loads(events[-2])
        assert last["choices"][0]["finish_reason"] == "length"
        assert server.proc.wait(60) == 0, server.output()
    finally:
        stop(server.proc)
