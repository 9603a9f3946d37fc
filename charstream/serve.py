"""`python -m charstream.serve RUN_DIR`: many clients streaming from one model at once.

An HTTP server (Starlette on uvicorn; `pip install -e ".[serve]"`) over one
continuous-batching `Engine` (`charstream.serving`): every client's stream is a
row of one batched native step. No TensorFlow. The routes are
`charstream.serving.app`'s: `POST /v1/completions` (OpenAI-style), `GET
/v1/models`, `/healthz`, `/metrics`, and `/`, a page that streams as you watch.

Bad input is a 4xx JSON error naming the field and the value; more requests than
rows queue up to --max-queue, then get 429 with Retry-After; SIGTERM stops
accepting, ends every stream with a final event (finish_reason "shutdown") and
exits 0.
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from . import _cli
from .serving.app import create_app
from .serving.engine import Engine

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
