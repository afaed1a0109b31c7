"""A property test over the server's own /openapi.json (schemathesis): bodies that follow the schema and bodies
that break it, bounded per operation, never get a 5xx, and the server stays alive. A small context (--ctx-size 64)
keeps each generated request short."""

from __future__ import annotations

import httpx
import pytest

from tests.serve.common import chat_model, start_server, stop  # noqa: F401

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed: pip install -e '.[test]'")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

EXAMPLES = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 10}  # per operation


@pytest.fixture(scope="module")
def server(chat_model, tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("schema"), "--ctx-size", "64", "--parallel", "2", model=chat_model)
    yield srv
    stop(srv.proc)


def test_no_generated_request_gets_a_server_error(server):
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/completions", "/tokenize", "/health"}
    errors: list[str] = []
    for operation in operations:
        if operation.method.upper() not in ("GET", "POST"):
            continue
        for mode, examples in EXAMPLES.items():
            @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case) -> None:
                response = case.call(base_url=server.url, timeout=60)
                if response.status_code >= 500:
                    errors.append(f"{case.method} {case.formatted_path} body={str(case.body)[:300]}: "
                                  f"{response.status_code} {response.text[:300]}")

            try:
                check()
            except Unsatisfiable:  # negative mode on an operation with nothing to break (GET /health)
                assert mode is GenerationMode.NEGATIVE, operation.label
    assert not errors, "\n".join(errors[:10])
    assert server.proc.poll() is None, server.output()
    assert httpx.get(server.url + "/health", timeout=30).json() == {"status": "ok"}
