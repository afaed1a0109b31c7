"""The server's limits and flags: `--api-key` (401 on /v1/* without the Bearer key, /health open), a full queue
(`--parallel 1 --max-queue 1` flooded: 429 `rate_limit_exceeded` with Retry-After), `--max-body-mb` (413), and
`--chat-template FILE` overriding the checkpoint's template (its own errors are 400 param "messages")."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from tests.serve.common import SERVED, chat_messages, chat_model, start_server, stop  # noqa: F401

KEY = "sk-test-key"
# renders like Phi-3's but refuses system messages, as some checkpoints' templates do
STRICT_TEMPLATE = ("{% for message in messages %}{% if message['role'] == 'system' %}"
                   "{{ raise_exception('System role not supported') }}{% endif %}"
                   "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}{% endfor %}"
                   "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")


@pytest.fixture(scope="module")
def server(chat_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("limits")
    template = folder / "strict.jinja"
    template.write_text(STRICT_TEMPLATE)
    srv = start_server(folder, "--api-key", KEY, "--parallel", "1", "--max-queue", "1", "--max-body-mb", "1",
                       "--chat-template", str(template), model=chat_model)
    yield srv
    stop(srv.proc)


def test_wrong_or_missing_key_is_401_and_health_needs_none(server):
    with pytest.raises(openai.AuthenticationError) as err:
        server.client(api_key="wrong").models.list()
    assert err.value.code == "invalid_api_key" and "--api-key" in err.value.message
    assert httpx.get(server.url + "/v1/models", timeout=30).status_code == 401
    assert httpx.get(server.url + "/health", timeout=30).status_code == 200
    assert [m.id for m in server.client(api_key=KEY).models.list().data] == [SERVED]


def test_a_flooded_queue_answers_429_with_retry_after(server):
    async def flood():
        async with server.async_client(api_key=KEY) as client:
            async def one(i):
                try:
                    await client.completions.create(model=SERVED, prompt=f"def f{i}(x):", max_tokens=48,
                                                    temperature=0)
                    return None
                except openai.RateLimitError as e:
                    return e
            return await asyncio.gather(*(one(i) for i in range(8)))

    results = asyncio.run(flood())
    refused = [e for e in results if e is not None]
    assert refused, "8 concurrent requests on 1 slot and a queue of 1: some must be refused"
    assert len(refused) < len(results), "the running and the queued request must be served"
    for e in refused:
        assert e.status_code == 429 and e.code == "rate_limit_exceeded"
        assert int(e.response.headers["retry-after"]) >= 1


def test_a_body_over_max_body_mb_is_413(server):
    body = {"model": SERVED, "prompt": "x" * (2 * 2**20), "max_tokens": 1}
    response = httpx.post(server.url + "/v1/completions", json=body, headers={"authorization": f"Bearer {KEY}"},
                          timeout=60)
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "request_too_large" and "--max-body-mb" in error["message"]


def test_chat_template_file_overrides_the_checkpoints(server):
    headers = {"authorization": f"Bearer {KEY}"}
    got = httpx.post(server.url + "/tokenize", json={"messages": chat_messages("hi")}, headers=headers,
                     timeout=30).json()
    assert got["prompt"] == "<|user|>\nhi<|end|>\n<|assistant|>\n"
    with pytest.raises(openai.BadRequestError) as err:
        server.client(api_key=KEY).chat.completions.create(
            model=SERVED, messages=[{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}],
            max_tokens=2)
    assert err.value.param == "messages" and "System role not supported" in err.value.message
    ok = server.client(api_key=KEY).chat.completions.create(model=SERVED, messages=chat_messages("hi"), max_tokens=2)
    assert ok.choices[0].finish_reason in ("stop", "length")
