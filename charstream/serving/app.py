"""The HTTP app over an `Engine`: routes, request parsing, errors, metrics.

    POST /v1/completions   OpenAI-style: prompt, max_tokens, temperature, top_k, top_p,
                           min_p, seed, stop, logprobs, echo, stream (true:
                           text/event-stream chunks, then [DONE]), stream_options
    GET  /v1/models        the run being served
    GET  /healthz          liveness and the engine's state
    GET  /metrics          Prometheus (prometheus_client): gauges, counters, latency histograms
    GET  /                 a page that streams into the browser as you watch

The request's fields are checked once, by the engine
(`charstream.serving.request.check_request`); this layer checks only what is
HTTP's own (the body is a JSON object, `model`, `stream`, `stream_options`, and
that no field is silently ignored: OpenAI fields not implemented here are a 400
unless at their neutral value, unknown fields a 400, and only `user`, which
cannot change the output, is ignored) and maps a `RequestError` to a 4xx answer
naming its field. Every error, 404 and 405
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
from .http import (DONE, EventStream, HostCheck, HttpLimits, json_error, read_json,
                   until_disconnected)
from .metrics import Metrics, Timing
from . import sessions
from .request import RequestError, shown
from ..streaming.sampling import Piece

PAGE = Path(__file__).with_name("page.html")
# The fields a completion request may set, with their defaults; prompt is the
# engine's `prime`. The engine checks their values.
DEFAULTS = {"prompt": "", "max_tokens": 16, "temperature": 1.0, "top_k": None, "seed": None,
            "top_p": 1.0, "min_p": 0.0, "stop": None, "logprobs": None, "echo": False}
# HTTP's own: checked here.
OWN = ("model", "n", "stream", "stream_options")
# OpenAI fields this server does not implement: accepted only at the value that
# changes nothing, a 400 naming the field otherwise.
NEUTRAL = {"n": 1, "best_of": 1, "suffix": "", "logit_bias": {}, "presence_penalty": 0,
           "frequency_penalty": 0, "repetition_penalty": 1}
# Fields that cannot change the output: ignored.
IGNORED = ("user",)


def parse_completion(body, model: str) -> dict:
    """The request's fields with their defaults, HTTP's own checked (the engine
    checks the rest); RequestError naming the first bad one, an unknown field
    and a field this server does not implement included."""
    if not isinstance(body, dict):
        raise RequestError(None, f"the body must be a JSON object, got {type(body).__name__}")
    for name, value in body.items():
        _known(name, value)
    req = {**DEFAULTS, **{k: body[k] for k in DEFAULTS if k in body and body[k] is not None}}
    if "model" in body and body["model"] != model:
        raise RequestError("model", f"model {str(body['model'])[:80]!r} does not exist; this "
                           f"server serves {model!r}", status=404, code="model_not_found")
    req["stream"] = body.get("stream") or False
    if not isinstance(req["stream"], bool):
        raise RequestError("stream", f"stream must be true or false, got {shown(req['stream'])}")
    req["include_usage"] = _include_usage(body.get("stream_options"), req["stream"])
    req["session"] = body.get("session")
    if req["session"] not in (None, True) and not isinstance(req["session"], str):
        raise RequestError("session", f"session must be true (start one) or a session id, "
                           f"got {shown(req['session'])}")
    return req


def _known(name, value) -> None:
    if name in DEFAULTS or name in IGNORED or name in ("model", "stream", "stream_options",
                                                           "session"):
        return
    if name in NEUTRAL:
        if value is not None and (isinstance(value, bool) or value != NEUTRAL[name]):
            raise RequestError(name, f"{name} must be {json.dumps(NEUTRAL[name])} or null "
                               f"(this server does not implement other values), got "
                               f"{shown(value)}")
        return
    raise RequestError(name, f"unknown field {shown(name)}; docs/serving.md lists the fields "
                       f"this server takes")


def _include_usage(options, stream: bool) -> bool:
    if options is None:
        return False
    if not stream:
        raise RequestError("stream_options", "stream_options is only allowed with stream: true")
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise RequestError("stream_options", f"stream_options must be "
                           f"{{\"include_usage\": true|false}}, got {shown(options)}")
    flag = options.get("include_usage", False)
    if not isinstance(flag, bool):
        raise RequestError("stream_options", f"stream_options.include_usage must be true or "
                           f"false, got {shown(flag)}")
    return flag


def _chunk(cid: str, created: int, model: str, text: str, finish, logprobs=None) -> dict:
    return {"id": cid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"text": text, "index": 0, "logprobs": logprobs,
                         "finish_reason": finish}]}


def _logprobs(piece, offset: int) -> dict:
    """OpenAI's completions logprobs for `piece` (a `Piece`), whose first
    character is at `offset` of the whole answer: characters are the tokens."""
    return {"tokens": list(piece), "token_logprobs": piece.token_logprobs,
            "top_logprobs": piece.top_logprobs,
            "text_offset": list(range(offset, offset + len(piece)))}


async def completions(request):
    """POST /v1/completions: check, queue, and answer as events or as one JSON."""
    from starlette.requests import ClientDisconnect
    from starlette.responses import JSONResponse, Response

    state = request.app.state
    engine, model = state.engine, state.model
    session = None
    try:
        req = parse_completion(await read_json(request, state.limits), model)
        session = await _Session.open(state, req["session"])
        if session is not None:
            session.prompt = req["prompt"]
        job = engine.submit(req["prompt"], req["max_tokens"], req["temperature"], req["top_k"],
                            req["seed"], top_p=req["top_p"], min_p=req["min_p"],
                            stop=req["stop"], logprobs=req["logprobs"], echo=req["echo"],
                            state=None if session is None else session.state)
    except Exception as err:
        if session is not None:
            await session.abandon()
        if isinstance(err, ClientDisconnect):   # left mid-upload: nobody to answer
            return Response(status_code=400)
        if isinstance(err, RequestError):
            return json_error(err.status, str(err), err.field, err.code)
        if isinstance(err, QueueFull):
            return json_error(429, f"{err}; retry shortly", code="rate_limit_exceeded",
                              headers={"Retry-After": "1"})
        if isinstance(err, ShuttingDown):
            return json_error(503, str(err))
        raise
    answer = _Answer(job, model, Timing(state.metrics, job), session)
    if req["stream"]:
        return EventStream(_events(answer, engine, req["include_usage"]),
                           state.limits.write_timeout)
    pieces = None
    try:
        pieces = await until_disconnected(request.receive, _collect(job))
    finally:
        await answer.end(pieces)
    if pieces is None:                        # the client left: its generation was cancelled
        return Response(status_code=400)
    if job.finish_reason == "error":
        return json_error(500, f"the engine failed ({engine.failure})", code="engine_error")
    answer.timing.chunk()
    answer.timing.done()
    return JSONResponse({**answer.chunk(_whole(pieces), job.finish_reason), "usage": job.usage,
                         **answer.session_field()})


class _Session:
    """A request's session: found (or made), held busy while the request runs,
    and saved when it ends whole (`charstream.serving.sessions`)."""

    LEASE = 600.0     # seconds a session stays busy if its server dies mid-request

    def __init__(self, store, sid: str, state, new: bool):
        self.store, self.id, self.state, self.new = store, sid, state, new
        self.prompt = ""            # kept with the text only under --sessions-keep-text

    @classmethod
    async def open(cls, app_state, wanted):
        from ..streaming.state import State, StateError

        if wanted is None:
            return None
        store, engine = app_state.sessions, app_state.engine
        if wanted is True:
            record = await store.create(engine.fingerprint)
            await store.acquire(record.id, cls.LEASE)
            return cls(store, record.id, None, True)
        record = await store.get(wanted) if sessions.valid_id(wanted) else None
        if record is None:
            raise RequestError("session", f"session {shown(wanted)} does not exist (or expired)",
                               status=404, code="session_not_found")
        if record.fingerprint != engine.fingerprint:
            raise RequestError("session", f"session {shown(wanted)} was made with the model "
                               f"{record.fingerprint}; this server serves {engine.fingerprint}",
                               status=409, code="session_model_mismatch")
        if not await store.acquire(record.id, cls.LEASE):
            raise RequestError("session", f"session {shown(wanted)} is serving another "
                               f"request; one at a time", status=409, code="session_busy")
        try:
            state = None if record.state is None else State.from_bytes(record.state)
        except StateError as err:
            await store.release(record.id)
            raise RequestError("session", f"session {shown(wanted)}: {err}", status=500) from None
        return cls(store, record.id, state, False)

    async def abandon(self) -> None:
        """The request never started: a new session goes, an old one is free."""
        if self.new:
            await self.store.delete(self.id)
        else:
            await self.store.release(self.id)

    async def end(self, job, completion: str) -> None:
        try:
            state = job.state
            if state is not None:
                await self.store.save(self.id, state.to_bytes(), state.chars,
                                      self.prompt + completion)
        finally:
            await self.store.release(self.id)


async def _collect(job) -> list:
    return [chunk async for chunk in job.chunks()]


def _whole(pieces: list) -> str:
    """The pieces as one (a `Piece` when they carry log-probabilities)."""
    if pieces and isinstance(pieces[0], Piece):
        return Piece("".join(pieces), [v for p in pieces for v in p.token_logprobs],
                     [t for p in pieces for t in p.top_logprobs])
    return "".join(pieces)


class _Answer:
    """What every chunk of one answer shares, and where its text has got to."""

    def __init__(self, job, model: str, timing: Timing, session: _Session | None):
        self.job, self.model, self.timing, self.session = job, model, timing, session
        self.id, self.created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        self.offset = 0
        self.texts: list[str] = []
        self._head = self._tail = None

    def frame(self, text: str) -> bytes:
        """A plain chunk's event, pre-encoded: only the text is escaped per chunk
        (`json.dumps` of the whole dict gave the same bytes, three times slower)."""
        if self._head is None:
            whole = json.dumps(_chunk(self.id, self.created, self.model, "\0", None))
            head, tail = whole.split('"\\u0000"')
            self._head, self._tail = f"data: {head}".encode(), f"{tail}\n\n".encode()
        self.offset += len(text)
        return self._head + json.dumps(text).encode() + self._tail

    def session_field(self) -> dict:
        return {} if self.session is None else {"session": self.session.id}

    async def end(self, pieces) -> None:
        """Save the session (if any) with what the request read."""
        if self.session is not None:
            await self.session.end(self.job, "".join(self.texts if pieces is None else pieces))

    def chunk(self, text: str, finish=None) -> dict:
        logprobs = None
        if isinstance(text, Piece):
            logprobs = _logprobs(text, self.offset)
        elif self.job.checked.logprobs is not None:     # the last, empty chunk
            logprobs = _logprobs(Piece("", [], []), self.offset)
        self.offset += len(text)
        return _chunk(self.id, self.created, self.model, str(text), finish, logprobs)


async def _events(answer: _Answer, engine, include_usage: bool):
    """The stream's frames: its text as it comes, a last chunk with the finish
    reason (or an error event naming the engine's failure), the usage chunk when
    asked for, then `[DONE]`."""
    job = answer.job
    first = True
    try:
        async for text in job.chunks():
            answer.timing.chunk()
            if answer.session is not None:
                answer.texts.append(text)
            if first or isinstance(text, Piece):
                chunk = answer.chunk(text)
                if first:
                    chunk.update(answer.session_field())
                    first = False
                yield f"data: {json.dumps(chunk)}\n\n"
            else:
                yield answer.frame(text)
    finally:
        await answer.end(None)
    # The last events travel as one frame, ending with `[DONE]`: one write, the
    # body's end included (`EventStream`).
    if job.finish_reason == "error":
        error = {"message": f"the engine failed ({engine.failure})", "type": "server_error",
                 "param": None, "code": "engine_error"}
        last = [{"error": error}]
    else:
        answer.timing.done()
        last = [{**answer.chunk("", job.finish_reason), **answer.session_field()}]
        if include_usage:
            last.append({**_chunk(answer.id, answer.created, answer.model, "", None),
                         "choices": [], "usage": job.usage})
    yield "".join(f"data: {json.dumps(event)}\n\n" for event in last) + DONE


async def _record_of(request):
    """The session the path names, or a 404 JSON answer."""
    sid = request.path_params["sid"]
    record = await request.app.state.sessions.get(sid) if sessions.valid_id(sid) else None
    if record is None:
        return None, json_error(404, f"session {shown(sid)} does not exist (or expired)",
                                "session", "session_not_found")
    return record, None


def _describe(record, model: str) -> dict:
    out = {"id": record.id, "object": "session", "model": model,
           "fingerprint": record.fingerprint, "chars": record.chars,
           "created": record.created, "last_used": record.last_used}
    if record.text is not None:
        out["text"] = record.text
    return out


async def session_info(request):
    """GET /v1/sessions/{id}: its length, model and times; DELETE: forget it."""
    from starlette.responses import JSONResponse

    store = request.app.state.sessions
    record, error = await _record_of(request)
    if error is not None:
        return error
    if request.method == "DELETE":
        if not await store.acquire(record.id, 1.0):
            return json_error(409, f"session {shown(record.id)} is serving a request",
                              "session", "session_busy")
        await store.delete(record.id)
        return JSONResponse({"id": record.id, "object": "session", "deleted": True})
    return JSONResponse(_describe(record, request.app.state.model))


async def session_fork(request):
    """POST /v1/sessions/{id}/fork: a new session with the same state."""
    from starlette.responses import JSONResponse

    record, error = await _record_of(request)
    if error is not None:
        return error
    copy = await request.app.state.sessions.create(record.fingerprint, record.state,
                                                   record.chars, record.text)
    return JSONResponse(_describe(copy, request.app.state.model), status_code=201)


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
    from starlette.responses import Response

    state = request.app.state
    state.metrics.sessions.set(await state.sessions.count())
    body, content_type = state.metrics.text()
    return Response(body, media_type=content_type)


async def page(request):
    from starlette.responses import HTMLResponse

    text = PAGE.read_text(encoding="utf-8")
    return HTMLResponse(text.replace("{{MODEL}}", html.escape(request.app.state.model)))


async def _http_error(request, exc):
    """404, 405 and any other HTTP error as JSON in OpenAI's shape."""
    return json_error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path[:80]}",
                      headers=getattr(exc, "headers", None))


def create_app(engine: Engine, model: str, limits: HttpLimits | None = None,
               allowed_hosts=("*",), cors_origins=(), store=None):
    """The Starlette application over `engine`, serving the model named `model`.

    Args:
        store: the session store (`charstream.serving.sessions`; default: SQLite
            in memory, a day's time to live, 100,000 sessions).
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
        try:
            yield
        finally:
            await engine.close()
            await app.state.sessions.close()

    middleware = [Middleware(HostCheck, allowed=allowed_hosts)]
    if cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        middleware.append(Middleware(CORSMiddleware, allow_origins=list(cors_origins),
                                     allow_methods=["GET", "POST"],
                                     allow_headers=["Content-Type", "Authorization"]))
    app = Starlette(routes=[
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/sessions/{sid}", session_info, methods=["GET", "DELETE"]),
        Route("/v1/sessions/{sid}/fork", session_fork, methods=["POST"]),
        Route("/v1/models", models), Route("/healthz", healthz), Route("/metrics", metrics),
        Route("/", page)], lifespan=lifespan, middleware=middleware,
        exception_handlers={HTTPException: _http_error})
    app.state.engine, app.state.model, app.state.started = engine, model, int(time.time())
    app.state.limits = limits or HttpLimits()
    app.state.sessions = store or sessions.SqliteStore(":memory:", 86400.0, 100_000)
    app.state.metrics = Metrics(engine, app.state.sessions)
    return app
