"""The HTTP app over an `Engine`: routes, request parsing, errors, metrics.

    POST /v1/completions   OpenAI-style: prompt, max_tokens, temperature, top_k, seed,
                           stream (true: text/event-stream chunks, then [DONE])
    GET  /v1/models        the run being served
    GET  /healthz          liveness and the engine's state
    GET  /metrics          Prometheus text: active, queued and parked streams, characters/s
    GET  /                 a page that streams into the browser as you watch

The request's fields are checked once, by the engine
(`charstream.serving.request.check_request`); this layer checks only what is
HTTP's own (the body is a JSON object, `model`, `n`, `stream`) and maps a
`RequestError` to a 4xx answer naming its field. More requests than rows queue
up to the engine's bound, then get 429 with Retry-After. Starlette is imported
inside the functions, so `charstream.serving` imports without it.
"""
from __future__ import annotations

import contextlib
import json
import time
import uuid
from pathlib import Path

from .engine import Engine, QueueFull, ShuttingDown
from .request import RequestError

PAGE = Path(__file__).with_name("page.html")
# The fields a completion request may set, with their defaults; prompt is the
# engine's `prime`.
DEFAULTS = {"prompt": "", "max_tokens": 16, "temperature": 1.0, "top_k": None, "seed": None,
            "stream": False}


def _error(status: int, message: str, param=None, code=None, headers=None):
    from starlette.responses import JSONResponse

    body = {"error": {"message": message, "type": "invalid_request_error" if status < 500
                      else "server_error", "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def parse_completion(body, model: str) -> dict:
    """The request's fields with their defaults, HTTP's own checked (the engine
    checks the rest); RequestError naming the first bad one."""
    if not isinstance(body, dict):
        raise RequestError(None, f"the body must be a JSON object, got {type(body).__name__}")
    req = {**DEFAULTS, **{k: body[k] for k in DEFAULTS if k in body and body[k] is not None}}
    if "model" in body and body["model"] != model:
        raise RequestError("model", f"model {str(body['model'])[:80]!r} does not exist; this "
                           f"server serves {model!r}", status=404, code="model_not_found")
    if body.get("n", 1) != 1:
        raise RequestError("n", f"n must be 1 (one completion per request), got "
                           f"{str(body['n'])[:80]!r}")
    if not isinstance(req["stream"], bool):
        raise RequestError("stream", f"stream must be true or false, got {req['stream']!r}")
    return req


def _chunk(cid: str, created: int, model: str, text: str, finish) -> dict:
    return {"id": cid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}


async def completions(request):
    """POST /v1/completions: check, queue, and answer as events or as one JSON."""
    from starlette.responses import JSONResponse, StreamingResponse

    engine, model = request.app.state.engine, request.app.state.model
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as err:
        return _error(400, f"the body is not valid JSON: {err}")
    try:
        req = parse_completion(body, model)
        job = engine.submit(req["prompt"], req["max_tokens"], req["temperature"],
                            req["top_k"], req["seed"])
    except RequestError as err:
        return _error(err.status, str(err), err.field, err.code)
    except QueueFull as err:
        return _error(429, f"{err}; retry shortly", code="rate_limit_exceeded",
                      headers={"Retry-After": "1"})
    except ShuttingDown as err:
        return _error(503, str(err))
    cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    if not req["stream"]:
        text = "".join([chunk async for chunk in job.chunks()])
        usage = {"prompt_tokens": job.prime_chars, "completion_tokens": len(text),
                 "total_tokens": job.prime_chars + len(text)}
        return JSONResponse({**_chunk(cid, created, model, text, job.finish_reason),
                             "usage": usage})

    async def events():
        async for text in job.chunks():
            yield f"data: {json.dumps(_chunk(cid, created, model, text, None))}\n\n"
        yield f"data: {json.dumps(_chunk(cid, created, model, '', job.finish_reason))}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def models(request):
    from starlette.responses import JSONResponse

    state = request.app.state
    return JSONResponse({"object": "list", "data": [
        {"id": state.model, "object": "model", "created": state.started, "owned_by": "charstream"}]})


async def healthz(request):
    from starlette.responses import JSONResponse

    engine = request.app.state.engine
    return JSONResponse({"status": "shutting down" if engine.closing else "ok",
                         "model": request.app.state.model, **engine.stats()})


async def metrics(request):
    from starlette.responses import PlainTextResponse

    return PlainTextResponse(prometheus(request.app.state.engine),
                             media_type="text/plain; version=0.0.4")


async def page(request):
    from starlette.responses import HTMLResponse

    html = PAGE.read_text(encoding="utf-8").replace("{{MODEL}}", request.app.state.model)
    return HTMLResponse(html)


def create_app(engine: Engine, model: str):
    """The Starlette application over `engine`, serving the model named `model`."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        await engine.close()

    app = Starlette(routes=[
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models), Route("/healthz", healthz), Route("/metrics", metrics),
        Route("/", page)], lifespan=lifespan)
    app.state.engine, app.state.model, app.state.started = engine, model, int(time.time())
    return app


def prometheus(engine: Engine) -> str:
    """The engine's state in Prometheus's text format."""
    s = engine.stats()
    rows = [("active_streams", "gauge", "Streams the engine steps now.", s["active"]),
            ("queued_streams", "gauge", "Requests waiting for a row.", s["queued"]),
            ("parked_streams", "gauge", "Streams paused for a reader that fell behind.",
             s["parked"]),
            ("max_streams", "gauge", "Rows of the batch.", s["max_streams"]),
            ("characters_per_second", "gauge", "Characters produced per second, last 5 s.",
             round(s["characters_per_second"], 1)),
            ("characters_total", "counter", "Characters produced.", s["characters"]),
            ("requests_total", "counter", "Requests accepted.", s["requests"]),
            ("ticks_total", "counter", "Batched native steps run.", s["ticks"])]
    out = []
    for name, kind, help_text, value in rows:
        out += [f"# HELP charstream_{name} {help_text}", f"# TYPE charstream_{name} {kind}",
                f"charstream_{name} {value}"]
    return "\n".join(out) + "\n"
