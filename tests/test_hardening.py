"""The server against hostile and careless clients: one test per finding of
issue 24, each against a real `python -m charstream.serve` on 127.0.0.1, bounded
in time. Every row and queue place comes back, every limit is bounded, a crash
is seen, every error is JSON."""
import json
import select
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from servers import Server, metric, serving, sse_events, wait_for
from weight_files import meta_with, write_lying_header

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

JSON = {"Content-Type": "application/json"}


def _raw(server, data: bytes = b"", rcvbuf: int | None = None) -> socket.socket:
    """A socket to the server that has sent `data` and reads nothing yet."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(data)
    return sock


def _post_bytes(body: bytes, content_type="application/json", extra="") -> bytes:
    return (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}"
            f"\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def _status_line(sock) -> bytes:
    return sock.recv(4096).split(b"\r\n", 1)[0]


def _serve_stderr(run) -> str:
    """`python -m charstream.serve RUN` refusing to start: exit 2, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "charstream.serve", str(run), "--port", "1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-500:]
    return proc.stderr


def _error(server, body, **kw):
    status, headers, text = server.post(body, **kw)
    assert headers["content-type"] == "application/json", (status, text)
    return status, json.loads(text)["error"]


@pytest.fixture(scope="module")
def one_row(trained_run):
    """One row, one queue place: whatever keeps a row or a place shows at once."""
    with serving(trained_run, "--max-streams", "1", "--max-queue", "1", "--flush-ms", "0.2",
                 "--max-tokens", "100000000",   # endless at any speed of the step
                 "--stall-timeout", "2", "--body-timeout", "1", "--header-timeout", "1",
                 "--max-body", "4096", "--name", "<b>bold</b>") as server:
        yield server


def _free(server):
    wait_for(lambda: metric(server, "active_streams") == 0
             and metric(server, "queued_streams") == 0, timeout=30)
    assert server.post({"prompt": "a", "max_tokens": 3})[0] == 200


# 1 -------------------------------------------------------------------------------------
def test_a_finished_stream_nobody_reads_gives_its_row_back(one_row):
    # Fewer characters than --buffer: the stream finishes rather than parks.
    body = json.dumps({"prompt": "a", "max_tokens": 50000, "stream": True}).encode()
    idle = _raw(one_row, _post_bytes(body), rcvbuf=4096)   # reads nothing, ever
    try:
        wait_for(lambda: metric(one_row, "active_streams") == 1)
        started = time.monotonic()
        status, _, _ = one_row.post({"prompt": "a", "max_tokens": 3})
        # Queued behind the idle reader until its deadline (stall-timeout 2 s) passed.
        assert status == 200 and time.monotonic() - started < 20
    finally:
        idle.close()
    _free(one_row)


# 2 -------------------------------------------------------------------------------------
def test_weights_that_disagree_with_their_meta_are_refused_at_start(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    good = dict(np.load(run / "stream.npz"))
    with open(run / "stream.npz", "wb") as fh:
        np.savez(fh, **{**good, "meta": meta_with(good, depth=30)})
    stderr = _serve_stderr(run)
    assert f"{run / 'stream.npz'}: lstm_1_kernel has shape" in stderr


_FAILING = """
import sys
from charstream import serve
from charstream.streaming.native import NativeBackend
calls = [0]
def failing(step):
    def fail_later(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] > 50:
            raise FloatingPointError("a step failed")
        return step(self, *args, **kwargs)
    return fail_later
NativeBackend.step_rows = failing(NativeBackend.step_rows)
NativeBackend.tick_rows = failing(NativeBackend.tick_rows)
sys.exit(serve.main(sys.argv[1:]))
"""


def test_a_crash_of_the_tick_loop_fails_every_request_and_exits_1(trained_run, monkeypatch):
    monkeypatch.setattr(Server, "command", [sys.executable, "-c", _FAILING])
    server = Server(trained_run, "--flush-ms", "1")
    try:
        status, _, body = server.post({"prompt": "a", "max_tokens": 100000, "stream": True})
        assert status == 200
        last = sse_events(body)[-1]
        assert last["error"]["type"] == "server_error"
        assert "FloatingPointError: a step failed" in last["error"]["message"]
        assert server.proc.wait(30) == 1
    finally:
        server.stop()
    stderr = server.proc.stderr.read()
    assert stderr.count("Traceback") == 1 and "FloatingPointError" in stderr


# 3 -------------------------------------------------------------------------------------
def test_the_body_is_bounded_in_size_and_in_time(one_row):
    big = _raw(one_row, b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
               b"application/json\r\nContent-Length: 100000000\r\n\r\n" + b"{" * 1000)
    try:
        assert b" 413 " in _status_line(big)        # refused before the body is read
    finally:
        big.close()
    slow = _raw(one_row, _post_bytes(b"{" * 1000)[:-1000] + b'{"prompt": ')
    try:
        started = time.monotonic()
        assert b" 408 " in _status_line(slow)       # --body-timeout 1
        assert time.monotonic() - started < 10
    finally:
        slow.close()
    _free(one_row)


# 4 -------------------------------------------------------------------------------------
def test_a_whole_answer_whose_client_leaves_is_cancelled(one_row):
    body = json.dumps({"prompt": "a", "max_tokens": 100000000}).encode()
    gone = _raw(one_row, _post_bytes(body))
    wait_for(lambda: metric(one_row, "active_streams") == 1)
    gone.close()
    started = time.monotonic()
    _free(one_row)                                  # 100,000,000 characters would take longer
    assert time.monotonic() - started < 10


# 5 -------------------------------------------------------------------------------------
def test_headers_trickled_slowly_are_cut_off(one_row):
    socks = [_raw(one_row, b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
             for _ in range(20)]
    try:
        started = time.monotonic()
        for sock in socks:
            sock.sendall(b"X-Slow: 1\r\n")
        for sock in socks:                          # closed by --header-timeout 1
            sock.settimeout(10)
            while sock.recv(4096):
                pass
        assert time.monotonic() - started < 10
    finally:
        for sock in socks:
            sock.close()
    _free(one_row)


def test_connections_beyond_the_limit_get_503(trained_run):
    with serving(trained_run, "--max-connections", "4", "--header-timeout", "30") as server:
        # uvicorn's limit_concurrency counts the connection asking: the 4th is refused.
        held = [_raw(server, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                for _ in range(3)]
        try:
            for sock in held:                        # each served, then kept alive
                assert b" 200 " in _status_line(sock)
            status, _, text = server.post({"prompt": "a", "max_tokens": 3})
            assert status == 503, text
        finally:
            for sock in held:
                sock.close()
        wait_for(lambda: server.post({"prompt": "a", "max_tokens": 3})[0] == 200)


# 6 -------------------------------------------------------------------------------------
def test_deep_json_and_huge_numbers_are_400(trained_run):
    with serving(trained_run, "--max-body", str(1 << 20)) as server:
        deep = '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}"
        status, error = _error(server, deep, raw=True)
        assert status == 400 and "nested more than 32 deep" in error["message"]
        status, error = _error(server, '{"prompt": "a", "temperature": 1' + "0" * 400 + "}",
                               raw=True)
        assert status == 400 and error["param"] == "temperature"
        assert len(error["message"]) < 200


# 7 -------------------------------------------------------------------------------------
def _keep_reading(sock) -> None:
    try:
        while sock.recv(65536):
            pass
    except OSError:         # shut down under it: done
        pass


def test_a_queued_client_that_leaves_gives_its_place_back(one_row):
    body = json.dumps({"prompt": "a", "max_tokens": 100000000, "stream": True}).encode()
    busy = _raw(one_row, _post_bytes(body))
    try:
        assert b" 200 " in _status_line(busy)
        # It keeps reading (a reader that stops would be parked and its row freed),
        # so the row stays busy for the whole test, however fast the step.
        threading.Thread(target=_keep_reading, args=(busy,), daemon=True).start()
        queued = _raw(one_row, _post_bytes(json.dumps({"prompt": "a", "max_tokens": 3}).encode()))
        wait_for(lambda: metric(one_row, "queued_streams") == 1)
        queued.close()
        wait_for(lambda: metric(one_row, "queued_streams") == 0)
        # The place is free again: the next request waits in it (no 429 at once)
        # and is served once the busy stream is gone.
        third = one_row.connection()
        third.request("POST", "/v1/completions", json.dumps(
            {"prompt": "a", "max_tokens": 3}), JSON)
        assert not select.select([third.sock], [], [], 1.0)[0]
    finally:
        busy.shutdown(socket.SHUT_RDWR)    # wakes the reading thread; close alone would not
        busy.close()
    assert third.getresponse().status == 200
    third.close()
    _free(one_row)


# 8 -------------------------------------------------------------------------------------
def test_a_temperature_below_float32_is_argmax(one_row):
    def text(temperature):
        status, _, body = one_row.post({"prompt": "ROMEO:", "max_tokens": 80, "seed": 3,
                                        "temperature": temperature})
        assert status == 200
        return json.loads(body)["choices"][0]["text"]
    argmax = text(0)
    assert text(1e-40) == argmax and text(1e-300) == argmax
    assert len(set(argmax)) > 1      # not the last symbol over and over


# 9 -------------------------------------------------------------------------------------
def _serve_refuses(run, words):
    started = time.monotonic()
    stderr = _serve_stderr(run)
    assert len(stderr) < 300 and words in stderr, stderr
    assert time.monotonic() - started < 30


def test_hostile_weight_sizes_are_one_line_exit_2(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    good = dict(np.load(run / "stream.npz"))
    with open(run / "stream.npz", "wb") as fh:
        np.savez(fh, **{**good, "meta": meta_with(good, layers=3_000_000)})
    _serve_refuses(run, "must be an integer in [1, 64]")
    write_lying_header(run / "stream.npz", good, "dense_bias", (10 ** 12,))   # 10^12 floats
    _serve_refuses(run, "dense_bias has shape (1000000000000,)")


# 10 ------------------------------------------------------------------------------------
def test_cross_site_posts_rebinding_and_the_page_name(one_row):
    status, _, text = one_row.post(json.dumps({"prompt": "a"}), raw=True,
                                   headers={"Content-Type": "text/plain"})
    assert status == 415 and "Content-Type: application/json" in text
    conn = one_row.connection()
    conn.request("GET", "/v1/models", headers={"Host": "evil.example:8000"})   # rebinding
    res = conn.getresponse()
    assert res.status == 400 and "evil.example" in json.loads(res.read())["error"]["message"]
    conn.close()
    page = one_row.get("/")[1]
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    status, headers, _ = one_row.post({"prompt": "a", "max_tokens": 3},
                                      headers={**JSON, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in headers


# 11 ------------------------------------------------------------------------------------
def test_the_small_ones(one_row, trained_run, tmp_path):
    for method, path, status in (("GET", "/nowhere", 404), ("GET", "/v1/completions", 405)):
        conn = one_row.connection()
        conn.request(method, path)
        res = conn.getresponse()
        assert res.status == status and res.getheader("content-type") == "application/json"
        assert json.loads(res.read())["error"]["message"]
        conn.close()
    status, error = _error(one_row, {"prompt": "a", "n": True})
    assert status == 400 and error["param"] == "n"
    status, error = _error(one_row, {"prompt": "a", "model": "m" * 3000})
    assert status in (400, 404) and len(error["message"]) < 300
    status, error = _error(one_row, {"prompt": "a", "n": "x" * 3000})
    assert status == 400 and len(error["message"]) < 300
    # A client that leaves mid-upload is not an ERROR in the log.
    half = _raw(one_row, _post_bytes(b'{"prompt": "abc"}' + b" " * 2000)[:-1500])
    half.close()
    _free(one_row)
    # Bad weights at start name the file.
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "stream.npz").write_bytes(b"not a zip")
    proc = subprocess.run([sys.executable, "-m", "charstream.serve", str(run), "--port", "1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and f"{run / 'stream.npz'}: not a readable .npz" in proc.stderr


def test_the_log_shows_no_tracebacks(one_row):
    # Runs last in this module: everything above happened on this server.
    assert one_row.proc.poll() is None
    one_row.stop()
    stderr = one_row.proc.stderr.read()
    assert "Traceback" not in stderr and "ERROR" not in stderr, stderr[-2000:]
