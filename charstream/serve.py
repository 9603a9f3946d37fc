"""`python -m charstream.serve RUN_DIR`: many clients streaming from one model at once.

An HTTP server (Starlette on uvicorn; `pip install -e ".[serve]"`) over one
continuous-batching `Engine` (`charstream.serving`): every client's stream is a
row of one batched native step. No TensorFlow. The routes are
`charstream.serving.app`'s: `POST /v1/completions` (OpenAI-style), `GET
/v1/models`, `/healthz`, `/metrics`, and `/`, a page that streams as you watch.

Bad input is a 4xx JSON error naming the field and the value; more requests than
rows queue up to --max-queue, then get 429 with Retry-After; SIGTERM stops
accepting, ends every stream with a final event (finish_reason "shutdown") and
exits 0. Every read, write and connection is bounded (the flags below, with
their defaults in docs/serving.md); if the engine's loop fails, every stream
ends with an error event, /healthz answers 503, and the process exits 1 for its
process manager to restart it.
"""
from __future__ import annotations

import argparse
import resource
import signal
import socket
import sys
from pathlib import Path

from . import _cli
from .serving.app import create_app
from .serving.engine import Engine
from .serving.http import HttpLimits, guarded_protocol, quiet_uvicorn
from .serving.sessions import open_store

LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")

PROG = "python -m charstream.serve"


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
                        help="how often each client is sent what is ready, up to 64 active "
                        "streams; longer in proportion beyond, at most 100 ms (default: 20)")
    parser.add_argument("--buffer", type=int, default=65_536,
                        help="characters a slow client may fall behind before its stream "
                        "pauses (default: 65536)")
    parser.add_argument("--stall-timeout", type=float, default=60.0,
                        help="seconds a paused stream waits for its client (default: 60)")
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes, each with its own engine, sharing the port "
                        "(SO_REUSEPORT) and --sessions (a file or redis://) (default: 1)")
    parser.add_argument("--name", default=None,
                        help="the model's name in the API (default: the run directory's name)")
    kept = parser.add_argument_group("sessions")
    kept.add_argument("--sessions", default=":memory:", metavar="PATH|redis://HOST:PORT/DB",
                      help="where sessions are kept: a SQLite file (WAL), ':memory:' (the "
                      "default: lost at exit), or Redis, shared by several servers")
    kept.add_argument("--session-ttl", type=float, default=86400.0, metavar="S",
                      help="a session expires this long after its last request (default: 86400)")
    kept.add_argument("--max-sessions", type=int, default=100_000, metavar="N",
                      help="sessions kept at most; the least recently used go first "
                      "(default: 100000)")
    kept.add_argument("--sessions-keep-text", action="store_true",
                      help="keep each session's text too (by default only its state: "
                      "continuing needs no text)")
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-body", type=int, default=1 << 20, metavar="BYTES",
                        help="the largest request body; more is 413 (default: 1048576)")
    limits.add_argument("--body-timeout", type=float, default=10.0, metavar="S",
                        help="seconds to receive a whole body; slower is 408 (default: 10)")
    limits.add_argument("--header-timeout", type=float, default=10.0, metavar="S",
                        help="seconds to receive a request's line and headers, else the "
                        "connection is closed (default: 10)")
    limits.add_argument("--keep-alive", type=float, default=5.0, metavar="S",
                        help="seconds an idle keep-alive connection stays open (default: 5)")
    limits.add_argument("--max-connections", type=int, default=1000, metavar="N",
                        help="connections and requests at once; more are answered 503 "
                        "(default: 1000)")
    limits.add_argument("--max-json-depth", type=int, default=32, metavar="N",
                        help="the deepest nesting of a JSON body; deeper is 400 (default: 32)")
    limits.add_argument("--allowed-hosts", default=None, metavar="H,H",
                        help="Host names answered, comma-separated, '*' for any (default: "
                        "the loopback names and --host)")
    limits.add_argument("--cors-origins", default="", metavar="O,O",
                        help="origins whose pages may call the API (default: none)")
    return parser


def _check_limits(args) -> None:
    for flag in ("max_streams", "max_tokens", "max_prompt", "buffer", "max_body",
                 "max_connections", "max_json_depth", "max_sessions"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be a positive integer, got "
                             f"{getattr(args, flag)}")
    for flag in ("flush_ms", "stall_timeout", "body_timeout", "header_timeout", "keep_alive",
                 "session_ttl"):
        if not getattr(args, flag) > 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be a positive number, got "
                             f"{getattr(args, flag)}")
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in [1, 65535], got {args.port}")
    if args.workers < 1:
        raise ValueError(f"--workers must be a positive integer, got {args.workers}")
    if args.workers > 1 and args.sessions == ":memory:":
        raise ValueError("--workers above 1 needs a --sessions store the processes share "
                         "(a SQLite file or redis://...): each would have its own in memory")


def _raise_file_limit() -> None:
    """Every connection is a file descriptor: lift the soft limit to the hard one,
    so --max-connections, not the default 1024 descriptors, is what bounds them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


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


def _listen(host: str, port: int, reuse: bool) -> socket.socket:
    """The listening socket; with `reuse`, several processes bind the port and
    the kernel spreads new connections among them (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _supervise(argv: list[str], workers: int) -> int:
    """Run `workers` copies of this server on one port; forward SIGTERM and
    SIGINT to them; exit with the first non-zero status (a worker whose engine
    failed exits 1, and the others are stopped, for a process manager)."""
    import os
    import subprocess
    import time

    threads = max(1, (os.cpu_count() or 1) // workers)   # the cores, shared out
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    children = [subprocess.Popen([sys.executable, "-m", "charstream.serve", *argv,
                                  "--workers", "1", "--reuse-port"], env=env)
                for _ in range(workers)]

    asked = []   # the signal a stop was asked with

    def forward(sig, _frame):
        asked.append(sig)
        for child in children:
            if child.poll() is None:
                child.send_signal(sig)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    while any(child.poll() is None for child in children):
        for child in children:
            code = child.poll()
            # A worker still importing when the stop came dies of the signal
            # itself, before its handler exists: that is the stop, not a failure.
            if code in (None, 0) or (asked and code == -asked[0]):
                continue
            if not status:
                status = code
                forward(signal.SIGTERM, None)
        time.sleep(0.2)
    if not status and asked and asked[0] == signal.SIGINT:
        return 130
    return status


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        import uvicorn  # noqa: F401
        import starlette  # noqa: F401
    except ImportError as err:
        return _cli.fail(PROG, f"the server needs its extra: pip install \"charstream[serve]\" ({err})")
    try:
        _check_limits(args)
        if args.workers > 1:
            Engine.load(args.run_dir, max_streams=1)   # refuse a bad run before forking
            return _supervise([a for a in argv], args.workers)
        engine = Engine.load(args.run_dir, max_streams=args.max_streams, max_queue=args.max_queue,
                             max_tokens=args.max_tokens, max_prime=args.max_prompt,
                             buffer=args.buffer, flush=args.flush_ms / 1000,
                             stall_timeout=args.stall_timeout)
        store = open_store(args.sessions, args.session_ttl, args.max_sessions,
                           args.sessions_keep_text)
    except _cli.BAD_INPUT as err:
        return _cli.fail(PROG, err)
    import uvicorn

    model = args.name or Path(args.run_dir).resolve().name
    limits = HttpLimits(args.max_body, args.body_timeout, args.max_json_depth,
                        args.stall_timeout)
    hosts = (args.allowed_hosts.split(",") if args.allowed_hosts
             else [*LOOPBACK, args.host])
    app = create_app(engine, model, limits, hosts,
                     [o for o in args.cors_origins.split(",") if o], store)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                            timeout_graceful_shutdown=10, http=guarded_protocol(args.header_timeout),
                            timeout_keep_alive=args.keep_alive,
                            limit_concurrency=args.max_connections)
    server = _server(config, engine)
    try:
        sock = _listen(args.host, args.port, args.reuse_port)
    except OSError as err:
        return _cli.fail(PROG, f"cannot listen on {args.host}:{args.port} ({err})")
    failed = []

    def on_failure(failure: str) -> None:  # exit 1, for a process manager to restart it
        failed.append(failure)
        server.should_exit = True

    engine.when_failed(on_failure)
    quiet_uvicorn()
    try:
        _raise_file_limit()
    except (ValueError, OSError):
        pass
    # uvicorn re-raises the signal it stopped for once it has shut down: exit 0
    # for SIGTERM (a clean stop), 130 for Ctrl-C, without a traceback.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))
    print(f"serving {model} ({engine.max_streams} streams) on http://{args.host}:{args.port}",
          flush=True)
    server.run(sockets=[sock])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
