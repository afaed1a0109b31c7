"""What the server generates, checked against the model itself: greedy chat and completions equal
`model.generate(do_sample=False)` token for token, concurrent greedy requests equal their solo outputs, streams
concatenate to the non-streamed text, sampling is reproducible by seed, stop / max_tokens / logit_bias /
frequency_penalty act, logprobs equal log_softmax of the model's logits, and /tokenize, /detokenize, /v1/models.

One fp32 server for the module (`--dtype float32`): the test's own fp32 model is the oracle."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import torch

from tests.serve.common import SERVED, chat_messages, chat_model, start_server, stop  # noqa: F401

PROMPTS = ["def fibonacci(n):", "import os\n", "class Stack:\n    def push(self, x):"]
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def server(chat_model, tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("outputs"), "--dtype", "float32", "--parallel", "4", model=chat_model)
    yield srv
    stop(srv.proc)


@pytest.fixture(scope="module")
def model(chat_model):
    from phikit import AutoModelForCausalLM, AutoTokenizer

    m = AutoModelForCausalLM.from_pretrained(chat_model, dtype="float32")
    m.eval()
    return m, AutoTokenizer.from_pretrained(chat_model)


def generate_ids(model, ids: list[int], max_new_tokens: int = MAX_TOKENS) -> list[int]:
    m, _ = model
    out = m.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=max_new_tokens)
    return out[0, len(ids):].tolist()


def token_ids(logprobs_content) -> list[int]:
    """Ids of a choice's tokens, sent as "token_id:<id>" (return_tokens_as_token_ids)."""
    return [int(item.token.split(":")[1]) for item in logprobs_content]


def tokenize(server, **body) -> dict:
    response = httpx.post(server.url + "/tokenize", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_models_lists_the_served_name_with_max_model_len(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == [SERVED]
    card = models.data[0].model_dump()
    assert card["owned_by"] == "phikit" and card["max_model_len"] == 512 and card["object"] == "model"
    assert server.client().models.retrieve(SERVED).id == SERVED
    with pytest.raises(Exception) as err:
        server.client().models.retrieve("other")
    assert getattr(err.value, "status_code", None) == 404


def test_tokenize_messages_equals_apply_chat_template(server, model):
    _, tok = model
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "def f(x):"}]
    got = tokenize(server, messages=messages)
    want = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    assert got["tokens"] == want and got["count"] == len(want) and got["max_model_len"] == 512
    assert got["prompt"] == tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    plain = tokenize(server, prompt="def f(x):")
    assert plain["tokens"] == tok("def f(x):")["input_ids"] and plain["prompt"] == "def f(x):"
    back = httpx.post(server.url + "/detokenize", json={"tokens": plain["tokens"]}, timeout=30).json()
    assert back == {"prompt": "def f(x):"}


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_completion_equals_generate(server, model, prompt):
    _, tok = model
    out = server.client().completions.create(model=SERVED, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0,
                                             logprobs=0, extra_body={"return_tokens_as_token_ids": True})
    choice = out.choices[0]
    want = generate_ids(model, tok(prompt)["input_ids"])
    got = [int(t.split(":")[1]) for t in choice.logprobs.tokens]
    assert got == want
    assert choice.text == tok.decode(want, skip_special_tokens=True)
    assert choice.finish_reason == ("length" if len(want) == MAX_TOKENS else "stop")
    assert out.usage.completion_tokens == len(want) and out.usage.prompt_tokens == len(tok(prompt)["input_ids"])


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_chat_equals_generate(server, model, prompt):
    _, tok = model
    out = server.client().chat.completions.create(model=SERVED, messages=chat_messages(prompt), temperature=0,
                                                  max_completion_tokens=MAX_TOKENS, logprobs=True,
                                                  extra_body={"return_tokens_as_token_ids": True})
    ids = tok.apply_chat_template(chat_messages(prompt), add_generation_prompt=True, return_dict=False)
    want = generate_ids(model, ids)
    choice = out.choices[0]
    assert token_ids(choice.logprobs.content) == want
    assert choice.message.content == tok.decode(want, skip_special_tokens=True)
    assert choice.message.role == "assistant"
    assert out.usage.prompt_tokens == len(ids)


def test_concurrent_greedy_requests_equal_their_solo_outputs(server):
    prompts = [f"def f{i}(x):\n    return x + {i}" for i in range(8)]
    client = server.client()
    solo = [client.completions.create(model=SERVED, prompt=p, max_tokens=24, temperature=0).choices[0].text
            for p in prompts]
    before = server.metrics()

    peak_running = 0

    async def watch(done: asyncio.Event) -> None:
        nonlocal peak_running
        async with httpx.AsyncClient(timeout=30) as http:
            while not done.is_set():
                for line in (await http.get(server.url + "/metrics")).text.splitlines():
                    if line.startswith("phikit:num_requests_running "):
                        peak_running = max(peak_running, float(line.split()[1]))
                await asyncio.sleep(0.02)

    async def together():
        done = asyncio.Event()
        watcher = asyncio.create_task(watch(done))
        async with server.async_client() as aclient:
            outs = await asyncio.gather(*(aclient.completions.create(model=SERVED, prompt=p, max_tokens=24,
                                                                     temperature=0) for p in prompts))
        done.set()
        await watcher
        return [o.choices[0].text for o in outs]

    assert asyncio.run(together()) == solo
    after = server.metrics()
    steps = after["phikit:iteration_decode_rows_count"] - before.get("phikit:iteration_decode_rows_count", 0)
    one_row = (after['phikit:iteration_decode_rows_bucket{le="1.0"}']
               - before.get('phikit:iteration_decode_rows_bucket{le="1.0"}', 0))
    assert steps > one_row or peak_running >= 2, "the 8 requests never ran together (no decode step with 2 rows, " \
        f"at most {peak_running} running)"


def test_stream_deltas_concatenate_to_the_text_with_usage_last(server):
    client = server.client()
    kwargs = dict(model=SERVED, messages=chat_messages("def fibonacci(n):"), temperature=0, max_tokens=MAX_TOKENS)
    full = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump()["completion_tokens"] == \
        full.usage.completion_tokens
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert text == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks[:-1]][-1] == full.choices[0].finish_reason
    comp = list(client.completions.create(model=SERVED, prompt="import os\n", temperature=0, max_tokens=MAX_TOKENS,
                                          stream=True))
    solid = client.completions.create(model=SERVED, prompt="import os\n", temperature=0, max_tokens=MAX_TOKENS)
    assert "".join(c.choices[0].text for c in comp) == solid.choices[0].text


def test_raw_sse_frames_end_with_done(server):
    body = {"model": SERVED, "prompt": "def f(x):", "max_tokens": 8, "temperature": 0, "stream": True, "n": 2}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    frames = raw.split("\n\n")
    assert frames[-1] == "" and frames[-2] == "data: [DONE]"
    events = [json.loads(f[len("data: "):]) for f in frames[:-2]]
    assert all(f.startswith("data: ") for f in frames[:-1])
    assert {e["choices"][0]["index"] for e in events} == {0, 1}
    finished = [e["choices"][0]["index"] for e in events if e["choices"][0]["finish_reason"]]
    assert sorted(finished) == [0, 1]


def test_n3_with_a_seed_is_reproducible_and_another_seed_differs(server):
    client = server.client()

    def sample(seed):
        out = client.chat.completions.create(model=SERVED, messages=chat_messages("def f(x):"), n=3, temperature=1,
                                             seed=seed, max_tokens=MAX_TOKENS)
        assert [c.index for c in out.choices] == [0, 1, 2]
        return [c.message.content for c in out.choices]

    first = sample(7)
    assert sample(7) == first
    assert sample(8) != first


def test_stop_string_ends_with_stop_and_is_excluded(server):
    client = server.client()
    free = client.completions.create(model=SERVED, prompt="def fibonacci(n):", temperature=0, max_tokens=MAX_TOKENS)
    text = free.choices[0].text
    stop_word = text.strip().split()[1] if len(text.strip().split()) > 1 else text.strip()[:2]
    out = client.completions.create(model=SERVED, prompt="def fibonacci(n):", temperature=0, max_tokens=MAX_TOKENS,
                                    stop=[stop_word])
    assert out.choices[0].finish_reason == "stop"
    assert stop_word not in out.choices[0].text
    assert out.choices[0].text == text[:text.index(stop_word)]


def test_max_tokens_5_ends_with_length_and_5_tokens(server):
    out = server.client().completions.create(model=SERVED, prompt="def f(x):", temperature=0, max_tokens=5)
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 5


def test_chat_logprobs_equal_log_softmax_of_the_logits(server, model):
    m, tok = model
    out = server.client().chat.completions.create(
        model=SERVED, messages=chat_messages("def f(x):"), temperature=0, max_tokens=8, logprobs=True,
        top_logprobs=3, extra_body={"return_tokens_as_token_ids": True})
    content = out.choices[0].logprobs.content
    generated = token_ids(content)
    ids = tok.apply_chat_template(chat_messages("def f(x):"), add_generation_prompt=True, return_dict=False)
    with torch.no_grad():
        logits = m(torch.tensor([ids + generated])).logits[0, len(ids) - 1:-1].float()
    want = torch.log_softmax(logits, dim=-1)
    for k, item in enumerate(content):
        assert item.logprob == pytest.approx(want[k, generated[k]].item(), abs=1e-4)
        top_ids = [int(t.token.split(":")[1]) for t in item.top_logprobs]
        assert len(top_ids) == 3 and top_ids[0] == generated[k]
        for t, i in zip(item.top_logprobs, top_ids):
            assert t.logprob == pytest.approx(want[k, i].item(), abs=1e-4)
    plain = server.client().chat.completions.create(model=SERVED, messages=chat_messages("def f(x):"), temperature=0,
                                                    max_tokens=8, logprobs=True, top_logprobs=2)
    first = plain.choices[0].logprobs.content[0]
    assert first.token == tok.decode([generated[0]]) and bytes(first.bytes).decode("utf-8", "replace")


def test_completion_logprobs_shape(server):
    out = server.client().completions.create(model=SERVED, prompt="def f(x):", temperature=0, max_tokens=6,
                                             logprobs=2)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert "".join(lp.tokens) == out.choices[0].text
    assert lp.text_offset[0] == 0 and all(len(t) >= 2 for t in lp.top_logprobs)


def test_logit_bias_100_makes_every_token_that_token(server, model):
    _, tok = model
    target = tok("return")["input_ids"][0]
    out = server.client().completions.create(model=SERVED, prompt="def f(x):", temperature=0, max_tokens=6,
                                             logit_bias={str(target): 100}, logprobs=0,
                                             extra_body={"return_tokens_as_token_ids": True})
    assert [int(t.split(":")[1]) for t in out.choices[0].logprobs.tokens] == [target] * 6


def test_frequency_penalty_repeats_less(server):
    def distinct(penalty: float) -> int:
        out = server.client().completions.create(model=SERVED, prompt="import os\n", temperature=0, max_tokens=32,
                                                 frequency_penalty=penalty, logprobs=0,
                                                 extra_body={"return_tokens_as_token_ids": True})
        return len(set(out.choices[0].logprobs.tokens))

    assert distinct(2.0) > distinct(0.0)


def test_several_prompts_and_token_id_prompts(server, model):
    _, tok = model
    client = server.client()
    texts = client.completions.create(model=SERVED, prompt=PROMPTS[:2], temperature=0, max_tokens=6, n=2)
    assert [c.index for c in texts.choices] == [0, 1, 2, 3]
    ids = [tok(p)["input_ids"] for p in PROMPTS[:2]]
    by_ids = client.completions.create(model=SERVED, prompt=ids, temperature=0, max_tokens=6)
    one = client.completions.create(model=SERVED, prompt=ids[1], temperature=0, max_tokens=6)
    assert [c.text for c in by_ids.choices] == [texts.choices[0].text, texts.choices[2].text]
    assert one.choices[0].text == texts.choices[2].text
    echo = client.completions.create(model=SERVED, prompt=PROMPTS[0], temperature=0, max_tokens=6, echo=True)
    assert echo.choices[0].text == PROMPTS[0] + texts.choices[0].text
