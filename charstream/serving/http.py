"""What keeps the HTTP layer bounded: every read, write and connection has a limit.

- `read_json`: the body capped (413 before reading past `max_body`), read within
  `body_timeout` (408), JSON only (415 for another content type), nested at most
  `max_depth` deep (400).
- `EventStream`: server-sent events written with a deadline per write; a client
  that reads nothing for `write_timeout` seconds has its connection closed, and
  one that leaves is noticed at once (the generation is cancelled).
- `until_disconnected`: the same for a whole JSON answer.
- `HostCheck`: `Host` held to the allowed names (DNS rebinding), answered in JSON.
- `guarded_protocol`: uvicorn's httptools protocol with a deadline on reading
  the request line and headers (slowloris).

Starlette and uvicorn are imported inside the functions that need them.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import weakref

from .request import RequestError

log = logging.getLogger("charstream.serve")

DONE = "data: [DONE]\n\n"       # an event stream's last event
DONE_BYTES = DONE.encode()


@dataclasses.dataclass(frozen=True)
class HttpLimits:
    """The HTTP layer's bounds (each a `python -m charstream.serve` flag)."""

    max_body: int = 1 << 20          # bytes of a request body
    body_timeout: float = 10.0       # seconds to receive the whole body
    max_depth: int = 32              # nesting of the JSON body
    write_timeout: float = 60.0      # seconds a write may wait for a client that does not read


def json_error(status: int, message: str, field=None, code=None, headers=None):
    """An error in OpenAI's shape."""
    from starlette.responses import JSONResponse

    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": field, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _depth(value) -> int:
    """Nesting depth of a parsed JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1)
                         for child in (node.values() if isinstance(node, dict) else node))
    return deepest


async def _body(request, limits: HttpLimits) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body:
        raise RequestError(None, f"the body has {declared} bytes; at most {limits.max_body}",
                           status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_body:
            raise RequestError(None, f"the body is over {limits.max_body} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request, limits: HttpLimits):
    """The request's JSON body, within every limit.

    Raises:
        RequestError: 400 (not JSON, too deep), 408 (too slow), 413 (too large),
            415 (not `application/json`).
        starlette.requests.ClientDisconnect: the client left mid-upload.
    """
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise RequestError(None, "the body must be JSON, sent with Content-Type: "
                           f"application/json (got {kind[:60]!r})", status=415)
    try:
        raw = await _within(_body(request, limits), limits.body_timeout)
    except asyncio.TimeoutError:
        raise RequestError(None, f"the body did not arrive within {limits.body_timeout:g} s",
                           status=408) from None
    try:
        body = json.loads(raw)
    except RecursionError:
        raise RequestError(None, f"the JSON body is nested more than {limits.max_depth} deep")
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestError(None, f"the body is not valid JSON: {str(err)[:120]}") from None
    if _depth(body) > limits.max_depth:
        raise RequestError(None, f"the JSON body is nested more than {limits.max_depth} deep")
    return body


async def _within(work, seconds: float):
    """`await work`, or TimeoutError after `seconds`. Python 3.11's
    `asyncio.timeout` is a timer on the running task; `wait_for` (3.10) makes a
    task of its own for every request body."""
    if not hasattr(asyncio, "timeout"):
        return await asyncio.wait_for(work, seconds)
    async with asyncio.timeout(seconds):
        return await work


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnected(receive, work):
    """Await the coroutine `work` unless the client leaves first (then it is
    cancelled, and None returned)."""
    task, watcher = asyncio.ensure_future(work), asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})   # let it unwind: a cancel is not yet cancelled()
    return None if task.cancelled() else task.result()


class EventStream:
    """An ASGI `text/event-stream` response over an async iterator of frames.

    Each write must complete within `write_timeout` seconds: a client that stops
    reading has its connection closed then, and the iterator is closed (so the
    request it reads is cancelled and its row freed). A client that leaves ends
    it at once. A frame ending with `DONE` is the last: the body ends with it,
    in the same write. Two tasks per stream (the writer, the disconnect watcher); the
    deadlines of all streams are one timer's (`_WriteWatch`).
    """

    HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
               (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]

    def __init__(self, frames, write_timeout: float):
        self.frames, self.write_timeout = frames, write_timeout
        self.sending_since: float | None = None    # when the write in progress began
        self.writer: asyncio.Task | None = None

    async def __call__(self, scope, receive, send) -> None:
        self.writer = asyncio.ensure_future(self._write(send))
        tasks = [self.writer, asyncio.ensure_future(_disconnected(receive))]
        watch = _WriteWatch.of_loop()
        watch.add(self)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.streams.discard(self)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.frames.aclose()

    async def _write(self, send) -> None:
        loop = asyncio.get_running_loop()
        await send({"type": "http.response.start", "status": 200, "headers": self.HEADERS})
        async for frame in self.frames:
            self.sending_since = loop.time()
            body = frame if isinstance(frame, bytes) else frame.encode()
            last = body.endswith(DONE_BYTES)    # the body ends in the same write
            await send({"type": "http.response.body", "body": body, "more_body": not last})
            self.sending_since = None
            if last:
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def timed_out(self) -> None:
        """A write waited `write_timeout`: the writer is cancelled, which ends the
        response with its body unfinished, and uvicorn closes the connection
        (and says so: `_Quiet` turns that line into ours)."""
        log.warning("closed a stream whose client read nothing for %g s", self.write_timeout)
        self.writer.cancel()


class _WriteWatch:
    """The write deadlines of every `EventStream` on one event loop, checked by
    one task every quarter of the shortest timeout (a timer task per stream
    cost as much as the rest of the stream's bookkeeping at 256 clients)."""

    _loops: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    def __init__(self):
        self.streams: set[EventStream] = set()
        self.task: asyncio.Task | None = None
        self.period = 0.0                        # seconds between checks

    @classmethod
    def of_loop(cls) -> "_WriteWatch":
        loop = asyncio.get_running_loop()
        watch = cls._loops.get(loop)
        if watch is None:
            watch = cls._loops[loop] = cls()
        return watch

    def add(self, stream: EventStream) -> None:
        self.streams.add(stream)
        period = stream.write_timeout / 4
        if self.task is not None and not self.task.done() and period < self.period:
            self.task.cancel()                   # a shorter deadline: check sooner
            self.task = None
        if self.task is None or self.task.done():
            self.period = period
            self.task = asyncio.ensure_future(self._run())
        self.period = min(self.period, period)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.streams:
            await asyncio.sleep(self.period)
            now = loop.time()
            for stream in list(self.streams):
                since = stream.sending_since
                if since is not None and now - since >= stream.write_timeout:
                    self.streams.discard(stream)
                    stream.timed_out()


class _Quiet(logging.Filter):
    """Drop uvicorn's error line for a response we ended on purpose."""

    def filter(self, record) -> bool:
        return "returned without completing response" not in record.getMessage()


def quiet_uvicorn() -> None:
    logging.getLogger("uvicorn.error").addFilter(_Quiet())


class HostCheck:
    """ASGI middleware: `Host` must be one of `allowed` (port ignored; `*`
    allows any), else 400 in JSON. Without it a page on another site could read
    this server's answers through DNS rebinding."""

    def __init__(self, app, allowed):
        self.app, self.allowed = app, {h.lower() for h in allowed}

    def _ok(self, host: str) -> bool:
        if "*" in self.allowed:
            return True
        if host.startswith("["):                       # [::1]:8000
            name = host.split("]")[0] + "]"
        else:                                          # localhost:8000, 127.0.0.1
            name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        return name.lower() in self.allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not self._ok(host):
                response = json_error(400, f"Host {host[:80]!r} is not allowed here "
                                      "(see --allowed-hosts)", field="host")
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def guarded_protocol(header_timeout: float):
    """uvicorn's httptools protocol, with the request line and headers of every
    request to arrive within `header_timeout` seconds, else the connection is
    closed (uvicorn has no such limit of its own)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _header_timer = None

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return GuardedHttpToolsProtocol
