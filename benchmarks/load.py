"""Load on `python -m charstream.serve` over loopback: many streaming clients at once.

    python benchmarks/load.py                       # 16, 64, 256 clients, 10 s each
    python benchmarks/load.py --clients 256 --seconds 20 --run runs/shakespeare

For each client count N, a server with N streams (`--max-streams N`) runs in its
own process on 127.0.0.1; N asyncio clients (uvloop when installed) each stream
completions of `--tokens` characters back to back (every request a new seed) for
`--seconds`, then disconnect. Reported: the aggregate characters per second, the
time to the first character (request sent to first text received; p50 and p99
over all requests, and the p99 of those sent a second or more after the start,
where every client asks at once), the longest gap between two chunks of one
response (p99 over responses), and, beside it, the in-process `StreamGenerator.stream_batch` rate at
batch N on the same model (no HTTP, no scheduling): their ratio is what the
server keeps of the native step. Every finished response is checked against the
single stream of its seed (`StreamGenerator.load(run, backend="native")`).

The server's and the clients' CPU seconds over the run are read from /proc
(`utime + stime` of the server process and its threads; the benchmark's own).

`--engine`: the same clients against an in-process `Engine` (no HTTP, no
sockets): "Engine / stream_batch" is what the scheduling and the tick loop keep
of the step, and the gap between it and "HTTP / in-process" is the HTTP layer's.

**Human-speed profile** (`--human N [N ...]`): N clients each open one long
stream and read it as a person would, 30 characters a second (checked every
250 ms: a reader that wants its next 7-8 characters takes what has arrived, and
waits if there is not enough). Reported per N: the p99 wait for the first
characters, then the p50 and p99 of the readers' later waits (a wait: the time
from wanting characters to having them, 0 when they were there: the gaps a
reader sees; the reader's clock starts at its first characters, as a person
starts reading when the text appears, so the first wait is not counted twice),
the server's and the readers' CPU (cores: the readers share the machine, and
at 2,000 of them their own parsing is a core's worth), and how many texts equal
their seed's single stream (the prefix read). `--server` applies here too.
The largest N with p99 wait <= 250 ms and every text equal is what one process
holds. The benchmark raises its file-descriptor limit to the hard limit.

Without --run the model is the default LSTM(128) with random weights (the speed
does not depend on the weights), written to a temporary run directory.
Clients and server share this machine's cores, so the figures are a floor.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PRIME = "ROMEO:"


def make_run(folder: Path) -> Path:
    """A run directory with the default model's random weights."""
    import keras

    from charstream.config import TrainConfig
    from charstream.data.corpus import Corpus
    from charstream.data.text import Vocabulary
    from charstream.model import build_training_model, stream_weights
    from charstream.run import RunDir
    from charstream.weights import export_stream_weights

    run = RunDir(folder / "random")
    run.create(TrainConfig(), Corpus(folder / "none.txt", "", b"", Vocabulary.default()))
    keras.utils.set_random_seed(0)
    export_stream_weights(stream_weights(build_training_model()), run.stream_file, 16)
    return run.path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """One client: raw HTTP/1.1 over asyncio streams, server-sent events parsed."""

    def __init__(self, port: int, index: int, tokens: int):
        self.port, self.index, self.tokens = port, index, tokens
        self.ttfc, self.gaps, self.done = [], [], []   # done: (seed, text) of finished ones
        self.sent: list[float] = []                    # when each request of `ttfc` was sent
        self.chars = 0

    async def run(self, until: float) -> None:
        seed = self.index * 100_000
        while time.monotonic() < until:
            text = await self.one(seed, until)
            if text is not None:
                self.done.append((seed, text))
            seed += 1

    async def one(self, seed: int, until: float):
        body = json.dumps({"prompt": PRIME, "max_tokens": self.tokens, "seed": seed,
                           "temperature": 1.0, "stream": True}).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        sent = time.monotonic()
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        head = await reader.readuntil(b"\r\n\r\n")
        assert b" 200 " in head.split(b"\r\n")[0], head
        parts, pending, last, finished, longest = [], b"", None, False, 0.0
        try:
            while not finished:
                size = int((await reader.readline()).strip(), 16)   # chunked encoding
                data = await reader.readexactly(size + 2)
                if size == 0:
                    break
                pending += data[:-2]
                *events, pending = pending.split(b"\n\n")
                for event in events:
                    payload = event[6:]
                    if payload == b"[DONE]":
                        finished = True
                        continue
                    text = json.loads(payload)["choices"][0]["text"]
                    if not text:
                        continue
                    now = time.monotonic()
                    if last is None:
                        self.ttfc.append(now - sent)
                        self.sent.append(sent)
                    else:
                        longest = max(longest, now - last)
                    last = now
                    parts.append(text)
                    self.chars += len(text)
                if time.monotonic() > until:
                    return None                       # cut by the clock: not checked
        finally:
            writer.close()
            self.gaps.append(longest)
        return "".join(parts)


async def load(port: int, clients: int, seconds: float, tokens: int):
    until = time.monotonic() + seconds
    crowd = [Client(port, k, tokens) for k in range(clients)]
    started = time.monotonic()
    await asyncio.gather(*(c.run(until) for c in crowd))
    elapsed = time.monotonic() - started
    return crowd, elapsed


def cpu_seconds(pid: int | None = None) -> float:
    """utime + stime of a process (all its threads) and of its children (for
    --workers), from /proc."""
    pid = pid or os.getpid()
    total = 0.0
    for task in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{task}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()] if pid != os.getpid() else []


def start_server(run: Path, port: int, *options: str) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "charstream.serve", str(run), "--port",
                               str(port), *options], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return server
        except OSError:
            assert time.monotonic() < deadline and server.poll() is None
            time.sleep(0.1)


class Reader:
    """A person reading one stream at `rate` characters a second."""

    def __init__(self, port: int, index: int, rate: float = 30.0, every: float = 0.25):
        self.port, self.seed, self.rate, self.every = port, 50_000 + index, rate, every
        self.waits: list[float] = []
        self.first: float | None = None       # the wait for the first characters
        self.text = ""

    async def run(self, seconds: float) -> None:
        body = json.dumps({"prompt": PRIME, "max_tokens": int(self.rate * seconds) + 200,
                           "seed": self.seed, "stream": True}).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await reader.readuntil(b"\r\n\r\n")
        parts, pending, have = [], b"", 0
        started = time.monotonic()
        try:
            while (now := time.monotonic()) - started < seconds:
                wanted = int(self.rate * (now - started)) + 1
                waited_from = None
                while have < wanted:                 # read only what the person wants
                    waited_from = waited_from or time.monotonic()
                    size = int((await reader.readline()).strip(), 16)
                    pending += (await reader.readexactly(size + 2))[:-2]
                    *events, pending = pending.split(b"\n\n")
                    for event in events:
                        if event.startswith(b"data: {"):
                            text = json.loads(event[6:])["choices"][0]["text"]
                            parts.append(text)
                            have += len(text)
                wait = 0.0 if waited_from is None else time.monotonic() - waited_from
                if self.first is None:
                    # A person starts reading when the text appears: what came
                    # with the first characters is read from then on, at `rate`.
                    self.first, started = wait, time.monotonic() - have / self.rate
                else:
                    self.waits.append(wait)
                await asyncio.sleep(self.every)
        finally:
            writer.close()
        self.text = "".join(parts)


def human(run: Path, clients: int, seconds: float, extra=()) -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port = free_port()
    server = start_server(run, port, "--max-streams", str(clients), "--max-queue", "0",
                          "--max-connections", str(clients + 100), *extra)
    try:
        cpu_before, began = cpu_seconds(server.pid), time.monotonic()
        own_before = cpu_seconds()
        readers = [Reader(port, k) for k in range(clients)]

        async def crowd():
            await asyncio.gather(*(r.run(seconds) for r in readers))
        asyncio.run(crowd())
        took = time.monotonic() - began
        server_cpu = (cpu_seconds(server.pid) - cpu_before) / took
        clients_cpu = (cpu_seconds() - own_before) / took
    finally:
        server.terminate()
        server.wait(30)
    from charstream import StreamGenerator

    gen = StreamGenerator.load(run, backend="native", batch_size=clients)
    longest = max(len(r.text) for r in readers)
    rows = gen.stream_batch([PRIME] * clients, seeds=[r.seed for r in readers],
                            max_chars=longest)
    columns = ["".join(chars) for chars in zip(*rows)]
    good = sum(r.text == columns[k][:len(r.text)] for k, r in enumerate(readers))
    waits = [w for r in readers for w in r.waits]
    first = [r.first for r in readers if r.first is not None]
    return (f"| {clients} | {pct(first, 0.99) * 1e3:.0f} ms | {pct(waits, 0.5) * 1e3:.0f} ms "
            f"| {pct(waits, 0.99) * 1e3:.0f} ms | {max(waits) * 1e3:.0f} ms | {server_cpu:.2f} "
            f"| {clients_cpu:.2f} | {good} of {clients} |")


def in_process_rate(run: Path, batch: int, steps: int = 400) -> float:
    from charstream import StreamGenerator

    gen = StreamGenerator.load(run, backend="native", batch_size=batch)
    rows = gen.stream_batch([PRIME] * batch, seeds=range(batch))
    for _ in range(10):
        next(rows)
    started = time.perf_counter()
    for _ in range(steps):
        next(rows)
    return batch * steps / (time.perf_counter() - started)


def check(run: Path, crowd) -> tuple[int, int]:
    from charstream import StreamGenerator

    gen = StreamGenerator.load(run, backend="native")
    done = [(seed, text) for c in crowd for seed, text in c.done]
    good = sum(text == gen.generate(len(text), prime=PRIME, seed=seed) for seed, text in done)
    return good, len(done)


def after_start(crowd, skip: float = 1.0) -> list[float]:
    """The first-character times of requests sent `skip` seconds or more after
    the first: without the start, where every client asks at once."""
    start = min((t for c in crowd for t in c.sent), default=0.0)
    return [d for c in crowd for t, d in zip(c.sent, c.ttfc) if t - start >= skip]


def pct(values, q) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def measure(run: Path, clients: int, seconds: float, tokens: int, extra=()) -> str:
    port = free_port()
    server = start_server(run, port, "--max-streams", str(clients), "--max-queue", str(clients),
                          *extra)
    try:
        cpu_server, cpu_clients = cpu_seconds(server.pid), cpu_seconds()
        crowd, elapsed = asyncio.run(load(port, clients, seconds, tokens))
        cpu_server = cpu_seconds(server.pid) - cpu_server
        cpu_clients = cpu_seconds() - cpu_clients
    finally:
        server.terminate()
        server.wait(30)
    chars = sum(c.chars for c in crowd)
    ttfc = [t for c in crowd for t in c.ttfc]
    gaps = [g for c in crowd for g in c.gaps]
    good, total = check(run, crowd)
    local = in_process_rate(run, clients)
    rate = chars / elapsed
    return (f"| {clients} | {rate:,.0f} | {statistics.median(ttfc) * 1e3:.0f} ms "
            f"| {pct(ttfc, 0.99) * 1e3:.0f} ms | {pct(after_start(crowd), 0.99) * 1e3:.0f} ms "
            f"| {pct(gaps, 0.99) * 1e3:.0f} ms | {local:,.0f} "
            f"| {rate / local:.2f} | {cpu_server / elapsed:.2f} | {cpu_clients / elapsed:.2f} "
            f"| {good} of {total} |")


class EngineClient(Client):
    """A `Client` of an in-process `Engine`: the same requests, no HTTP."""

    def __init__(self, engine, index: int, tokens: int):
        super().__init__(0, index, tokens)
        self.engine = engine

    async def one(self, seed: int, until: float):
        sent, parts = time.monotonic(), []
        req = self.engine.submit(prime=PRIME, max_tokens=self.tokens, temperature=1.0, seed=seed)
        async for text in req.chunks():
            if not parts:
                self.ttfc.append(time.monotonic() - sent)
                self.sent.append(sent)
            parts.append(text)
            self.chars += len(text)
            if time.monotonic() > until:
                req.cancel()
                return None                           # cut by the clock: not checked
        return "".join(parts)


def engine_only(run: Path, clients: int, seconds: float, tokens: int) -> str:
    """The clients of `measure` against `charstream.serving.Engine` in this process:
    what the engine keeps of the step, before any HTTP."""
    from charstream.serving.engine import Engine

    async def crowd_of():
        engine = Engine.load(run, max_streams=clients, max_queue=clients)
        async with engine:
            crowd = [EngineClient(engine, k, tokens) for k in range(clients)]
            began = time.monotonic()
            await asyncio.gather(*(c.run(began + seconds) for c in crowd))
            return crowd, time.monotonic() - began

    cpu = cpu_seconds()
    crowd, elapsed = asyncio.run(crowd_of())
    cpu = (cpu_seconds() - cpu) / elapsed
    chars = sum(c.chars for c in crowd)
    ttfc = [t for c in crowd for t in c.ttfc]
    good, total = check(run, crowd)
    local = in_process_rate(run, clients)
    return (f"| {clients} | {chars / elapsed:,.0f} | {statistics.median(ttfc) * 1e3:.0f} ms "
            f"| {pct(ttfc, 0.99) * 1e3:.0f} ms | {pct(after_start(crowd), 0.99) * 1e3:.0f} ms "
            f"| {local:,.0f} | {chars / elapsed / local:.2f} "
            f"| {cpu:.2f} | {good} of {total} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--tokens", type=int, default=2000,
                        help="characters per completion (default: 2000)")
    parser.add_argument("--server", default="", metavar="ARGS",
                        help="more arguments for the server, e.g. \"--workers 2 --sessions "
                        "/tmp/s.db\"")
    parser.add_argument("--human", type=int, nargs="*", default=None, metavar="N",
                        help="run the human-speed profile for these reader counts instead")
    parser.add_argument("--engine", action="store_true",
                        help="the same clients against an in-process Engine instead (no HTTP)")
    args = parser.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or make_run(Path(tmp))
        if args.human is not None:
            print("| readers at 30 chars/s | first characters p99 | wait p50 | wait p99 "
                  "| longest wait | server CPU (cores) | readers CPU (cores) | texts equal |")
            print("|---|---|---|---|---|---|---|---|")
            for clients in args.human or [500, 1000, 2000]:
                print(human(run, clients, args.seconds, args.server.split()), flush=True)
            return
        if args.engine:
            print("| clients | characters/s | first character p50 | p99 | p99 after 1 s "
                  "| in-process stream_batch chars/s | Engine / stream_batch | CPU (cores) "
                  "| texts equal |")
            print("|---|---|---|---|---|---|---|---|---|")
            for clients in args.clients:
                print(engine_only(run, clients, args.seconds, args.tokens), flush=True)
            return
        print("| clients | characters/s | first character p50 | p99 | p99 after 1 s "
              "| longest gap p99 "
              "| in-process stream_batch chars/s | HTTP / in-process | server CPU (cores) "
              "| clients CPU (cores) | texts equal |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for clients in args.clients:
            print(measure(run, clients, args.seconds, args.tokens, args.server.split()),
                  flush=True)


if __name__ == "__main__":
    main()
