"""phikit on Ray Serve (phikit/server/ray_serve.py): a local Ray instance (2 CPUs, no dashboard, no usage stats),
Serve's HTTP proxy on 127.0.0.1 and a free port, the deployment over the bundled tiny model (with Phi-3-mini's
chat template, as the other server tests), and requests through the proxy with the official `openai` client. Greedy
outputs equal `model.generate(do_sample=False)`, as `phikit serve`'s do (test_serve_outputs.py).

One Ray instance for the module, two replicas; starting them is the slow part (~25 s on 2 cores)."""

from __future__ import annotations

import shutil
import socket
import tempfile
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch

from tests.serve.common import SERVED, chat_messages, write_chat_model

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'phikit[ray]' (or -e '.[test]')")
pytest.importorskip("ray.serve", reason="Ray is installed without Serve: pip install 'phikit[ray]'")

import openai  # noqa: E402
from ray import serve  # noqa: E402

from phikit.server import ray_serve  # noqa: E402

MAX_TOKENS = 12
# Ray must not reach the network: no usage stats (Serve's proxy listens on 127.0.0.1; Ray's own services listen
# where Ray puts them); a slow 2-core runner gets time for the proxy's start-up check
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_USAGE_STATS_PROMPT_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
           "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """The bundled model with Phi-3-mini's chat template (as the other server tests)."""
    return write_chat_model(tmp_path_factory.mktemp("ray-model") / "model")


@pytest.fixture(scope="module")
def ray_url(chat_model):
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    port = free_port()
    with pytest.MonkeyPatch.context() as env:
        for key, value in RAY_ENV.items():
            env.setenv(key, value)
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", _temp_dir=temp,
                 log_to_driver=False, configure_logging=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            # two replicas of one CPU each on this one node (by default a replica takes a whole node)
            app = ray_serve.build_app(str(chat_model), served_model_name=SERVED, dtype="float32", parallel=2,
                                      num_replicas=2, num_cpus=1, max_replicas_per_node=None)
            serve.run(app, name="phikit", route_prefix="/")
            yield f"http://127.0.0.1:{port}"
        finally:
            serve.shutdown()
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def model(chat_model):
    from phikit import AutoModelForCausalLM, AutoTokenizer

    m = AutoModelForCausalLM.from_pretrained(chat_model, dtype="float32")
    m.eval()
    return m, AutoTokenizer.from_pretrained(chat_model)


def greedy_text(model, ids: list[int]) -> tuple[str, int]:
    m, tok = model
    out = m.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=MAX_TOKENS)[0, len(ids):].tolist()
    return tok.decode(out, skip_special_tokens=True), len(out)


def test_two_replicas_answer_chat_and_completion_as_generate(ray_url, model):
    """A chat completion and a completion at once (Ray's router sends the second to the idle replica), then a
    streamed completion."""
    _, tok = model
    assert serve.status().applications["phikit"].deployments["phikit"].replica_states == {"RUNNING": 2}
    client = openai.OpenAI(base_url=ray_url + "/v1", api_key="unused", max_retries=0, timeout=120)
    messages = chat_messages("def fibonacci(n):")
    with ThreadPoolExecutor(2) as pool:
        chat = pool.submit(client.chat.completions.create, model=SERVED, messages=messages, temperature=0,
                           max_tokens=MAX_TOKENS)
        completion = pool.submit(client.completions.create, model=SERVED, prompt="import os\n", temperature=0,
                                 max_tokens=MAX_TOKENS)
        chat, completion = chat.result(), completion.result()
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    text, n = greedy_text(model, ids)
    assert chat.choices[0].message.content == text
    assert chat.usage.prompt_tokens == len(ids) and chat.usage.completion_tokens == n
    text, n = greedy_text(model, tok("import os\n")["input_ids"])
    assert completion.choices[0].text == text and completion.usage.completion_tokens == n
    # server-sent events come through Ray's proxy as they do from `phikit serve`
    stream = client.completions.create(model=SERVED, prompt="import os\n", temperature=0, max_tokens=MAX_TOKENS,
                                       stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream) == text
    assert [m.id for m in client.models.list().data] == [SERVED]


def test_check_health_fails_unless_the_engine_thread_runs():
    """A real engine on the bundled model: not started, running, shut down."""
    from phikit import AutoModelForCausalLM
    from phikit.bundled import default_model_path
    from phikit.engine import Engine

    check_health = ray_serve.PhikitDeployment.func_or_class.check_health
    replica = SimpleNamespace(engine=Engine(AutoModelForCausalLM.from_pretrained(default_model_path()), parallel=1))
    with pytest.raises(RuntimeError, match="engine's thread is not running"):
        check_health(replica)  # never started
    replica.engine.start()
    check_health(replica)
    replica.engine.shutdown()
    with pytest.raises(RuntimeError, match="engine's thread is not running"):
        check_health(replica)


def test_app_builder_takes_serve_run_strings():
    app = ray_serve.app_builder({"model": "some/folder", "num_replicas": "3", "parallel": "2", "deterministic": "false",
                                 "num_cpus": "4"})
    deployment = app._bound_deployment
    assert deployment.num_replicas == 3 and deployment.ray_actor_options["num_cpus"] == 4.0
    assert deployment.max_ongoing_requests == 4
    assert app._bound_deployment.init_args[2] == {"parallel": 2, "deterministic": False}
    scaled = ray_serve.app_builder({"autoscaling_config": '{"min_replicas": 1, "max_replicas": 4}'})
    assert scaled._bound_deployment._deployment_config.autoscaling_config.max_replicas == 4
    with pytest.raises(TypeError, match="unknown option"):
        ray_serve.build_app(parallell=2)
    with pytest.raises(ValueError, match="parallel="):
        ray_serve.app_builder({"parallel": "four"})
