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
`RequestError` to a 4xx answer naming its field. Every error, 404 and 405
included, is JSON in OpenAI's shape. More requests than rows queue up to the
engine's bound, then get 429 with Retry-After. The bounds on bodies, writes,
hosts and connections are `charstream.serving.http`'s. Starlette is imported
inside the functions, so `charstream.serving` imports without it.
"""
from __future__ import annotations

import contextlib
import html
import json
import time
import uuid
from pathlib import Path

from .engine import Engine, QueueFull, ShuttingDown
from .http import EventStream, HostCheck, HttpLimits, json_error, read_json, until_disconnected
from .request import RequestError, shown

PAGE = Path(__file__).with_name("page.html")
# The fields a completion request may set, with their defaults; prompt is the
# engine's `prime`.
DEFAULTS = {"prompt": "", "max_tokens": 16, "temperature": 1.0, "top_k": None, "seed": None,
            "stream": False}


def parse_completion(body, model: str) -> dict:
    """The request's fields with their defaults, HTTP's own checked (the engine
    checks the rest); RequestError naming the first bad one."""
    if not isinstance(body, dict):
        raise RequestError(None, f"the body must be a JSON object, got {type(body).__name__}")
    req = {**DEFAULTS, **{k: body[k] for k in DEFAULTS if k in body and body[k] is not None}}
    if "model" in body and body["model"] != model:
        raise RequestError("model", f"model {str(body['model'])[:80]!r} does not exist; this "
                           f"server serves {model!r}", status=404, code="model_not_found")
    n = body.get("n", 1)
    if n is not None and (isinstance(n, bool) or n != 1):
        raise RequestError("n", f"n must be 1 (one completion per request), got {shown(n)}")
    if not isinstance(req["stream"], bool):
        raise RequestError("stream", f"stream must be true or false, got {req['stream']!r:.80}")
    return req


def _chunk(cid: str, created: int, model: str, text: str, finish) -> dict:
    return {"id": cid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}


async def completions(request):
    """POST /v1/completions: check, queue, and answer as events or as one JSON."""
    from starlette.requests import ClientDisconnect
    from starlette.responses import JSONResponse, Response

    state = request.app.state
    engine, model = state.engine, state.model
    try:
        req = parse_completion(await read_json(request, state.limits), model)
        job = engine.submit(req["prompt"], req["max_tokens"], req["temperature"],
                            req["top_k"], req["seed"])
    except ClientDisconnect:                  # left mid-upload: nobody to answer
        return Response(status_code=400)
    except RequestError as err:
        return json_error(err.status, str(err), err.field, err.code)
    except QueueFull as err:
        return json_error(429, f"{err}; retry shortly", code="rate_limit_exceeded",
                          headers={"Retry-After": "1"})
    except ShuttingDown as err:
        return json_error(503, str(err))
    cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    if req["stream"]:
        return EventStream(_events(job, engine, cid, created, model), state.limits.write_timeout)
    text = await until_disconnected(request.receive, _collect(job))
    if text is None:                          # the client left: its generation was cancelled
        return Response(status_code=400)
    if job.finish_reason == "error":
        return json_error(500, f"the engine failed ({engine.failure})", code="engine_error")
    usage = {"prompt_tokens": job.prime_chars, "completion_tokens": len(text),
             "total_tokens": job.prime_chars + len(text)}
    return JSONResponse({**_chunk(cid, created, model, text, job.finish_reason), "usage": usage})


async def _collect(job) -> str:
    return "".join([chunk async for chunk in job.chunks()])


async def _events(job, engine, cid: str, created: int, model: str):
    """The stream's frames: its text as it comes, a last chunk with the finish
    reason (or an error event naming the engine's failure), then `[DONE]`."""
    async for text in job.chunks():
        yield f"data: {json.dumps(_chunk(cid, created, model, text, None))}\n\n"
    if job.finish_reason == "error":
        error = {"message": f"the engine failed ({engine.failure})", "type": "server_error",
                 "param": None, "code": "engine_error"}
        yield f"data: {json.dumps({'error': error})}\n\n"
    else:
        yield f"data: {json.dumps(_chunk(cid, created, model, '', job.finish_reason))}\n\n"
    yield "data: [DONE]\n\n"


async def models(request):
    from starlette.responses import JSONResponse

    state = request.app.state
    return JSONResponse({"object": "list", "data": [
        {"id": state.model, "object": "model", "created": state.started, "owned_by": "charstream"}]})


async def healthz(request):
    from starlette.responses import JSONResponse

    engine = request.app.state.engine
    status = "failed" if engine.failure else "shutting down" if engine.closing else "ok"
    return JSONResponse({"status": status, "failure": engine.failure,
                         "model": request.app.state.model, **engine.stats()},
                        status_code=503 if engine.failure else 200)


async def metrics(request):
    from starlette.responses import PlainTextResponse

    return PlainTextResponse(prometheus(request.app.state.engine),
                             media_type="text/plain; version=0.0.4")


async def page(request):
    from starlette.responses import HTMLResponse

    text = PAGE.read_text(encoding="utf-8")
    return HTMLResponse(text.replace("{{MODEL}}", html.escape(request.app.state.model)))


async def _http_error(request, exc):
    """404, 405 and any other HTTP error as JSON in OpenAI's shape."""
    return json_error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path[:80]}",
                      headers=getattr(exc, "headers", None))


def create_app(engine: Engine, model: str, limits: HttpLimits | None = None,
               allowed_hosts=("*",), cors_origins=()):
    """The Starlette application over `engine`, serving the model named `model`.

    Args:
        limits: the HTTP layer's bounds (`HttpLimits()` by default).
        allowed_hosts: the `Host` names answered (`*`: any).
        cors_origins: origins a browser may call from (none by default: pages on
            other sites cannot read the answers).
    """
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.routing import Route

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        await engine.close()

    middleware = [Middleware(HostCheck, allowed=allowed_hosts)]
    if cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        middleware.append(Middleware(CORSMiddleware, allow_origins=list(cors_origins),
                                     allow_methods=["GET", "POST"],
                                     allow_headers=["Content-Type", "Authorization"]))
    app = Starlette(routes=[
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models), Route("/healthz", healthz), Route("/metrics", metrics),
        Route("/", page)], lifespan=lifespan, middleware=middleware,
        exception_handlers={HTTPException: _http_error})
    app.state.engine, app.state.model, app.state.started = engine, model, int(time.time())
    app.state.limits = limits or HttpLimits()
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
