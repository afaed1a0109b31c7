"""Serving benchmark: `phikit serve` against llama.cpp's `llama-server` (and, when asked, `transformers serve`), same
random weights, same requests, concurrent streaming clients.

    .venv/bin/python benchmarks/serve.py [--shape phi-1.5|tiny] [--formats bf16,int4] [--streams 1,4,8,16]
        [--rounds 2] [--max-tokens 32] [--prompt-lens 16,64,128,256] [--requests-per-client auto]
        [--llama-server PATH] [--engines phikit,llama-server[,transformers]] [--parallel max|streams|N]
        [--threads 2] [--phikit-args "..."] [--llama-args "..."] [--out FILE]

What it does:
- the checkpoint: the random-weights folder of the shape that `phikit bench` writes and reuses
  (`~/.cache/phikit/bench/<shape>`, `phikit.bench.engines.write_checkpoint`) and its GGUF exports beside it
  (`<shape>-bf16.gguf`, `<shape>-q4_0.gguf`, `phikit.bench.driver.export_for_llama_cpp`: phikit's GGUF writer with the
  fixtures' phi-2 / phi-3-mini vocabulary). `--shape tiny` serves the bundled model (`phikit/default_model`, 4.5M
  parameters, vocab 4096) with its own tokenizer: a quick run of the whole pipeline. phikit serve reads its tokenizer
  from the model folder, so it serves `<shape>-serve/`: links to the checkpoint's files plus the tokenizer files.
- the servers: for each format (bf16: `phikit serve --weights plain` against the bf16 GGUF; int4: `--weights int4`,
  group 128, against q4_0), both servers are started with the same `--parallel` (default `--parallel max`: the
  largest stream count, one pair of servers for every stream count of the format; `--parallel streams` restarts
  both for each stream count with slots = streams), one after the other, waited for on `/health`, warmed up with one
  short request each, measured, then stopped. llama-server's `-c` is the slots times the context of a slot (its
  slots split one context); phikit's `--ctx-size` is per slot.
- the load of one round: C concurrent clients (asyncio + httpx, raw SSE on `/v1/completions`, `stream: true`), each
  sending K requests one after the other (K = `--requests-per-client`; auto: enough for 4 requests in all). Request
  g of a round has the prompt length `prompt_lens[g % len]`, as token ids (the same ids to every server, so the
  lengths are exact; seeded random ids of the vocabulary's ordinary tokens, distinct per request and round so no
  server reuses a cached prefix), `max_tokens` fixed, `temperature: 0.8`, `top_p: 1`, `seed` = the request's number,
  `ignore_eos: true` (both servers honour it: every request generates exactly max_tokens), and
  `stream_options.include_usage`. llama-server also gets `top_k: 0, min_p: 0` so that its sampler is plain
  temperature sampling over the whole vocabulary, as phikit's.
- per request: TTFT (send -> first SSE chunk with text), the gaps between chunks with text (ITL; a chunk may hold
  more than one token where a server holds back an incomplete UTF-8 character), end to end. Per round: generated
  tokens (the final `usage.completion_tokens` where given, else the chunks with text) summed over the load / the
  load's wall time; TTFT and ITL p50 / p99 over all requests / gaps of the round (with a handful of requests, p99
  is close to their max).
- rounds alternate who goes first (ABAB: phikit first in even rounds); the table gives medians over rounds and the
  ratio of the medians; the JSON (--out) keeps every request. Also recorded: the CPU flags, the command line, the
  CPU seconds other processes of the machine took during each load (this machine is shared), each server's peak RSS.

The default sweep (phi-1.5, bf16 and int4, streams 1,4,8,16, 2 rounds) took 25 minutes on a 2-core AVX2 machine.
`--engines ...,transformers` adds `transformers serve --continuous-batching` (bf16 only). Its /v1/completions takes
text prompts only and rejects `ignore_eos`, so it gets the prompt ids decoded to text (it retokenizes them: the
prompt lengths differ a little, see each request's `prompt_tokens`) and may stop at EOS (counted as `short`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this tree's phikit, as the servers it starts

import httpx  # noqa: E402

from phikit.bench.driver import GGUF_TYPES, default_folder, export_for_llama_cpp  # noqa: E402
from phikit.bench.engines import SHAPES, write_checkpoint  # noqa: E402

FIXTURES = os.path.join(ROOT, "..", "shared", "fixtures", "tokenizers")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "added_tokens.json", "chat_template.jinja", "generation_config.json")
PHIKIT_WEIGHTS = {"bf16": "plain", "int4": "int4", "int8": "int8"}
SERVED_NAME = "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
DECODE: Any = None  # ids -> text, for a server that takes only text prompts (set in main)


# ---------------------------------------------------------------- the checkpoint, its GGUF files, the served folder
def tokenizer_dir_for(shape: str, folder: str) -> str:
    if shape == "tiny":
        return folder
    name = "phi-2" if SHAPES[shape]["model_type"] == "phi" else "phi-3-mini"
    return os.environ.get("PHIKIT_BENCH_TOKENIZER", os.path.join(FIXTURES, name))


def prepare_checkpoint(shape: str) -> str:
    """The random checkpoint of `shape` as `phikit bench` writes it (reused), or for `tiny` a folder of links to the
    bundled model."""
    folder = default_folder(shape)
    if shape == "tiny":
        bundled = os.path.join(ROOT, "phikit", "default_model")
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(bundled):
            link = os.path.join(folder, name)
            if not os.path.lexists(link):
                os.symlink(os.path.join(bundled, name), link)
        return folder
    print(f"writing/reusing random {shape} weights at {folder} ...", file=sys.stderr, flush=True)
    return write_checkpoint(shape, folder)


def export_gguf_files(shape: str, folder: str, outtypes: tuple[str, ...]) -> dict[str, str]:
    """`<folder>-<type>.gguf` for each type, through `phikit.bench.driver.export_for_llama_cpp`. That function writes
    nothing unless llama-cpp-python is installed (the in-process llama.cpp runner of `phikit bench` needs it; the
    server does not): without it, the same files are written here the same way (phikit's GGUF writer, the same
    tokenizer, the same names), so both benchmarks share them."""
    import importlib.util

    os.environ.setdefault("PHIKIT_BENCH_TOKENIZER", tokenizer_dir_for(shape, folder))
    if importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("gguf") is not None:
        files = export_for_llama_cpp(folder, outtypes)
        if len(files) == len(outtypes):
            return files
    import torch

    from phikit.gguf_export import export_gguf
    from phikit.hf.auto import AutoModelForCausalLM
    from phikit.tokenizer.tokenization import AutoTokenizer

    files, model = {}, None
    for outtype in outtypes:
        path = f"{folder.rstrip(os.sep)}-{outtype}.gguf"
        if not os.path.isfile(path):
            print(f"exporting {path} ...", file=sys.stderr, flush=True)
            model = model or AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
            export_gguf(model, AutoTokenizer.from_pretrained(os.environ["PHIKIT_BENCH_TOKENIZER"]), path,
                        dtype=outtype)
        files[outtype] = path
    return files


def serve_folder(shape: str, folder: str) -> str:
    """What phikit serve loads: the checkpoint plus a tokenizer (`<folder>-serve/`, links only)."""
    if shape == "tiny":
        return folder
    out = folder.rstrip(os.sep) + "-serve"
    os.makedirs(out, exist_ok=True)
    tok = tokenizer_dir_for(shape, folder)
    for src_dir, names in ((folder, os.listdir(folder)), (tok, TOKENIZER_FILES)):
        for name in names:
            src, link = os.path.abspath(os.path.join(src_dir, name)), os.path.join(out, name)
            if os.path.isfile(src) and not os.path.lexists(link):
                os.symlink(src, link)
    return out


def prompt_vocabulary(tokenizer_dir: str, vocab_size: int) -> range:
    """Ids the prompts draw from: the ordinary tokens past the byte tokens (no added or special token)."""
    from phikit.tokenizer.tokenization import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    added = len(getattr(tok, "added_tokens_decoder", None) or {})
    return range(300, min(vocab_size, len(tok) - added))


def prompt_ids(vocab: range, length: int, round_: int, index: int, streams: int = 0) -> list[int]:
    rng = random.Random(f"serve-bench/{streams}/{round_}/{index}")
    return [rng.randrange(vocab.start, vocab.stop) for _ in range(length)]


# ---------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15)
    except OSError:
        return 0.0


def machine_busy_seconds() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK_TCK  # user nice system irq softirq steal


def peak_rss_gb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) * 1024 / 1e9 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


class Server:
    """One server process: started, waited for on /health, stopped (SIGTERM, then SIGKILL)."""

    def __init__(self, engine: str, command: list[str], port: int | None, log_path: str, env: dict[str, str],
                 port_file: str | None = None, model_field: str = SERVED_NAME, cwd: str = ROOT) -> None:
        self.engine, self.command, self.port, self.log_path = engine, command, port, log_path
        self.port_file, self.model_field = port_file, model_field
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                     start_new_session=True)
        self.load_s: float | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 2000) -> str:
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read()[-n:].decode(errors="replace")

    def wait_ready(self, timeout: float) -> None:
        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.engine} exited with {self.proc.returncode} while starting:\n"
                                   f"{self.log_tail()}")
            if self.port is None and self.port_file and os.path.isfile(self.port_file):
                text = open(self.port_file).read().strip()
                self.port = int(text) if text.isdigit() else None
            if self.port is not None:
                try:
                    if httpx.get(self.base + "/health", timeout=2).status_code == 200:
                        self.load_s = time.perf_counter() - start
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.engine} not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def start_phikit(folder: str, fmt: str, parallel: int, ctx: int, threads: int, logdir: str,
                 extra: list[str], root: str = ROOT) -> Server:
    port_file = os.path.join(logdir, f"phikit-{fmt}-{parallel}.port")
    if os.path.exists(port_file):
        os.remove(port_file)
    cmd = [sys.executable, "-m", "phikit.cli", "serve", "--model", folder, "--served-model-name", SERVED_NAME,
           "--host", "127.0.0.1", "--port", "0", "--port-file", port_file, "--parallel", str(parallel),
           "--ctx-size", str(ctx), "--weights", PHIKIT_WEIGHTS[fmt], "--dtype", "bfloat16", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": root}
    return Server("phikit", cmd, None, os.path.join(logdir, f"phikit-{fmt}-{parallel}.log"), env, port_file,
                  cwd=root)


def start_llama(binary: str, gguf: str, fmt: str, parallel: int, ctx: int, threads: int, logdir: str,
                extra: list[str]) -> Server:
    port = free_port()
    cmd = [binary, "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "--parallel", str(parallel),
           "-c", str(parallel * ctx), "-t", str(threads), "-tb", str(threads), "--cont-batching",
           "--no-webui", "-a", SERVED_NAME, *extra]
    return Server("llama-server", cmd, port, os.path.join(logdir, f"llama-{fmt}-{parallel}.log"), dict(os.environ))


def start_transformers(folder: str, fmt: str, parallel: int, threads: int, logdir: str) -> Server:
    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "transformers")
    cmd = [exe, "serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype", "bfloat16",
           "--continuous-batching", "--cb-max-batch-tokens", "512", folder]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return Server("transformers", cmd, port, os.path.join(logdir, f"transformers-{fmt}-{parallel}.log"), env,
                  model_field=folder)


# ---------------------------------------------------------------- the load
def request_body(server: Server, ids: list[int], max_tokens: int, seed: int) -> dict[str, Any]:
    body = {"model": server.model_field, "prompt": ids, "max_tokens": max_tokens, "temperature": 0.8,
            "top_p": 1.0, "seed": seed, "stream": True, "stream_options": {"include_usage": True},
            "ignore_eos": True}
    if server.engine == "llama-server":
        body.update(top_k=0, min_p=0.0)
    if server.engine == "transformers":
        del body["ignore_eos"]  # it answers 422 to it (random weights rarely pick EOS anyway: counted as short)
        body["prompt"] = DECODE(ids)  # and 400 to token ids ("prompt must be a string"): it retokenizes the text
    return body


async def one_request(client: httpx.AsyncClient, server: Server, body: dict[str, Any]) -> dict[str, Any]:
    sent = time.perf_counter()
    times: list[float] = []
    usage, finish, error, text = None, None, None, []
    try:
        async with client.stream("POST", server.base + "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                error = f"HTTP {resp.status_code}: {(await resp.aread()).decode(errors='replace')[:500]}"
            else:
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    now = time.perf_counter()
                    obj = json.loads(data)
                    if "error" in obj:
                        error = json.dumps(obj["error"])[:500]
                        break
                    if obj.get("usage"):
                        usage = obj["usage"]
                    for choice in obj.get("choices") or []:
                        if choice.get("text"):
                            times.append(now)
                            text.append(choice["text"])
                        finish = choice.get("finish_reason") or finish
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        error = f"{type(e).__name__}: {e}"
    done = time.perf_counter()
    tokens = (usage or {}).get("completion_tokens")
    return {"prompt_tokens": (usage or {}).get("prompt_tokens", len(body["prompt"])), "seed": body["seed"], "sent": sent, "done": done,
            "ttft_s": times[0] - sent if times else None, "e2e_s": done - sent,
            "itl_s": [b - a for a, b in zip(times, times[1:])], "chunks": len(times),
            "completion_tokens": tokens if tokens is not None else len(times),
            "tokens_from": "usage" if tokens is not None else "chunks", "usage": usage, "finish_reason": finish,
            "error": error, "text_chars": sum(map(len, text))}


async def run_load(server: Server, streams: int, per_client: int, prompt_lens: list[int], vocab: range,
                   max_tokens: int, round_: int, timeout: float) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=streams + 4, max_keepalive_connections=streams + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10.0), limits=limits) as client:
        async def client_task(i: int) -> list[dict[str, Any]]:
            out = []
            for k in range(per_client):
                g = k * streams + i  # the first wave covers the prompt-length mix
                ids = prompt_ids(vocab, prompt_lens[g % len(prompt_lens)], round_, g, streams)
                out.append(await one_request(client, server, request_body(server, ids, max_tokens,
                                                                          1000 * round_ + g)))
            return out
        start = time.perf_counter()
        results = await asyncio.gather(*(client_task(i) for i in range(streams)))
        wall = time.perf_counter() - start
    requests = [r for rs in results for r in rs]
    for r in requests:
        r["sent"] -= start
        r["done"] -= start
    return {"wall_s": wall, "requests": requests}


def warm_up(server: Server, vocab: range) -> None:
    async def go() -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=600) as client:
            return await one_request(client, server, request_body(server, prompt_ids(vocab, 16, -1, 0), 4, 0))
    r = asyncio.run(go())
    if r["error"]:
        raise RuntimeError(f"{server.engine}: the warm-up request failed: {r['error']}\n{server.log_tail()}")


def quantile(values: list[float], q: float) -> float | None:
    """Linear interpolation between the closest ranks (numpy's default)."""
    if not values:
        return None
    v = sorted(values)
    pos = (len(v) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def summarize(load: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    reqs = load["requests"]
    ok = [r for r in reqs if not r["error"]]
    ttft = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    itl = [x for r in ok for x in r["itl_s"]]
    tokens = sum(r["completion_tokens"] for r in ok)
    return {"requests": len(reqs), "errors": len(reqs) - len(ok), "completion_tokens": tokens,
            "short_requests": sum(1 for r in ok if r["completion_tokens"] != max_tokens),
            "wall_s": load["wall_s"], "tok_s": tokens / load["wall_s"],
            "ttft_p50_s": quantile(ttft, 0.5), "ttft_p99_s": quantile(ttft, 0.99),
            "itl_p50_s": quantile(itl, 0.5), "itl_p99_s": quantile(itl, 0.99),
            "e2e_p50_s": quantile([r["e2e_s"] for r in ok], 0.5),
            "tokens_per_chunk": tokens / max(1, sum(r["chunks"] for r in ok)),
            "tokens_from": sorted({r["tokens_from"] for r in ok})}


def measure(server: Server, peers: list[Server], streams: int, per_client: int, prompt_lens: list[int],
            vocab: range, max_tokens: int, round_: int, timeout: float) -> dict[str, Any]:
    me0, peers0 = cpu_seconds(server.proc.pid), [cpu_seconds(p.proc.pid) for p in peers]
    busy0, own0 = machine_busy_seconds(), sum(os.times()[:2])
    load = asyncio.run(run_load(server, streams, per_client, prompt_lens, vocab, max_tokens, round_, timeout))
    me = cpu_seconds(server.proc.pid) - me0
    idle_peers = sum(cpu_seconds(p.proc.pid) for p in peers) - sum(peers0)
    own = sum(os.times()[:2]) - own0
    other = machine_busy_seconds() - busy0 - me - idle_peers - own
    summary = summarize(load, max_tokens)
    summary.update(server_cpu_s=me, idle_peer_cpu_s=idle_peers, client_cpu_s=own, other_cpu_s=max(0.0, other),
                   other_cpu_share=max(0.0, other) / (load["wall_s"] * (os.cpu_count() or 1)),
                   loadavg=open("/proc/loadavg").read().split()[0])
    return {"summary": summary, "requests": load["requests"]}


# ---------------------------------------------------------------- report
def fmt_num(x: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if x is None else f"{x * scale:.{digits}f}"


def table(cells: list[dict[str, Any]], engines: list[str]) -> str:
    peer = "llama-server"
    head = ["streams", "format"] + [f"{e} tok/s" for e in engines]
    if "phikit" in engines and peer in engines:
        head.append("phikit / llama")
    for e in engines:
        head += [f"{e} TTFT p50 / p99 (s)", f"{e} ITL p50 / p99 (ms)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in cells:
        med = {e: cell["engines"][e]["median"] for e in engines if e in cell["engines"]}
        row = [str(cell["streams"]), cell["format"]]
        row += [fmt_num(med[e]["tok_s"]) if e in med else "-" for e in engines]
        if "phikit" in engines and peer in engines:
            row.append(f"{med['phikit']['tok_s'] / med[peer]['tok_s']:.2f}x"
                       if "phikit" in med and peer in med and med[peer]["tok_s"] else "-")
        for e in engines:
            m = med.get(e)
            row += ["-", "-"] if m is None else [
                f"{fmt_num(m['ttft_p50_s'])} / {fmt_num(m['ttft_p99_s'])}",
                f"{fmt_num(m['itl_p50_s'], 1e3, 0)} / {fmt_num(m['itl_p99_s'], 1e3, 0)}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("tok_s", "ttft_p50_s", "ttft_p99_s", "itl_p50_s", "itl_p99_s", "e2e_p50_s", "wall_s", "other_cpu_share",
            "server_cpu_s", "idle_peer_cpu_s", "tokens_per_chunk")
    out = {}
    for k in keys:
        vals = [r["summary"][k] for r in rounds if r["summary"].get(k) is not None]
        out[k] = statistics.median(vals) if vals else None
    out["errors"] = sum(r["summary"]["errors"] for r in rounds)
    out["short_requests"] = sum(r["summary"]["short_requests"] for r in rounds)
    return out


def cpu_flags() -> list[str]:
    out = subprocess.run(["bash", "-c", r"grep -o 'avx[^ ]*\|amx[^ ]*' /proc/cpuinfo | sort -u"],
                         capture_output=True, text=True)
    return out.stdout.split()


def find_llama_server(path: str | None) -> str | None:
    if path:
        return path
    if os.environ.get("LLAMA_SERVER"):
        return os.environ["LLAMA_SERVER"]
    cache = os.path.expanduser("~/.cache/phikit/llama-server")
    if os.path.isdir(cache):
        for d in sorted(os.listdir(cache), reverse=True):
            candidate = os.path.join(cache, d, "vendor", "llama.cpp", "build", "bin", "llama-server")
            if os.access(candidate, os.X_OK):
                return candidate
    return shutil.which("llama-server")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="phi-1.5", choices=[*SHAPES, "tiny"])
    p.add_argument("--formats", default="bf16,int4", help="bf16 (phikit plain / GGUF bf16), int4 (int4 / q4_0)")
    p.add_argument("--streams", default="1,4,8,16", help="concurrent clients; also each server's --parallel")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--prompt-lens", default="16,64,128,256", help="the prompt-length mix, in tokens")
    p.add_argument("--requests-per-client", default="auto", help="K; auto: ceil(4 / streams)")
    p.add_argument("--engines", default="phikit,llama-server",
                   help="phikit, llama-server, transformers (bf16 only; `transformers serve --continuous-batching`)")
    p.add_argument("--llama-server", default=None, help="the binary (default: benchmarks/build_llama_server.sh's)")
    p.add_argument("--parallel", default="max",
                   help="both servers' slots: max (default: the largest stream count; one pair of servers serves "
                        "every stream count), streams (restart both for each stream count, slots = streams), or N")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ctx-per-slot", type=int, default=None, help="default: longest prompt + max tokens + 16")
    p.add_argument("--phikit-root", default=ROOT,
                   help="the tree whose phikit serves (default: this one; e.g. a server branch's worktree)")
    p.add_argument("--phikit-args", default="", help="extra flags for phikit serve (e.g. --no-deterministic)")
    p.add_argument("--llama-args", default="", help="extra flags for llama-server")
    p.add_argument("--request-timeout", type=float, default=900.0)
    p.add_argument("--load-timeout", type=float, default=900.0, help="seconds a server may take to be ready")
    p.add_argument("--out", default=None, help="JSON results (default ~/.cache/phikit/bench/serve-<shape>.json)")
    args = p.parse_args(argv)

    formats = [f for f in args.formats.split(",") if f]
    streams_list = [int(s) for s in args.streams.split(",") if s]
    prompt_lens = [int(s) for s in args.prompt_lens.split(",") if s]
    engines = [e for e in args.engines.split(",") if e]
    for e in engines:
        if e not in ("phikit", "llama-server", "transformers"):
            p.error(f"unknown engine {e}")
    ctx = args.ctx_per_slot or max(prompt_lens) + args.max_tokens + 16
    binary = find_llama_server(args.llama_server) if "llama-server" in engines else None
    if "llama-server" in engines and not binary:
        p.error("no llama-server binary: run benchmarks/build_llama_server.sh or pass --llama-server PATH")

    folder = prepare_checkpoint(args.shape)
    served = serve_folder(args.shape, folder)
    vocab_size = json.load(open(os.path.join(folder, "config.json")))["vocab_size"]
    vocab = prompt_vocabulary(tokenizer_dir_for(args.shape, folder), vocab_size)
    if "transformers" in engines:
        from phikit.tokenizer.tokenization import AutoTokenizer

        global DECODE
        DECODE = AutoTokenizer.from_pretrained(tokenizer_dir_for(args.shape, folder)).decode
    gguf = export_gguf_files(args.shape, folder, tuple(GGUF_TYPES[f] for f in formats)) if binary else {}
    logdir = tempfile.mkdtemp(prefix="serve-bench-")
    out_path = args.out or os.path.join(os.path.dirname(folder), f"serve-{args.shape}.json")
    meta: dict[str, Any] = {
        "command": shlex.join([os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(ROOT)
                               else sys.executable, *sys.argv]),
        "cpu_flags": cpu_flags(), "cpus": os.cpu_count(), "shape": args.shape, "checkpoint": folder,
        "served_folder": served, "gguf": gguf, "formats": formats, "streams": streams_list, "rounds": args.rounds,
        "max_tokens": args.max_tokens, "prompt_lens": prompt_lens, "ctx_per_slot": ctx, "threads": args.threads,
        "engines": engines, "llama_server": binary, "logs": logdir,
        "phikit_root": os.path.abspath(args.phikit_root),
        "phikit_commit": subprocess.run(["git", "-C", os.path.abspath(args.phikit_root), "rev-parse", "--short",
                                         "HEAD"], capture_output=True, text=True).stdout.strip(),
    }
    if binary:
        v = subprocess.run([binary, "--version"], capture_output=True, text=True)
        meta["llama_server_version"] = (v.stdout + v.stderr).strip().splitlines()[-2:]
    print(f"logs in {logdir}; results to {out_path}", file=sys.stderr, flush=True)
    cells: list[dict[str, Any]] = []
    result = {"meta": meta, "cells": cells}
    phikit_extra = args.phikit_args.split()
    llama_extra = args.llama_args.split()
    t_start = time.perf_counter()
    for fmt in formats:
        if args.parallel == "streams":  # a fresh pair of servers for each stream count, slots = streams
            groups = [[s] for s in streams_list]
        else:  # one pair of servers for all stream counts, the same slots for both
            groups = [streams_list]
        for group in groups:
            parallel = max(group) if args.parallel in ("streams", "max") else int(args.parallel)
            servers: list[Server] = []
            started: dict[str, dict[str, Any]] = {}
            group_cells: list[dict[str, Any]] = []
            try:
                for e in engines:  # one at a time: a loading server would slow the other's load
                    if e == "phikit":
                        s = start_phikit(served, fmt, parallel, ctx, args.threads, logdir, phikit_extra,
                                         os.path.abspath(args.phikit_root))
                    elif e == "llama-server":
                        s = start_llama(binary, gguf[GGUF_TYPES[fmt]], fmt, parallel, ctx, args.threads, logdir,
                                        llama_extra)
                    else:
                        if fmt != "bf16":
                            continue
                        s = start_transformers(served, fmt, parallel, args.threads, logdir)
                    servers.append(s)
                    s.wait_ready(args.load_timeout)
                    warm_up(s, vocab)
                    started[e] = {"command": s.command, "load_s": s.load_s, "parallel": parallel, "log": s.log_path}
                    print(f"[{time.perf_counter() - t_start:6.0f}s] {fmt} --parallel {parallel}: {e} ready in "
                          f"{s.load_s:.1f}s", file=sys.stderr, flush=True)
                for streams in group:
                    per_client = max(1, math.ceil(4 / streams)) if args.requests_per_client == "auto" \
                        else int(args.requests_per_client)
                    cell: dict[str, Any] = {"format": fmt, "streams": streams, "parallel": parallel,
                                            "requests_per_client": per_client,
                                            "engines": {e: {**d, "rounds": []} for e, d in started.items()}}
                    group_cells.append(cell)
                    for r in range(args.rounds):
                        order = servers if r % 2 == 0 else servers[::-1]
                        for s in order:
                            m = measure(s, [x for x in servers if x is not s], streams, per_client, prompt_lens,
                                        vocab, args.max_tokens, r, args.request_timeout)
                            cell["engines"][s.engine]["rounds"].append(m)
                            sm = m["summary"]
                            print(f"[{time.perf_counter() - t_start:6.0f}s] {fmt} streams={streams} round {r + 1} "
                                  f"{s.engine:12s} {sm['tok_s']:7.2f} tok/s  ttft p50 {fmt_num(sm['ttft_p50_s'])}s"
                                  f"  itl p50 {fmt_num(sm['itl_p50_s'], 1e3, 0)}ms  wall {sm['wall_s']:.1f}s  "
                                  f"errors {sm['errors']}  short {sm['short_requests']}  other cpu "
                                  f"{sm['other_cpu_share']:.0%}", file=sys.stderr, flush=True)
                            for req in m["requests"]:
                                if req["error"]:
                                    print(f"    error: {req['error']}", file=sys.stderr)
            except Exception as e:  # noqa: BLE001 - keep what was measured, report the failure
                failure = f"{type(e).__name__}: {e}"
                if not group_cells:
                    group_cells.append({"format": fmt, "streams": group[0], "parallel": parallel, "engines": {}})
                group_cells[-1]["failure"] = failure
                print(f"  {fmt} --parallel {parallel}: FAILED: {failure}", file=sys.stderr, flush=True)
            finally:
                for s in servers:
                    rss = peak_rss_gb(s.proc.pid)
                    s.stop()
                    if s.engine in started:
                        started[s.engine]["peak_rss_gb"] = rss  # over the whole group
                        for cell in group_cells:
                            if s.engine in cell["engines"]:
                                cell["engines"][s.engine]["peak_rss_gb"] = rss
            for cell in group_cells:
                for e, data in cell["engines"].items():
                    if data["rounds"]:
                        data["median"] = medians(data["rounds"])
                cell["engines"] = {e: d for e, d in cell["engines"].items() if d.get("median")}
                cells.append(cell)
            with open(out_path, "w") as f:
                json.dump(result, f, indent=1)
    meta["total_s"] = time.perf_counter() - t_start
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)
    shown = [e for e in engines if any(e in c["engines"] for c in cells)]
    print(f"\n{args.shape}, max_tokens {args.max_tokens}, prompts {prompt_lens}, {args.rounds} rounds, "
          f"medians over rounds; CPU flags: {' '.join(meta['cpu_flags'])}")
    print(table(cells, shown))
    for c in cells:
        if c.get("failure"):
            print(f"\n{c['format']} streams={c['streams']}: {c['failure'][:400]}")
    print(f"\n{meta['command']}\n(total {meta['total_s']:.0f} s; JSON in {out_path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
