"""A real `python -m charstream.serve` for tests: its own process on a free
127.0.0.1 port, bounded in time, always shut down."""
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m charstream.serve RUN` in a process of its own, on 127.0.0.1."""

    command = [sys.executable, "-m", "charstream.serve"]

    def __init__(self, run, *options):
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [*self.command, str(run), "--host", "127.0.0.1",
             "--port", str(self.port), *options],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.monotonic() < deadline, "the server did not start in 60 s"
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)

    def connection(self, timeout=30):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def get(self, path):
        conn = self.connection()
        try:
            conn.request("GET", path)
            res = conn.getresponse()
            return res.status, res.read().decode()
        finally:
            conn.close()

    def post(self, body, raw=False, headers=None):
        conn = self.connection()
        try:
            data = body if raw else json.dumps(body)
            conn.request("POST", "/v1/completions", data,
                         headers or {"Content-Type": "application/json"})
            res = conn.getresponse()
            return res.status, dict(res.getheaders()), res.read().decode()
        finally:
            conn.close()

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


@contextlib.contextmanager
def serving(run, *options):
    server = Server(run, *options)
    try:
        yield server
    finally:
        server.stop()


def sse_events(body: str) -> list:
    assert body.endswith("data: [DONE]\n\n")
    events = [e for e in body.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    return [json.loads(e[6:]) for e in events[:-1]]


def metric(server, name) -> float:
    text = server.get("/metrics")[1]
    line = next(l for l in text.splitlines() if l.startswith(f"charstream_{name} "))
    return float(line.split()[1])


def wait_for(condition, timeout=20):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.05)
