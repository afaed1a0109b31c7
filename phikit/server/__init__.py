"""`phikit serve`: an OpenAI-compatible HTTP server over `phikit.engine.Engine`.

FastAPI, pydantic, uvicorn and prometheus_client are imported only inside this package (the `serve` extra), and
nothing else in phikit imports it, so `import phikit` works without them.

    protocol.py    pydantic request models; fields the server cannot honour are refused by name
    sampling.py    request fields -> SamplingParams
    errors.py      OpenAI's error shape, every framework error mapped onto it (400, never 422)
    middleware.py  --api-key (Bearer) on /v1/*, the body-size limit (413)
    chat.py        messages -> rendered prompt -> ids (the checkpoint's chat template or --chat-template)
    runner.py      one request's engine traffic: submit, the callback onto the event loop, abort on disconnect
    logprobs.py    logprobs in chat's and completions' shapes; each token's text and bytes
    responses.py   chat / completion response bodies and stream chunks; logprobs in both shapes
    streaming.py   server-sent events by hand (`data: {json}\\n\\n`, then `data: [DONE]\\n\\n`)
    metrics.py     Prometheus metrics in their own registry
    routes.py      the endpoints
    state.py       ServerState: the engine, the tokenizer, the served name; loading -> ok -> draining
    app.py         create_app(engine, tokenizer, served_model_name, ...)
    launch.py      load the model, build the engine, run uvicorn; SIGTERM drains
"""
