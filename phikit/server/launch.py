"""Run the server: bind the socket, start uvicorn, load the model in the background (/health answers 503
"loading" until it is ready), build and start the engine, and drain on SIGTERM.

    listen (port 0: the kernel picks; --port-file F gets the port once uvicorn serves)
      -> load model + tokenizer (AutoModelForCausalLM / AutoTokenizer) -> Engine(...).start() -> "ok"
      -> SIGTERM / SIGINT: "draining" (/health and new requests 503), engine.drain(--drain-timeout-s), exit 0
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from typing import Any

import uvicorn

from .app import create_app
from .chat import read_chat_template
from .options import ServeOptions, quantization_for  # noqa: F401 - ServeOptions is imported from here too
from .state import ServerState

log = logging.getLogger("phikit.server")
GRACEFUL_SHUTDOWN_S = 5.0  # after the engine drained: how long uvicorn waits for responses to finish sending


def load_engine(options: ServeOptions) -> tuple[Any, Any]:
    """(started engine, tokenizer) for `options.model`."""
    from ..engine import Engine
    from ..hf.auto import AutoModelForCausalLM
    from ..tokenizer.tokenization import AutoTokenizer

    mirror = None
    if options.tp > 1:
        from ..engine.mirror import Broadcast
        from .tensor_parallel import load_sharded

        model, mirror = load_sharded(options), Broadcast()
    else:
        model = AutoModelForCausalLM.from_pretrained(options.model, dtype=options.dtype, device_map=options.device,
                                                     quantization_config=quantization_for(options.weights))
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(options.model)
    engine = Engine(model, tokenizer, parallel=options.parallel, ctx_size=options.ctx_size,
                    max_num_batched_tokens=options.max_num_batched_tokens, max_queue=options.max_queue,
                    deterministic=options.deterministic, prefix_cache=options.prefix_cache, mirror=mirror)
    _warm_grammar_vocabulary(tokenizer, engine)
    engine.start()
    return engine, tokenizer


def _warm_grammar_vocabulary(tokenizer: Any, engine: Any) -> None:
    """Build llguidance's view of the vocabulary now (0.1-1 s), not on the first structured request; nothing
    without the structured extra."""
    from ..structured import StructuredOutputUnavailable, grammar_tokenizer
    try:
        grammar_tokenizer(tokenizer, engine.vocab_size, list(engine.eos_token_ids))
    except StructuredOutputUnavailable:
        pass


def _write_port_file(path: str, port: int) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)  # readers never see a half-written file


class PhikitServer(uvicorn.Server):
    """uvicorn's server with phikit's shutdown: the first SIGTERM / SIGINT drains (the socket stays open so new
    requests get 503) and then exits; a second one, or one while loading, exits at once."""

    def __init__(self, config: uvicorn.Config, state: ServerState, options: ServeOptions, port: int) -> None:
        super().__init__(config)
        self.state, self.options, self.port = state, options, port
        self.exit_code = 0

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.options.port_file:
            _write_port_file(self.options.port_file, self.port)
        print(f"phikit: listening on http://{self.options.host}:{self.port} (model loading)", file=sys.stderr,
              flush=True)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.state.status != "ok" or self.state.engine is None:
            super().handle_exit(sig, frame)
            return
        self.state.start_draining()
        print(f"phikit: signal {sig}: draining (up to {self.options.drain_timeout_s:g} s for running requests)",
              file=sys.stderr, flush=True)
        threading.Thread(target=self._drain, name="phikit-drain", daemon=True).start()

    def _drain(self) -> None:
        finished = self.state.engine.drain(self.options.drain_timeout_s)
        if not finished:
            print(f"phikit: drain timeout: requests still running after {self.options.drain_timeout_s:g} s are "
                  f"aborted", file=sys.stderr, flush=True)
            self.state.engine.shutdown()  # their choices end with "abort": the handlers answer 503
        self.should_exit = True

    def load_in_background(self) -> threading.Thread:
        def load() -> None:
            start = time.perf_counter()
            try:
                engine, tokenizer = load_engine(self.options)
            except Exception as e:  # noqa: BLE001 - reported as phikit's one-line error, then exit 1
                message = " ".join(str(e).split()) or type(e).__name__
                print(f"phikit: error: cannot serve {self.options.model}: {message}", file=sys.stderr, flush=True)
                self.exit_code = 1
                self.should_exit = True
                return
            self.state.attach(engine, tokenizer)
            print(f"phikit: serving {self.state.served_model_name!r} (context {engine.ctx_size}, {engine.parallel} "
                  f"slots; loaded in {time.perf_counter() - start:.1f}s)", file=sys.stderr, flush=True)

        thread = threading.Thread(target=load, name="phikit-load", daemon=True)
        thread.start()
        return thread


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: the kernel picks one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror}; pick another --port (0 lets the system "
                      f"choose) or stop what uses it") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(options: ServeOptions) -> int:
    """Run until SIGTERM / SIGINT; the exit status. With --tp N, rank 0 serves and starts the other ranks (under
    torchrun, ranks k > 0 run the worker instead)."""
    from . import tensor_parallel

    if options.tp > 1 and tensor_parallel.under_torchrun() and int(os.environ["RANK"]) > 0:
        return tensor_parallel.worker_main(options)
    workers = tensor_parallel.start_workers(options) if options.tp > 1 else []
    try:
        return _serve(options)
    finally:
        tensor_parallel.stop_workers(workers)


def _serve(options: ServeOptions) -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("phikit: %(levelname)s: %(message)s"))
    if not log.handlers:
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    template = read_chat_template(options.chat_template)
    state = ServerState(options.served_model_name, template)
    app = create_app(None, None, options.served_model_name, api_key=options.api_key, max_body_mb=options.max_body_mb,
                     state=state)
    sock = bind(options.host, options.port)
    config = uvicorn.Config(app, log_level=options.log_level, access_log=False,
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    server = PhikitServer(config, state, options, sock.getsockname()[1])
    server.load_in_background()
    try:
        server.run(sockets=[sock])
    finally:
        if state.engine is not None:
            state.engine.shutdown()
        sock.close()
        if options.tp > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    return server.exit_code
