"""The completions API its clients expect (issue 20), against a real server:
stop strings never leaked across chunks, logprobs, echo scoring, usage in
streams, nucleus sampling, no field silently ignored, the metrics histograms,
the official openai client, and the page's stop box and hover."""
import json

import numpy as np
import pytest

from charstream import StreamGenerator
from servers import metric, serving, sse_events, wait_for

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")


@pytest.fixture(scope="module")
def fine(trained_run):
    """Chunks of a few characters each (--flush-ms 0.3): stops fall across them."""
    with serving(trained_run, "--flush-ms", "0.3", "--max-prompt", "200") as server:
        yield server


@pytest.fixture(scope="module")
def single(trained_run):
    return StreamGenerator.load(trained_run, backend="native")


def _stream(server, body):
    status, _, text = server.post({**body, "stream": True})
    assert status == 200, text
    return sse_events(text)


def test_a_stop_string_is_never_sent_even_across_chunks(fine, single):
    free = single.generate(3000, prime="romeo:", seed=7)
    # Stops the model does produce, each 2-3 characters: many chunk boundaries
    # fall inside one of their occurrences at 0.3 ms a chunk.
    for stop in (free[800:802], free[1500:1503], [free[2000:2003], "zzz"]):
        chunks = _stream(fine, {"prompt": "romeo:", "seed": 7, "max_tokens": 3000, "stop": stop})
        texts = [c["choices"][0]["text"] for c in chunks]
        first = min(free.index(s) for s in ([stop] if isinstance(stop, str) else stop)
                    if s in free)
        assert "".join(texts) == free[:first]
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        assert len(texts) > 5                       # it did travel in pieces
    status, _, body = fine.post({"prompt": "romeo:", "seed": 7, "max_tokens": 3000,
                                 "stop": free[800:802]})
    doc = json.loads(body)
    assert doc["choices"][0]["text"] == free[:free.index(free[800:802])]
    assert doc["choices"][0]["finish_reason"] == "stop"
    assert doc["usage"]["completion_tokens"] == len(doc["choices"][0]["text"])


def test_logprobs_streamed_and_whole_in_openais_shape(fine, single):
    body = {"prompt": "juliet:", "seed": 3, "max_tokens": 200, "temperature": 0.8,
            "top_p": 0.9, "logprobs": 2}
    chunks = _stream(fine, body)
    whole = json.loads(fine.post(body)[2])["choices"][0]
    expected = list(single.stream(max_chars=200, prime="juliet:", seed=3, temperature=0.8,
                                  top_p=0.9, logprobs=2))
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == whole["text"] == "".join(expected)
    streamed = [c["choices"][0]["logprobs"] for c in chunks[:-1]]
    tokens = [t for lp in streamed for t in lp["tokens"]]
    offsets = [o for lp in streamed for o in lp["text_offset"]]
    assert tokens == list(text) == whole["logprobs"]["tokens"]
    assert offsets == list(range(len(text))) == whole["logprobs"]["text_offset"]
    got = [v for lp in streamed for v in lp["token_logprobs"]]
    np.testing.assert_allclose(got, [p.token_logprobs[0] for p in expected], atol=2e-5)
    np.testing.assert_allclose(whole["logprobs"]["token_logprobs"], got, rtol=0, atol=0)
    for top, char in zip(whole["logprobs"]["top_logprobs"], text):
        assert char in top and len(top) <= 3 and all(v <= 0 for v in top.values())


def test_echo_with_max_tokens_0_scores_a_text_as_evaluation_does(fine, single):
    text = "first citizen:\nbefore we proceed any further, hear me speak."
    doc = json.loads(fine.post({"prompt": text, "max_tokens": 0, "echo": True,
                                "logprobs": 1})[2])
    choice = doc["choices"][0]
    assert choice["text"] == text and doc["usage"]["completion_tokens"] == 0
    single.reset()
    nll, _ = single.backend.score(single.encode(text))
    assert choice["logprobs"]["token_logprobs"] == [None] + [-v for v in nll]
    assert choice["logprobs"]["top_logprobs"][0] is None
    # Echo alone: the prompt (as the model read it, reduced), then the completion.
    doc = json.loads(fine.post({"prompt": "ROMEO:", "max_tokens": 20, "echo": True,
                                "seed": 1})[2])
    assert doc["choices"][0]["text"] == "romeo:" + single.generate(20, prime="ROMEO:", seed=1)


def test_include_usage_sends_a_last_chunk_with_usage(fine):
    events = _stream(fine, {"prompt": "romeo:", "max_tokens": 40, "seed": 2,
                            "stream_options": {"include_usage": True}})
    assert events[-1]["choices"] == [] and events[-1]["usage"] == {
        "prompt_tokens": 6, "completion_tokens": 40, "total_tokens": 46}
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in e for e in _stream(fine, {"prompt": "a", "max_tokens": 5}))


def test_top_p_and_min_p_equal_the_single_stream(fine, single):
    for extra in ({"top_p": 0.5}, {"min_p": 0.2}, {"top_p": 0.8, "min_p": 0.05, "top_k": 4}):
        body = {"prompt": "romeo:", "seed": 11, "max_tokens": 300, **extra}
        doc = json.loads(fine.post(body)[2])
        assert doc["choices"][0]["text"] == single.generate(
            300, prime="romeo:", seed=11, **extra), extra


@pytest.mark.parametrize("body, param, words", [
    ({"suffix": "x"}, "suffix", 'suffix must be "" or null'),
    ({"best_of": 2}, "best_of", "best_of must be 1 or null"),
    ({"logit_bias": {"1": 5}}, "logit_bias", "logit_bias must be {} or null"),
    ({"presence_penalty": 0.5}, "presence_penalty", "presence_penalty must be 0 or null"),
    ({"frequency_penalty": -1}, "frequency_penalty", "frequency_penalty must be 0 or null"),
    ({"n": 2}, "n", "n must be 1 or null"),
    ({"ignore_eos": True}, "ignore_eos", 'unknown field "ignore_eos"'),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4 strings"),
    ({"stop": "x" * 201}, "stop", "stop has 201 characters; at most 200"),
    ({"stop": [3]}, "stop", "stop[0] must be a non-empty string, got 3"),
    ({"logprobs": 6}, "logprobs", "logprobs must be an integer in [0, 5], got 6"),
    ({"top_p": 0}, "top_p", "top_p must be in (0, 1], got 0"),
    ({"top_p": 1.5}, "top_p", "top_p must be in (0, 1], got 1.5"),
    ({"min_p": -0.1}, "min_p", "min_p must be in [0, 1], got -0.1"),
    ({"echo": "yes"}, "echo", 'echo must be true or false, got "yes"'),
    ({"stream_options": {"include_usage": True}}, "stream_options", "only allowed with stream"),
    ({"stream": True, "stream_options": {"continuous": 1}}, "stream_options",
     "stream_options must be"),
])
def test_unsupported_fields_and_bad_values_are_400(fine, body, param, words):
    status, headers, text = fine.post({"prompt": "a", "max_tokens": 3, **body})
    error = json.loads(text)["error"]
    assert status == 400 and error["param"] == param and words in error["message"], error
    assert fine.post({"prompt": "a", "max_tokens": 3})[0] == 200


def test_fields_at_their_neutral_values_and_user_are_accepted(fine, single):
    body = {"prompt": "romeo:", "max_tokens": 30, "seed": 4, "user": "someone", "n": 1,
            "best_of": 1, "suffix": None, "logit_bias": {}, "presence_penalty": 0,
            "frequency_penalty": 0.0}
    doc = json.loads(fine.post(body)[2])
    assert doc["choices"][0]["text"] == single.generate(30, prime="romeo:", seed=4)


def test_metrics_have_the_latency_histograms_and_finish_reasons(fine):
    fine.post({"prompt": "a", "max_tokens": 10})
    _stream(fine, {"prompt": "a", "max_tokens": 10})
    text = fine.get("/metrics")[1]
    for name in ("queue_seconds", "time_to_first_character_seconds",
                 "time_between_chunks_seconds", "request_duration_seconds"):
        assert f"# TYPE charstream_{name} histogram" in text
        assert float(text.split(f"charstream_{name}_count ")[1].split()[0]) >= 1
    assert 'charstream_finished_requests_total{finish_reason="length"}' in text
    assert metric(fine, "active_streams") == 0


def test_the_openai_client_streams_with_stop_logprobs_and_usage(fine, single, trained_run):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{fine.port}/v1", api_key="unused")
    free = single.generate(400, prime="romeo:", seed=5)
    stop = free[200:202]
    parts = list(client.completions.create(
        model=trained_run.name, prompt="romeo:", max_tokens=400, seed=5, stop=[stop],
        logprobs=2, stream=True, stream_options={"include_usage": True}))
    text = "".join(p.choices[0].text for p in parts if p.choices)
    assert text == free[:free.index(stop)]
    assert [p.choices[0].finish_reason for p in parts if p.choices][-1] == "stop"
    tokens = [t for p in parts if p.choices and p.choices[0].logprobs
              for t in p.choices[0].logprobs.tokens]
    assert "".join(tokens) == text
    assert parts[-1].choices == [] and parts[-1].usage.completion_tokens == len(text)
    whole = client.completions.create(model=trained_run.name, prompt="romeo:", max_tokens=0,
                                      echo=True, logprobs=0)
    assert whole.choices[0].text == "romeo:" and whole.choices[0].logprobs.token_logprobs[0] is None


def test_the_page_stops_at_its_stop_box_and_shows_surprise_on_hover(fine, single):
    from test_serve import _browser

    free = single.generate(2000, prime="romeo:", seed=9, temperature=0.8)
    stop = free[300:302]
    browser = _browser()
    try:
        browser.set_page_load_timeout(30)
        browser.get(f"http://127.0.0.1:{fine.port}/")
        for field, value in (("prompt", "romeo:"), ("seed", "9"), ("stop", stop)):
            box = browser.find_element("id", field)
            box.clear()
            box.send_keys(value.replace("\n", "\\n"))
        browser.find_element("id", "start").click()
        status = browser.find_element("id", "status")
        wait_for(lambda: "(stop)" in status.text, timeout=60)
        output = browser.find_element("id", "output")
        assert output.text.replace("\n", "") == ("romeo:" + free[:free.index(stop)]).replace(
            "\n", "")
        spans = browser.find_elements("css selector", "#output span.c")
        assert spans and spans[0].get_attribute("title").startswith("p = ")
        assert "likeliest" in spans[-1].get_attribute("title")
    finally:
        browser.quit()
