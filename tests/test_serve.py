"""python -m charstream.serve: uvicorn on a free 127.0.0.1 port, bounded in time,
always shut down. Both response forms, an OpenAI client, every bad input, a
client that leaves mid-stream, 429 when full, SIGTERM, and a real browser."""
import json
import os
import shutil
import signal

import pytest

from charstream import StreamGenerator
from servers import Server, metric, serving, sse_events, wait_for

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")


@pytest.fixture(scope="module")
def server(trained_run):
    # --max-tokens 100,000,000: a stream that lasts longer than any test, however
    # fast the step, and more than any socket buffer holds.
    with serving(trained_run, "--max-streams", "3", "--max-queue", "2", "--max-tokens",
                 "100000000", "--max-prompt", "100", "--flush-ms", "10") as server:
        yield server


@pytest.fixture(scope="module")
def alone(trained_run):
    gen = StreamGenerator.load(trained_run, backend="native")
    return lambda n, **kw: gen.generate(n, **kw)


def test_streamed_and_whole_completions_are_the_single_stream(server, trained_run, alone):
    expected = alone(300, prime="ROMEO:", seed=5, temperature=0.7, top_k=8)
    request = {"prompt": "ROMEO:", "max_tokens": 300, "seed": 5, "temperature": 0.7, "top_k": 8}
    status, headers, body = server.post({**request, "stream": True})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    chunks = sse_events(body)
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0] == {"text": "", "index": 0, "logprobs": None,
                                        "finish_reason": "length"}
    assert len(chunks) < 150  # characters travel together, not one event each
    status, _, body = server.post(request)
    doc = json.loads(body)
    assert status == 200 and doc["object"] == "text_completion"
    assert doc["choices"][0]["text"] == expected and doc["choices"][0]["finish_reason"] == "length"
    assert doc["usage"] == {"prompt_tokens": 6, "completion_tokens": 300, "total_tokens": 306}
    assert doc["model"] == trained_run.name


def test_an_openai_client_works(server, trained_run, alone):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="unused")
    [model] = [m.id for m in client.models.list()]
    assert model == trained_run.name
    whole = client.completions.create(model=model, prompt="JULIET:", max_tokens=50, seed=2,
                                      temperature=0.9)
    assert whole.choices[0].text == alone(50, prime="JULIET:", seed=2, temperature=0.9)
    parts = client.completions.create(model=model, prompt="JULIET:", max_tokens=50, seed=2,
                                      temperature=0.9, stream=True)
    assert "".join(p.choices[0].text for p in parts) == whole.choices[0].text
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model=model, prompt="x", max_tokens=5, temperature=-1)


@pytest.mark.parametrize("body, status, param, words", [
    ("{not json", 400, None, "not valid JSON"),
    ("[1, 2]", 400, None, "must be a JSON object, got list"),
    ({"prompt": 5}, 400, "prompt", "prompt must be a string, got 5"),
    ({"prompt": "a", "max_tokens": "ten"}, 400, "max_tokens", 'max_tokens must be an integer, got "ten"'),
    ({"prompt": "a", "max_tokens": 0}, 400, "max_tokens", "max_tokens must be a positive integer, got 0"),
    ({"prompt": "a", "max_tokens": 100000001}, 400, "max_tokens",
     "max_tokens must be at most 100000000, got 100000001"),
    ({"prompt": "a", "temperature": -0.5}, 400, "temperature",
     "temperature must be a finite number >= 0, got -0.5"),
    ({"prompt": "a", "temperature": "hot"}, 400, "temperature", 'temperature must be a number, got "hot"'),
    ({"prompt": "a", "top_k": 0}, 400, "top_k", "top_k must be a positive integer or None, got 0"),
    ({"prompt": "a", "seed": -1}, 400, "seed", "seed must be a non-negative integer, got -1"),
    ({"prompt": "a", "stream": "yes"}, 400, "stream", 'stream must be true or false, got "yes"'),
    ({"prompt": "a", "n": 2}, 400, "n", "n must be 1"),
    ({"prompt": "x" * 101}, 400, "prompt", "prompt has 101 characters; at most 100"),
    ({"prompt": "a", "model": "gpt-9"}, 404, "model", "model 'gpt-9' does not exist"),
])
def test_bad_input_is_a_4xx_naming_the_field_and_the_server_keeps_serving(
        server, body, status, param, words):
    got, headers, text = server.post(body, raw=isinstance(body, str))
    error = json.loads(text)["error"]
    assert got == status and headers["content-type"] == "application/json"
    assert error["param"] == param and words in error["message"], error
    assert server.post({"prompt": "a", "max_tokens": 3})[0] == 200


def test_an_unrepresentable_prompt_character_in_a_raw_run(raw_run):
    with serving(raw_run) as server:
        status, _, text = server.post({"prompt": "abZ", "max_tokens": 3})
        error = json.loads(text)["error"]
        assert status == 400 and error["param"] == "prompt"
        assert "'Z' (U+005A) at position 2 is not in the vocabulary" in error["message"]


def test_a_client_that_leaves_frees_its_stream(server):
    before = metric(server, "characters_total")
    conn = server.connection()
    conn.request("POST", "/v1/completions", json.dumps(
        {"prompt": "ROMEO:", "max_tokens": 100000000, "stream": True}),
        {"Content-Type": "application/json"})
    res = conn.getresponse()
    assert res.status == 200 and res.read(200)
    # Stepped, or parked once its unread ring is full (the client reads no more).
    assert metric(server, "active_streams") + metric(server, "parked_streams") == 1
    conn.close()  # mid-stream
    wait_for(lambda: metric(server, "active_streams") + metric(server, "parked_streams") == 0)
    assert metric(server, "characters_total") - before < 100_000_000      # it did not finish
    assert server.post({"prompt": "a", "max_tokens": 3})[0] == 200


def test_more_requests_than_streams_queue_then_get_429(server):
    conns = []
    try:
        for _ in range(5):  # 3 streams + 2 in the queue, all long
            conn = server.connection()
            conn.request("POST", "/v1/completions", json.dumps(
                {"prompt": "a", "max_tokens": 100000000, "stream": True}),
                {"Content-Type": "application/json"})
            conns.append(conn)
        # Nobody reads: the three are stepped or parked (a parked one keeps its slot).
        wait_for(lambda: metric(server, "active_streams") + metric(server, "parked_streams") == 3
                  and metric(server, "queued_streams") == 2)
        status, headers, text = server.post({"prompt": "a", "max_tokens": 3})
        assert status == 429 and headers["retry-after"] == "1"
        assert "all 3 streams are busy and 2 requests wait" in json.loads(text)["error"]["message"]
    finally:
        for conn in conns:
            conn.close()
    wait_for(lambda: metric(server, "active_streams") + metric(server, "parked_streams") == 0
              and metric(server, "queued_streams") == 0)
    assert server.post({"prompt": "a", "max_tokens": 3})[0] == 200


def test_models_health_and_metrics(server, trained_run):
    status, text = server.get("/v1/models")
    assert status == 200 and json.loads(text)["data"][0]["id"] == trained_run.name
    status, text = server.get("/healthz")
    assert status == 200 and json.loads(text)["status"] == "ok"
    before = metric(server, "characters_total")
    server.post({"prompt": "a", "max_tokens": 40})
    assert metric(server, "characters_total") == before + 40
    text = server.get("/metrics")[1]
    assert "# TYPE charstream_active_streams gauge" in text
    assert "# TYPE charstream_characters_total counter" in text


def test_sigterm_ends_the_streams_with_a_final_event_and_exits_0(trained_run):
    server = Server(trained_run, "--flush-ms", "10")
    try:
        conn = server.connection()
        conn.request("POST", "/v1/completions", json.dumps(
            {"prompt": "ROMEO:", "max_tokens": 100000, "stream": True}),
            {"Content-Type": "application/json"})
        res = conn.getresponse()
        first = res.read(100)
        assert first.startswith(b"data: ")
        server.proc.send_signal(signal.SIGTERM)
        rest = res.read().decode()                 # the stream ends, by itself
        assert server.proc.wait(30) == 0
    finally:
        server.stop(signal.SIGKILL)
    events = sse_events((first.decode() + rest)[(first.decode() + rest).index("data: "):])
    assert events[-1]["choices"][0]["finish_reason"] == "shutdown"
    assert "Traceback" not in server.proc.stderr.read()


# --------------------------------------------------------------------------- browser

def _browser():
    """A headless Chromium through Selenium, or a skip (a failure in CI, whose
    .ci/run installs Debian's chromium and chromium-driver)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (binary and driver_path):
        if os.environ.get("CI"):
            pytest.fail("CI must have chromium and chromedriver (.ci/run installs them)")
        pytest.skip("no chromium/chromedriver here (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver_path), options=options)


def test_the_page_streams_text_into_a_real_browser(server):
    browser = _browser()
    try:
        browser.set_page_load_timeout(30)
        browser.get(f"http://127.0.0.1:{server.port}/")
        assert "charstream" in browser.title
        prompt = browser.find_element("id", "prompt")
        prompt.clear()
        prompt.send_keys("JULIET:")
        length = browser.find_element("id", "max_tokens")
        length.clear()
        length.send_keys("3000")
        browser.find_element("id", "start").click()
        output = browser.find_element("id", "output")
        status = browser.find_element("id", "status")
        try:
            wait_for(lambda: len(output.text) > len("JULIET:") + 20, timeout=60)
            first = len(output.text)
            # And it grows (unless all 3,000 came before the first look: a fast step).
            wait_for(lambda: len(output.text) > first + 50 or "(length)" in status.text,
                     timeout=60)
            wait_for(lambda: "(length)" in status.text, timeout=60)
        except AssertionError:
            raise AssertionError(f"page status {status.text!r}, output {output.text[:80]!r}, "
                                 f"server {server.get('/healthz')[1]}") from None
        shown = browser.execute_script("return document.getElementById('output').textContent")
        assert shown.startswith("JULIET:") and len(shown) == len("JULIET:") + 3000
        assert "3000 characters" in status.text
    finally:
        browser.quit()
