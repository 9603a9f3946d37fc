"""Sessions against re-sending the text, and the session stores' own speed.

    python benchmarks/sessions.py                          # random default model
    python benchmarks/sessions.py --run runs/shakespeare --story 10000 --rounds 20

1. Continuing a story of `--story` characters: a server (`--max-prompt` raised to
   hold the story) is asked for the next 200 characters either by its session
   (`{"prompt": "", "session": id}`) or by sending the whole story as the prompt,
   alternately, `--rounds` times each. Reported: time to the first character
   (median and best; request sent to first text received, streamed) and the
   request's bytes. After timing, both answers are checked against the single
   stream of the whole story (`StreamGenerator.load(run, backend="native")`).
2. The stores in process: a state of the model written (`save`) and read back
   (`get`) `--ops` times each, for SQLite in a file (WAL) and, when
   `redis-server` is on the PATH, Redis on a free port; per second, with the
   bytes one session's state takes. Each state read is checked equal to the one
   written.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from load import free_port, make_run, start_server  # noqa: E402


async def request(port: int, body: dict) -> tuple[float, int, str, dict]:
    """(time to the first character, request bytes, the text, the last chunk)."""
    data = json.dumps({**body, "stream": True}).encode()
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
            b"application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % len(data))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = time.monotonic()
    writer.write(head + data)
    await reader.readuntil(b"\r\n\r\n")
    first, pending, events = None, b"", []
    while size := int((await reader.readline()).strip(), 16):   # chunked encoding
        pending += (await reader.readexactly(size + 2))[:-2]
        *ready, pending = pending.split(b"\n\n")
        for event in ready:
            if event.startswith(b"data: {"):
                events.append(json.loads(event[6:]))
                if first is None and events[-1].get("choices") and events[-1]["choices"][0]["text"]:
                    first = time.monotonic() - sent
    writer.close()
    text = "".join(e["choices"][0]["text"] for e in events if e.get("choices"))
    return first, len(head) + len(data), text, events[-1]


def continue_story(run: Path, story_chars: int, rounds: int, tmp: Path) -> list[str]:
    from charstream import StreamGenerator

    port = free_port()
    server = start_server(run, port, "--sessions", str(tmp / "bench.db"),
                          "--max-prompt", "200000")
    try:
        _, _, story, last = asyncio.run(request(port, {"prompt": "romeo:", "seed": 1,
                                                        "max_tokens": story_chars,
                                                        "session": True}))
        sid, story = last["session"], "romeo:" + story
        by_session, by_text = [], []
        for k in range(rounds):
            ask = {"max_tokens": 200, "seed": 1000 + k}
            fork = json.loads(subprocess.run(
                ["curl", "-s", "-X", "POST", f"http://127.0.0.1:{port}/v1/sessions/{sid}/fork"],
                capture_output=True, text=True).stdout)["id"]   # each round from the same story
            by_session.append(asyncio.run(request(port, {**ask, "prompt": "", "session": fork})))
            by_text.append(asyncio.run(request(port, {**ask, "prompt": story})))
    finally:
        server.terminate()
        server.wait(30)
    single = StreamGenerator.load(run, backend="native")
    for k in range(rounds):                 # correctness, after timing
        expected = single.generate(200, prime=story, seed=1000 + k)
        assert by_session[k][2] == expected and by_text[k][2] == expected, k
    rows = []
    for name, runs in (("session", by_session), ("whole text as the prompt", by_text)):
        ttfc = [r[0] for r in runs]
        rows.append(f"| {name} | {statistics.median(ttfc) * 1e3:.1f} ms | {min(ttfc) * 1e3:.1f} ms "
                    f"| {runs[0][1]:,} | {rounds} of {rounds} |")
    return rows


def redis_server(port: int):
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    return None


async def store_speed(store, state: bytes, fingerprint: str, ops: int) -> tuple[float, float]:
    record = await store.create(fingerprint, state, 1)
    began = time.perf_counter()
    for k in range(ops):
        await store.save(record.id, state, k, None)
    saved = ops / (time.perf_counter() - began)
    began = time.perf_counter()
    for _ in range(ops):
        got = await store.get(record.id)
    read = ops / (time.perf_counter() - began)
    assert got.state == state
    await store.close()
    return saved, read


def stores(run: Path, ops: int, tmp: Path) -> list[str]:
    from charstream import StreamGenerator
    from charstream.serving.sessions import RedisStore, SqliteStore

    gen = StreamGenerator.load(run, backend="native")
    gen.generate(100, prime="romeo:", seed=1)
    state = gen.state().to_bytes()
    rows = []
    sqlite = SqliteStore(str(tmp / "speed.db"), 86400, 10 ** 6)
    saved, read = asyncio.run(store_speed(sqlite, state, gen.backend.fingerprint, ops))
    rows.append(f"| SQLite file (WAL, synchronous NORMAL) | {saved:,.0f} | {read:,.0f} "
                f"| {len(state):,} |")
    port = free_port()
    proc = redis_server(port)
    if proc is not None:
        try:
            store = RedisStore(f"redis://127.0.0.1:{port}/0", 86400, 10 ** 6)
            saved, read = asyncio.run(store_speed(store, state, gen.backend.fingerprint, ops))
            rows.append(f"| Redis (loopback, no persistence) | {saved:,.0f} | {read:,.0f} "
                        f"| {len(state):,} |")
        finally:
            proc.terminate()
            proc.wait(10)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--story", type=int, default=10_000, help="characters (default: 10000)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--ops", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = args.run or make_run(tmp)
        print(f"Continuing a {args.story:,}-character story by 200 characters:\n")
        print("| continued by | first character, median | best | request bytes | texts equal |")
        print("|---|---|---|---|---|")
        for row in continue_story(run, args.story, args.rounds, tmp):
            print(row, flush=True)
        print("\nSession stores, in process:\n")
        print("| store | saves/s | reads/s | bytes per session state |")
        print("|---|---|---|---|")
        for row in stores(run, args.ops, tmp):
            print(row, flush=True)


if __name__ == "__main__":
    main()
