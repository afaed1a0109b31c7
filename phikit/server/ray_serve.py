"""Data-parallel replicas of `phikit serve` on Ray Serve: each replica loads the model, builds phikit's `Engine` and
serves the same FastAPI app as `phikit serve` (`create_app`); Ray Serve's HTTP proxy spreads requests over them.

    from ray import serve
    from phikit.server.ray_serve import build_app
    serve.run(build_app("./Phi-3-mini-4k-instruct", num_replicas=2, parallel=4), route_prefix="/")

    serve run phikit.server.ray_serve:app_builder model=./Phi-3-mini-4k-instruct num_replicas=2 parallel=4

By default a replica takes a whole node (`max_replicas_per_node=1`) and torch uses the node's CPUs (or `num_cpus`
when given). `autoscaling_config` goes to Ray Serve as is; `check_health` fails once the engine's thread has died,
and Ray then replaces the replica. Ray is imported only here: pip install 'phikit[ray]'. docs/SCALE_OUT.md has the
rest (KServe / Kubernetes too).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
from dataclasses import fields
from typing import Any

try:
    from ray import serve
except ImportError as e:  # ray missing, or ray without its serve extra
    raise ImportError(f"phikit's Ray Serve deployment needs Ray Serve ({e}): pip install 'phikit[ray]'") from e

from ..bundled import default_model_path
from .app import create_app
from .chat import read_chat_template
from .launch import ServeOptions, load_engine

BUNDLED_NAME = "phikit-default"  # as `phikit serve` names the bundled model
# ServeOptions fields a replica uses (host, port and uvicorn's flags belong to Ray Serve's proxy instead)
ENGINE_OPTIONS = tuple(f.name for f in fields(ServeOptions)
                       if f.name not in ("model", "served_model_name", "host", "port", "port_file", "log_level"))


class _ReplicaApp:
    """The ASGI app Ray Serve wraps: it hands every request (and the lifespan) to `_ReplicaApp.app`, the app this
    process's replica built in its constructor (Ray runs each replica in its own process, and the constructor runs
    before Ray Serve first calls the app). Ray Serve pickles the app it is given when the class is defined, before
    any model is loaded; newer Rays also take an app builder, but this indirection works on old ones too (tested
    with 2.40 and 2.60). The deployment class itself travels to the replica by value, so a module global its
    constructor assigned would land in a copy; this class travels by reference."""

    app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await _ReplicaApp.app(scope, receive, send)


@serve.deployment(name="phikit")
@serve.ingress(_ReplicaApp())
class PhikitDeployment:
    """One replica: model + tokenizer + started `Engine`, behind `create_app`'s routes."""

    def __init__(self, model: str | None, served_model_name: str, options: dict[str, Any],
                 chat_template: str | None, torch_threads: int | None) -> None:
        import torch

        torch.set_num_threads(torch_threads or _cpus_here())
        self.options = ServeOptions(model=model or default_model_path(), served_model_name=served_model_name,
                                    **options)
        self.engine, tokenizer = load_engine(self.options)
        self.fastapi_app = create_app(self.engine, tokenizer, served_model_name, api_key=self.options.api_key,
                                      max_body_mb=self.options.max_body_mb, chat_template=chat_template)
        _ReplicaApp.app = self.fastapi_app

    def check_health(self) -> None:
        """Ray Serve calls this every `health_check_period_s`; raising marks the replica unhealthy (it is replaced)."""
        if not self.engine.alive:  # Engine.start() made its thread; it ends only on shutdown or a crash
            raise RuntimeError("phikit: the engine's thread is not running; this replica cannot serve")

    async def __del__(self) -> None:
        """Ray Serve's graceful shutdown: it stops routing here and waits up to `graceful_shutdown_timeout_s`
        (= drain_timeout_s) for running requests, then calls this; what still runs is aborted."""
        self.fastapi_app.state.phikit.start_draining()
        await asyncio.to_thread(self.engine.shutdown)
        print("phikit: replica stopped: engine shut down", file=sys.stderr, flush=True)


def build_app(model: str | None = None, *, served_model_name: str | None = None, num_replicas: int | str | None = None,
              autoscaling_config: dict[str, Any] | None = None, num_cpus: float | None = None,
              torch_threads: int | None = None, max_replicas_per_node: int | None = 1,
              max_ongoing_requests: int | None = None, max_queued_requests: int | None = None,
              ray_actor_options: dict[str, Any] | None = None, deployment_options: dict[str, Any] | None = None,
              **engine_options: Any) -> Any:
    """A Ray Serve application of phikit replicas (`serve.run(build_app(...))`).

    model: checkpoint folder or hub id (default: the bundled model); engine_options: `phikit serve`'s flags as
    `ServeOptions` names them (parallel, ctx_size, max_num_batched_tokens, max_queue, api_key, chat_template,
    dtype, weights, device, deterministic, prefix_cache, max_body_mb, drain_timeout_s).
    num_replicas: fixed count (default 1; none with autoscaling_config, which Ray Serve takes as is).
    num_cpus: CPUs Ray reserves per replica (default: Ray's 1) and torch's threads there (default: every CPU the
    replica's process may run on); max_replicas_per_node: 1 keeps one replica per node, None lifts the limit.
    max_ongoing_requests: requests Ray sends a replica at once (default 2 x parallel: its slots and as many waiting
    in the engine; the rest wait in Ray's router for whichever replica frees first). deployment_options: any other
    `Deployment.options` (health_check_period_s, graceful_shutdown_timeout_s, ...)."""
    unknown = sorted(set(engine_options) - set(ENGINE_OPTIONS))
    if unknown:
        raise TypeError(f"build_app: unknown option(s) {', '.join(unknown)}; engine options are "
                        f"{', '.join(ENGINE_OPTIONS)}")
    served_model_name = served_model_name or model or BUNDLED_NAME
    # read here, so the file need not exist on the other nodes (the model must: a shared folder, or a hub id)
    template = read_chat_template(engine_options.pop("chat_template", None))
    if num_replicas is not None and autoscaling_config is not None and num_replicas != "auto":
        raise ValueError("build_app: give num_replicas or autoscaling_config, not both")
    parallel = engine_options.get("parallel", ServeOptions.parallel)
    actor_options = dict(ray_actor_options or {})
    if num_cpus is not None:
        actor_options["num_cpus"] = num_cpus
    threads = torch_threads or (max(1, math.floor(num_cpus)) if num_cpus else None)  # None: the replica's CPUs
    options: dict[str, Any] = {
        "ray_actor_options": actor_options, "max_replicas_per_node": max_replicas_per_node,
        "max_ongoing_requests": max_ongoing_requests or 2 * parallel,
        # Ray waits this long for running requests before it stops a replica (SIGTERM's drain in `phikit serve`)
        "graceful_shutdown_timeout_s": engine_options.get("drain_timeout_s", ServeOptions.drain_timeout_s),
    }
    if autoscaling_config is not None:
        options["autoscaling_config"] = autoscaling_config
        if num_replicas == "auto":
            options["num_replicas"] = "auto"
    else:
        options["num_replicas"] = 1 if num_replicas is None else num_replicas
    if max_queued_requests is not None:
        options["max_queued_requests"] = max_queued_requests
    options.update(deployment_options or {})
    return PhikitDeployment.options(**options).bind(model, served_model_name, engine_options, template, threads)


def _cpus_here() -> int:
    """CPUs this process may run on (Ray sets OMP_NUM_THREADS=1 for a replica without num_cpus)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# `serve run phikit.server.ray_serve:app_builder key=value ...` passes strings; a Serve config file's `args` may
# pass typed values (left as they are)
_INTS = ("parallel", "ctx_size", "max_num_batched_tokens", "max_queue", "torch_threads", "max_replicas_per_node",
         "max_ongoing_requests", "max_queued_requests")
_FLOATS = ("num_cpus", "max_body_mb", "drain_timeout_s")
_BOOLS = ("deterministic", "prefix_cache")
_JSON = ("autoscaling_config", "ray_actor_options", "deployment_options")


def _typed(key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        if key == "num_replicas":
            return value if value == "auto" else int(value)
        if key in _INTS:
            return None if value.lower() == "none" else int(value)
        if key in _FLOATS:
            return float(value)
        if key in _BOOLS:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if key in _JSON:
            return json.loads(value)
    except ValueError as e:
        raise ValueError(f"app_builder: {key}={value!r} is not a valid {key} ({e})") from None
    return value


def app_builder(args: dict[str, Any]) -> Any:
    """Ray Serve's application builder: `serve run phikit.server.ray_serve:app_builder model=DIR num_replicas=2
    parallel=4 autoscaling_config='{"min_replicas": 1, "max_replicas": 4}'` (the keys of `build_app`)."""
    return build_app(**{key: _typed(key, value) for key, value in dict(args).items()})
