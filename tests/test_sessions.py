"""Sessions (`charstream.serving.sessions`) against real servers and real stores:
the contract for SQLite and Redis, streamed and whole, under concurrency; fork;
SIGKILL and restart; two servers on one Redis; 409, 404, expiry, eviction; no
prompt text kept unless asked."""
import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from charstream import StreamGenerator
from servers import Server, serving, sse_events, wait_for

pytest.importorskip("uvicorn")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url():
    """A redis-server of the test's own, on a free 127.0.0.1 port, no persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have redis-server (.ci/run installs it)")
        pytest.skip("no redis-server here (apt-get install redis-server)")
    pytest.importorskip("redis")
    port = _free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def single(trained_run):
    return StreamGenerator.load(trained_run, backend="native")


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "sessions.db")
    return request.getfixturevalue("redis_url")


def _complete(server, body):
    """One request, streamed or whole: (text, session id, finish reason)."""
    status, _, text = server.post(body)
    assert status == 200, text
    if body.get("stream"):
        chunks = sse_events(text)
        sid = chunks[0].get("session")
        assert chunks[-1].get("session") == sid
        return "".join(c["choices"][0]["text"] for c in chunks), sid, \
            chunks[-1]["choices"][0]["finish_reason"]
    doc = json.loads(text)
    return doc["choices"][0]["text"], doc.get("session"), doc["choices"][0]["finish_reason"]


def _story(server, k, rounds=4):
    """Session k: `rounds` requests, alternately streamed and whole; returns the
    prompts, the texts and the settings, for the reference."""
    prompts = [f"romeo {k}:", "", "\nnay, ", ""][:rounds]
    sid, done = True, []
    for r, prompt in enumerate(prompts):
        body = {"prompt": prompt, "max_tokens": 20 + 7 * r, "seed": 100 * k + r,
                "temperature": 0.9, "session": sid, "stream": bool((k + r) % 2)}
        text, got, _ = _complete(server, body)
        sid = got if sid is True else sid
        assert got == sid
        done.append((body, text))
    return sid, done


def _reference(single, done) -> None:
    whole = ""
    for body, text in done:
        expected = single.generate(body["max_tokens"], prime=whole + body["prompt"],
                                   seed=body["seed"], temperature=body["temperature"])
        assert text == expected, body
        whole += body["prompt"] + text


def test_sessions_continue_bit_for_bit_under_concurrency(trained_run, single, store):
    with serving(trained_run, "--sessions", store, "--max-streams", "4",
                 "--flush-ms", "2") as server:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            stories = list(pool.map(lambda k: _story(server, k), range(8)))
        for sid, done in stories:
            _reference(single, done)
            status, text = server.get(f"/v1/sessions/{sid}")
            info = json.loads(text)
            assert status == 200 and info["chars"] == sum(len(b["prompt"]) + len(t)
                                                          for b, t in done)
            assert info["model"] == trained_run.name and "text" not in info
            assert len(sid) >= 32        # 192 random bits, URL-safe
        metrics = server.get("/metrics")[1]
        assert "charstream_sessions 8.0" in metrics
        assert "charstream_max_sessions 100000.0" in metrics


def test_fork_gives_two_sessions_that_continue_independently(trained_run, single, store):
    with serving(trained_run, "--sessions", store) as server:
        sid, done = _story(server, 1, rounds=2)
        conn = server.connection()
        conn.request("POST", f"/v1/sessions/{sid}/fork")
        res = conn.getresponse()
        fork = json.loads(res.read())
        conn.close()
        assert res.status == 201 and fork["id"] != sid and fork["chars"] == json.loads(
            server.get(f"/v1/sessions/{sid}")[1])["chars"]
        a = {"prompt": " and", "max_tokens": 30, "seed": 7, "temperature": 0.9}
        b = {"prompt": " but", "max_tokens": 30, "seed": 8, "temperature": 0.9}
        text_a, _, _ = _complete(server, {**a, "session": sid})
        text_b, _, _ = _complete(server, {**b, "session": fork["id"]})
        _reference(single, done + [(a, text_a)])
        _reference(single, done + [(b, text_b)])


def test_a_server_killed_with_sigkill_continues_its_sessions(trained_run, single, store):
    server = Server(trained_run, "--sessions", store)
    try:
        sid, done = _story(server, 3, rounds=2)
    finally:
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)
    with serving(trained_run, "--sessions", store) as again:
        body = {"prompt": "", "max_tokens": 40, "seed": 9, "temperature": 0.9, "session": sid}
        text, _, _ = _complete(again, body)
        _reference(single, done + [(body, text)])


def test_two_servers_on_one_redis_continue_each_others_sessions(trained_run, single, redis_url):
    with serving(trained_run, "--sessions", redis_url) as one, \
            serving(trained_run, "--sessions", redis_url) as two:
        done, sid = [], True
        for r, server in enumerate([one, two, one, two]):
            body = {"prompt": "juliet:" if r == 0 else "", "max_tokens": 25, "seed": r,
                    "temperature": 0.9, "session": sid}
            text, got, _ = _complete(server, body)
            sid = got
            done.append((body, text))
        _reference(single, done)


def test_busy_unknown_wrong_model_expired_and_evicted(trained_run, raw_run, tmp_path):
    store = str(tmp_path / "s.db")
    with serving(trained_run, "--sessions", store, "--session-ttl", "3",
                 "--max-sessions", "3", "--flush-ms", "5") as server:
        _, sid, _ = _complete(server, {"prompt": "a", "max_tokens": 3, "session": True})
        conn = server.connection()                        # a long request holds it
        conn.request("POST", "/v1/completions", json.dumps(
            {"prompt": "", "max_tokens": 5000, "session": sid, "stream": True}),
            {"Content-Type": "application/json"})
        res = conn.getresponse()
        assert res.read(20)
        status, _, text = server.post({"prompt": "", "max_tokens": 3, "session": sid})
        assert status == 409 and "serving another request" in json.loads(text)["error"]["message"]
        conn.close()
        wait_for(lambda: server.post({"prompt": "", "max_tokens": 3, "session": sid})[0] == 200)
        for bad in ("x" * 32, "../../etc/passwd", "short"):
            status, _, text = server.post({"prompt": "", "max_tokens": 3, "session": bad})
            assert status == 404 and json.loads(text)["error"]["param"] == "session"
        assert server.get(f"/v1/sessions/{'y' * 32}")[0] == 404
        status, _, text = server.post({"prompt": "", "max_tokens": 3, "session": 5})
        assert status == 400
        # Eviction: a fourth session pushes out the least recently used.
        ids = [_complete(server, {"prompt": "a", "max_tokens": 2, "session": True})[1]
               for _ in range(3)]
        assert server.get(f"/v1/sessions/{sid}")[0] == 404
        assert all(server.get(f"/v1/sessions/{i}")[0] == 200 for i in ids)
        # Expiry: 3 s after last use.
        time.sleep(3.5)
        assert server.get(f"/v1/sessions/{ids[0]}")[0] == 404
        # DELETE.
        _, keep, _ = _complete(server, {"prompt": "a", "max_tokens": 2, "session": True})
        conn = server.connection()
        conn.request("DELETE", f"/v1/sessions/{keep}")
        res = conn.getresponse()
        assert res.status == 200 and json.loads(res.read())["deleted"] is True
        conn.close()
        assert server.get(f"/v1/sessions/{keep}")[0] == 404
        _, other_model, _ = _complete(server, {"prompt": "a", "max_tokens": 2, "session": True})
    # Another model on the same store: 409 naming both fingerprints.
    with serving(raw_run, "--sessions", store) as other:
        status, _, text = other.post({"prompt": "", "max_tokens": 2, "session": other_model})
        error = json.loads(text)["error"]
        assert status == 409 and "was made with the model" in error["message"]
        assert "this server serves" in error["message"]


def test_no_prompt_text_is_kept_unless_asked(trained_run, tmp_path):
    secret = "zebra quokka marmalade"
    for keep, path in ((False, tmp_path / "plain.db"), (True, tmp_path / "kept.db")):
        flags = ["--sessions", str(path)] + (["--sessions-keep-text"] if keep else [])
        with serving(trained_run, *flags) as server:
            _, sid, _ = _complete(server, {"prompt": secret, "max_tokens": 5, "session": True})
            info = json.loads(server.get(f"/v1/sessions/{sid}")[1])
        stored = b"".join(p.read_bytes() for p in tmp_path.glob(path.name + "*"))
        assert (secret.encode() in stored) == keep
        assert ("text" in info and info["text"].startswith(secret)) == keep


def test_the_pages_continue_button_continues_the_same_session(trained_run, single, tmp_path):
    from test_serve import _browser

    with serving(trained_run, "--sessions", str(tmp_path / "page.db")) as server:
        browser = _browser()
        try:
            browser.set_page_load_timeout(30)
            browser.get(f"http://127.0.0.1:{server.port}/")
            for field, value in (("prompt", "romeo:"), ("seed", "4"), ("max_tokens", "60")):
                box = browser.find_element("id", field)
                box.clear()
                box.send_keys(value)
            browser.find_element("id", "start").click()
            status = browser.find_element("id", "status")
            wait_for(lambda: "60 characters (length)" in status.text, timeout=60)
            more = browser.find_element("id", "continue")
            wait_for(more.is_enabled, timeout=10)
            more.click()
            wait_for(lambda: "60 characters (length)" in status.text and more.is_enabled(),
                     timeout=60)
            shown = browser.execute_script("return document.getElementById('output').textContent")
        finally:
            browser.quit()
    first = single.generate(60, prime="romeo:", seed=4, temperature=0.8)
    second = single.generate(60, prime="romeo:" + first, seed=4, temperature=0.8)
    assert shown == "romeo:" + first + second


def test_workers_share_the_port_and_the_sessions(trained_run, single, tmp_path):
    store = str(tmp_path / "workers.db")
    server = Server(trained_run, "--workers", "2", "--sessions", store)
    try:
        sid, done = _story(server, 5, rounds=4)       # each request may land on either
        _reference(single, done)
        assert server.stop() == 0, server.proc.stderr.read()[-3000:]   # SIGTERM reaches both
    finally:
        server.stop(signal.SIGKILL)
    out = subprocess.run([sys_executable(), "-m", "charstream.serve", str(trained_run),
                          "--workers", "2"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "needs a --sessions store the processes share" in out.stderr


def sys_executable():
    import sys
    return sys.executable
