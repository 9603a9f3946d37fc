"""`python -m charstream.serve RUN_DIR`: many clients streaming from one model at once.

An HTTP server (Starlette on uvicorn; `pip install -e ".[serve]"`) over one
continuous-batching `Engine` (`charstream.engine`): every client's stream is a
row of one batched native step. No TensorFlow.

    POST /v1/completions   OpenAI-style: prompt, max_tokens, temperature, top_k, seed,
                           stream (true: text/event-stream chunks, then [DONE])
    GET  /v1/models        the run being served
    GET  /healthz          liveness and the engine's state
    GET  /metrics          Prometheus text: active, queued and parked streams, characters/s
    GET  /                 a page that streams into the browser as you watch

Bad input is a 4xx JSON error naming the field and the value; more requests than
rows queue up to --max-queue, then get 429 with Retry-After; SIGTERM stops
accepting, ends every stream with a final event (finish_reason "shutdown") and
exits 0.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
import uuid
from pathlib import Path

from . import _cli
from .engine import Engine, QueueFull, ShuttingDown

PROG = "python -m charstream.serve"
PAGE = Path(__file__).with_name("page.html")
DEFAULTS = {"prompt": "", "max_tokens": 16, "temperature": 1.0, "top_k": None, "seed": None,
            "stream": False}


class BadRequest(ValueError):
    """A request field with a bad value: a 400 naming `param`."""

    def __init__(self, param: str, message: str, status: int = 400, code=None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


def _error(status: int, message: str, param=None, code=None, headers=None):
    from starlette.responses import JSONResponse

    body = {"error": {"message": message, "type": "invalid_request_error" if status < 500
                      else "server_error", "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def parse_completion(body, model: str, engine: Engine) -> dict:
    """The request's settings, each checked, or BadRequest naming the first bad one."""
    if not isinstance(body, dict):
        raise BadRequest(None, f"the body must be a JSON object, got {type(body).__name__}")
    req = {**DEFAULTS, **{k: body[k] for k in DEFAULTS if k in body and body[k] is not None}}
    if "model" in body and body["model"] != model:
        raise BadRequest("model", f"model {body['model']!r} does not exist; this server "
                         f"serves {model!r}", status=404, code="model_not_found")
    if body.get("n", 1) != 1:
        raise BadRequest("n", f"n must be 1 (one completion per request), got {body['n']!r}")
    if not isinstance(req["prompt"], str):
        raise BadRequest("prompt", f"prompt must be a string, got {json.dumps(req['prompt'])[:80]}")
    if not isinstance(req["stream"], bool):
        raise BadRequest("stream", f"stream must be true or false, got {req['stream']!r}")
    for name, kind in (("max_tokens", int), ("temperature", (int, float)),
                       ("top_k", int), ("seed", int)):
        value = req[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            what = "a number" if name == "temperature" else "an integer"
            raise BadRequest(name, f"{name} must be {what}, got {json.dumps(value)[:80]}")
    if req["seed"] is not None and req["seed"] < 0:
        raise BadRequest("seed", f"seed must be a non-negative integer, got {req['seed']}")
    try:
        engine.check(req["prompt"], req["max_tokens"], req["temperature"], req["top_k"])
    except ValueError as err:
        message = str(err)
        param = next((p for p in ("max_tokens", "temperature", "top_k") if message.startswith(p)),
                     "prompt")
        raise BadRequest(param, message) from None
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
        req = parse_completion(body, model, engine)
        job = engine.submit(req["prompt"], req["max_tokens"], req["temperature"],
                            req["top_k"], req["seed"])
    except BadRequest as err:
        return _error(err.status, str(err), err.param, err.code)
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
    return JSONResponse({"status": "shutting down" if engine._closing else "ok",
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


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a directory written by charstream.train")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--max-streams", type=int, default=256,
                        help="streams generated at once, the rows of the batch (default: 256)")
    parser.add_argument("--max-queue", type=int, default=1024,
                        help="requests that may wait for a row; more get 429 (default: 1024)")
    parser.add_argument("--max-tokens", type=int, default=100_000,
                        help="the largest max_tokens a request may ask for (default: 100000)")
    parser.add_argument("--max-prompt", type=int, default=4096,
                        help="the longest prompt, in characters (default: 4096)")
    parser.add_argument("--flush-ms", type=float, default=20.0,
                        help="how often each client is sent what is ready (default: 20)")
    parser.add_argument("--buffer", type=int, default=65_536,
                        help="characters a slow client may fall behind before its stream "
                        "pauses (default: 65536)")
    parser.add_argument("--stall-timeout", type=float, default=60.0,
                        help="seconds a paused stream waits for its client (default: 60)")
    parser.add_argument("--name", default=None,
                        help="the model's name in the API (default: the run directory's name)")
    return parser


def _server(config, engine: Engine):
    """uvicorn's server, told to end the engine's streams when a signal comes."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            # Stop taking requests and end every stream with a final event, so
            # uvicorn's wait for open connections ends at once.
            engine.shutdown_soon()
            super().handle_exit(sig, frame)

    return Server(config)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import uvicorn  # noqa: F401
        import starlette  # noqa: F401
    except ImportError as err:
        return _cli.fail(PROG, f"the server needs its extra: pip install \"charstream[serve]\" ({err})")
    try:
        if not 1 <= args.port <= 65535:
            raise ValueError(f"--port must be in [1, 65535], got {args.port}")
        engine = Engine.load(args.run_dir, max_streams=args.max_streams, max_queue=args.max_queue,
                             max_tokens=args.max_tokens, max_prime=args.max_prompt,
                             buffer=args.buffer, flush=args.flush_ms / 1000,
                             stall_timeout=args.stall_timeout)
    except _cli.BAD_INPUT as err:
        return _cli.fail(PROG, err)
    import uvicorn

    model = args.name or Path(args.run_dir).resolve().name
    config = uvicorn.Config(create_app(engine, model), host=args.host, port=args.port,
                            log_level="warning", timeout_graceful_shutdown=10)
    server = _server(config, engine)
    # uvicorn re-raises the signal it stopped for once it has shut down: exit 0
    # for SIGTERM (a clean stop), 130 for Ctrl-C, without a traceback.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))
    print(f"serving {model} ({engine.max_streams} streams) on http://{args.host}:{args.port}",
          flush=True)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
