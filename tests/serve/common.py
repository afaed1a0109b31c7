"""Helpers of the server tests: a real `phikit serve` subprocess on loopback for each test module (`--port 0 --port-file F`), the official
`openai` client (`max_retries=0`, so 429 / 5xx are seen as they are) and httpx for raw SSE and disconnects.

The served model is a temporary copy of the bundled one with Phi-3-mini's chat template written into its
tokenizer_config.json (the bundled model ships none). Test modules import from here, so each skips, with the reason, when the serve
extra or the test clients are absent."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

for _name in ("fastapi", "uvicorn", "pydantic", "prometheus_client"):
    pytest.importorskip(_name, reason=f"the serve extra is not installed ({_name} missing): pip install 'phikit[serve]'")
for _name in ("openai", "httpx"):
    pytest.importorskip(_name, reason=f"{_name} is not installed: pip install -e '.[test]'")

import httpx  # noqa: E402
import openai  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "phikit" / "default_model"
SERVED = "tiny-phi"
# Phi-3-mini-4k-instruct's chat template (tokenizer_config.json of microsoft/Phi-3-mini-4k-instruct)
PHI3_TEMPLATE = ("{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] "
                 "+ '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + "
                 "'<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + "
                 "'<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}"
                 "{{ eos_token }}{% endif %}")
START_TIMEOUT_S = 90.0
LAUNCH = "import sys; from phikit.cli import main; sys.exit(main(sys.argv[1:]))"


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, api_key: str = "unused", **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=120, **kwargs)

    def async_client(self, api_key: str = "unused") -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=120)

    def metrics(self) -> dict[str, float]:
        """`/metrics` as {"name{labels}": value}."""
        text = httpx.get(self.url + "/metrics", timeout=30).text
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def socket_peers(pid: int) -> set[str]:
    """Local and remote IPv4/IPv6 addresses of every TCP socket process `pid` holds (Linux /proc), e.g. 127.0.0.1."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    addresses = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        for line in path.read_text().splitlines()[1:] if path.exists() else []:
            fields = line.split()
            if fields[9] in inodes:
                for endpoint in fields[1:3]:
                    addresses.add(_address(endpoint.split(":")[0]))
    return addresses


def _address(hex_ip: str) -> str:
    raw = bytes.fromhex(hex_ip)
    if len(raw) == 4:
        return ".".join(str(b) for b in raw[::-1])  # /proc prints IPv4 little-endian
    words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]
    return ipaddress.IPv6Address(b"".join(words)).compressed


LOOPBACK = {"127.0.0.1", "0.0.0.0", "::1", "::", "::ffff:127.0.0.1"}


def write_chat_model(folder: Path, template: str = PHI3_TEMPLATE) -> Path:
    """A copy of the bundled model whose tokenizer_config.json carries `template`."""
    shutil.copytree(BUNDLED, folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = template
    config_path.write_text(json.dumps(config, indent=2))
    return folder


def start_server(folder: Path, *flags: str, model: Path | None = None, wait_ready: bool = True) -> Server:
    """Start `phikit serve` on a free loopback port and wait until /health answers 200."""
    folder.mkdir(parents=True, exist_ok=True)
    port_file, log = folder / "port", folder / "server.log"
    cmd = [sys.executable, "-c", LAUNCH, "serve", "--port", "0", "--port-file", str(port_file),
           "--served-model-name", SERVED, *flags]
    if model is not None:
        cmd += ["--model", str(model)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(log, "wb") as sink:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            pytest.fail(f"phikit serve did not start (exit {proc.returncode}):\n{log.read_text(errors='replace')}")
        time.sleep(0.05)
    server = Server(proc, int(port_file.read_text()), log)
    while wait_ready:
        try:
            if httpx.get(server.url + "/health", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            pytest.fail(f"phikit serve never became healthy (exit {proc.returncode}):\n{server.output()}")
        time.sleep(0.05)
    return server


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 15 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="session")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_chat_model(tmp_path_factory.mktemp("serve-model") / "model")


def chat_messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]
