"""`phikit serve`: an OpenAI-compatible server (chat completions, completions, models, tokenize, health, metrics).

    phikit serve                                   # the bundled tiny model on http://127.0.0.1:8000/v1
    phikit serve --model ./Phi-3-mini-4k-instruct --parallel 4 --api-key secret
    phikit serve --port 0 --port-file port.txt     # the system picks the port; the file gets it once listening

It needs the `serve` extra (FastAPI, uvicorn, pydantic, prometheus_client): pip install 'phikit[serve]'.
Bad input ends with one `phikit: error:` line and exit status 1 (2 for bad flags); SIGTERM drains and exits 0.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from typing import Sequence

from .bundled import default_model_path

SERVER_PACKAGES = ("fastapi", "uvicorn", "pydantic", "prometheus_client")
EXTRA_HINT = "phikit serve needs the server extra: pip install 'phikit[serve]'"
WEIGHT_FORMATS = ("auto", "plain", "lossless", "int8", "int4")
BUNDLED_NAME = "phikit-default"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0 to 65535; 0 lets the system choose)")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="phikit serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", "-m", default=None, help="checkpoint folder or hub id (default: the bundled model)")
    p.add_argument("--served-model-name", default=None,
                   help="the name clients send as `model` (default: --model as given)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0: the system picks one)")
    p.add_argument("--port-file", default=None, help="write the port here once the server listens")
    p.add_argument("--parallel", type=_positive_int, default=4, help="engine slots: requests decoded together "
                   "(default 4; also the largest n)")
    p.add_argument("--ctx-size", type=_positive_int, default=None,
                   help="tokens per slot, prompt + completion (default: the model's, at most 8192)")
    p.add_argument("--max-num-batched-tokens", type=_positive_int, default=512,
                   help="prompt tokens prefilled per engine step (default 512)")
    p.add_argument("--max-queue", type=_positive_int, default=64,
                   help="requests waiting for a slot before new ones get 429 (default 64)")
    p.add_argument("--api-key", default=os.environ.get("PHIKIT_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $PHIKIT_API_KEY, else none)")
    p.add_argument("--chat-template", default=None, metavar="FILE", help="jinja chat template overriding the model's, or a "
                   "template phikit ships: phi4-mini-tools (Phi-4-mini with tool calls and tool results)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype (default: as saved)")
    p.add_argument("--weights", default="auto", choices=sorted(WEIGHT_FORMATS),
                   help="how weights are held (as phikit generate; default auto)")
    p.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1")
    p.add_argument("--tp", type=_positive_int, default=1, help="tensor-parallel ranks: this process and tp - 1 "
                   "workers each hold a shard (default 1; on CPU it divides memory, not time: docs/ARCHITECTURE.md)")
    p.add_argument("--no-deterministic", dest="deterministic", action="store_false",
                   help="let greedy outputs depend on the batch (faster); by default they equal solo runs")
    p.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_false",
                   help="never reuse a cached prompt prefix")
    p.add_argument("--max-body-mb", type=_positive_float, default=16.0,
                   help="largest request body in MB before 413 (default 16)")
    p.add_argument("--drain-timeout-s", type=_positive_float, default=30.0,
                   help="on SIGTERM, how long running requests may finish (default 30)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default warning)")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return p


def missing_server_packages() -> list[str]:
    """The packages of the serve extra this environment lacks."""
    missing = []
    for name in SERVER_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing




def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("PHIKIT_DEBUG", "") not in ("", "0")
    if missing_server_packages():
        print(f"phikit: error: {EXTRA_HINT}", file=sys.stderr)
        return 1
    try:
        from .server.launch import ServeOptions, serve

        model = args.model or default_model_path()
        name = args.served_model_name or (args.model if args.model else BUNDLED_NAME)
        options = ServeOptions(model=model, served_model_name=name, host=args.host, port=args.port,
                               port_file=args.port_file, parallel=args.parallel, ctx_size=args.ctx_size,
                               max_num_batched_tokens=args.max_num_batched_tokens, max_queue=args.max_queue,
                               api_key=args.api_key or None, chat_template=args.chat_template, dtype=args.dtype,
                               weights=args.weights, device=args.device, deterministic=args.deterministic,
                               prefix_cache=args.prefix_cache, max_body_mb=args.max_body_mb,
                               drain_timeout_s=args.drain_timeout_s, log_level=args.log_level, tp=args.tp)
        return serve(options)
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError, NotImplementedError, ImportError) as e:
        if debug:
            raise
        print(f"phikit: error: {' '.join(str(e).split()) or type(e).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
