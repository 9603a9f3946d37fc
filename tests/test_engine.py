"""The continuous-batching engine: every request's text is the single stream's,
whatever else shares its ticks; rows and slots are freed; the queue is bounded;
slow readers park; shutdown ends every stream."""
import asyncio
import random

import numpy as np
import pytest

from charstream import StreamGenerator
from charstream.serving.engine import Engine, QueueFull, ShuttingDown


def _run(coro, timeout: float = 120):
    """asyncio.run, bounded: a scheduling bug fails the test instead of hanging it."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture(scope="module")
def single(trained_run):
    return StreamGenerator.load(trained_run, backend="native")


def _alone(single, spec):
    return single.generate(spec["max_tokens"], prime=spec["prime"], temperature=spec["temperature"],
                           top_k=spec["top_k"], seed=spec["seed"])


async def _collect(engine, spec, delay=0.0, cancel_after=None):
    await asyncio.sleep(delay)
    req = engine.submit(**spec)
    out = []
    async for chunk in req.chunks():
        out.append(chunk)
        if cancel_after is not None and sum(map(len, out)) >= cancel_after:
            break
    return "".join(out), req


def test_every_request_equals_its_single_stream_under_churn(trained_run, single):
    rng = random.Random(0)
    primes = ["ROMEO:", "", "a", "first citizen: before we proceed any further", "ALL:\n"]
    specs = [dict(prime=rng.choice(primes), max_tokens=rng.randint(1, 400),
                  temperature=rng.choice([0.0, 0.5, 0.8, 1.0, 1.6]),
                  top_k=rng.choice([None, 1, 3, 12]), seed=rng.randint(0, 10**6))
             for _ in range(60)]

    async def main():
        engine = Engine.load(trained_run, max_streams=7, max_queue=100, flush=0.005)
        async with engine:
            # The first 7 start together (a row each); the others join and leave.
            results = await asyncio.gather(*(_collect(engine, s, rng.random() * 0.3 * (i >= 7))
                                             for i, s in enumerate(specs)))
            assert engine.stats()["active"] == 0 and engine.stats()["queued"] == 0
            assert engine.stats()["free"] == 7  # every slot came back
            return results, engine.ticks

    results, ticks = _run(main())
    for spec, (text, req) in zip(specs, results):
        assert text == _alone(single, spec), spec
        assert req.finish_reason == "length"
    # They shared ticks. A request steps its row once per prime id after the
    # first, then once per character; the first 7 share every tick until each
    # ends, which saves at least all their steps but the longest one's.
    steps = [max(len(s["prime"]), 1) - 1 + s["max_tokens"] for s in specs]
    assert ticks <= sum(steps) - (sum(steps[:7]) - max(steps[:7]))


def test_cancelled_requests_free_their_rows_and_the_rest_are_unharmed(trained_run, single):
    specs = [dict(prime="romeo", max_tokens=300, temperature=1.0, top_k=None, seed=k)
             for k in range(6)]

    async def main():
        # A ring of 64: a row runs at most 64 ids ahead of its reader, so a
        # cancel after 40 read always lands before the 300th id, however fast the step.
        engine = Engine.load(trained_run, max_streams=3, flush=0.002, buffer=64)
        async with engine:
            tasks = [_collect(engine, s, cancel_after=40 if k % 2 else None)
                     for k, s in enumerate(specs)]
            results = await asyncio.gather(*tasks)
            await asyncio.sleep(0.05)
            return results, engine.stats(), engine.stats()["free"]

    results, stats, free = _run(main())
    assert stats["active"] == 0 and free == 3
    for k, (text, req) in enumerate(results):
        if k % 2:
            assert req.finish_reason == "cancelled" and 40 <= len(text) < 300
            assert _alone(single, specs[k]).startswith(text)
        else:
            assert text == _alone(single, specs[k])



def test_a_request_cancelled_while_it_waits_never_takes_a_slot(trained_run, single):
    # Waiting requests whose readers leave are dropped without ever holding a slot;
    # the slots stay whole for the requests that come after (a slot given twice
    # would mix two streams).
    async def main():
        engine = Engine.load(trained_run, max_streams=2, max_queue=4, flush=0.002)
        async with engine:
            long = [engine.submit("romeo", max_tokens=400, seed=k) for k in range(2)]
            waiting = [engine.submit("romeo", max_tokens=400, seed=9) for _ in range(3)]
            await asyncio.sleep(0.01)
            for req in waiting:
                req.cancel()
            texts = [await _read(r) for r in long]
            later = [engine.submit("juliet", max_tokens=300, seed=k) for k in (20, 21)]
            after = await asyncio.gather(*(_read(r) for r in later))
            return texts, after, engine.stats()["free"], waiting

    texts, after, free, waiting = _run(main())
    assert free == 2 and all(r.finish_reason == "cancelled" and r.slot == -1 for r in waiting)
    spec = dict(max_tokens=400, temperature=1.0, top_k=None)
    assert texts == [_alone(single, {**spec, "prime": "romeo", "seed": k}) for k in (0, 1)]
    assert after == [_alone(single, {**spec, "prime": "juliet", "max_tokens": 300, "seed": k})
                     for k in (20, 21)]

def test_the_queue_is_bounded(trained_run):
    async def main():
        engine = Engine.load(trained_run, max_streams=2, max_queue=3)
        reqs = [engine.submit("romeo", max_tokens=10) for _ in range(5)]  # 2 rows + 3 waiting
        with pytest.raises(QueueFull, match="all 2 streams are busy and 3 requests wait"):
            engine.submit("romeo", max_tokens=10)
        async with engine:
            texts = [await _read(r) for r in reqs]
        assert [len(t) for t in texts] == [10] * 5
        with pytest.raises(ShuttingDown):
            engine.submit("romeo")

    _run(main())


async def _read(req):
    return "".join([chunk async for chunk in req.chunks()])


def test_a_slow_reader_parks_resumes_and_gets_the_same_text(trained_run, single):
    spec = dict(prime="juliet:", max_tokens=2000, temperature=1.0, top_k=None, seed=11)

    async def main():
        engine = Engine.load(trained_run, max_streams=2, buffer=64, flush=0.002)
        async with engine:
            slow = engine.submit(**spec)
            fast = asyncio.ensure_future(_collect(engine, {**spec, "seed": 12}))
            for _ in range(1000):               # the slow reader reads nothing yet
                if slow.parked_since is not None:
                    break
                await asyncio.sleep(0.01)
            # the fast reader may be parked for a moment too on a busy machine
            assert slow.parked_since is not None and engine.stats()["parked"] >= 1
            assert 64 <= slow.produced < 2000
            text = await _read(slow)            # now it reads: it resumes
            return text, (await fast)[0], engine.stats()

    text, other, stats = _run(main())
    assert text == _alone(single, spec)
    assert other == _alone(single, {**spec, "seed": 12})
    assert stats["parked"] == 0 and stats["active"] == 0


def test_a_reader_that_never_reads_is_stalled(trained_run):
    async def main():
        engine = Engine.load(trained_run, max_streams=2, buffer=16, stall_timeout=0.1,
                             flush=0.002)
        async with engine:
            req = engine.submit("romeo", max_tokens=1000)
            for _ in range(1000):      # parked after 16 characters, stalled 0.1 s later
                if req.done:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.01)
            return req, engine.stats()

    req, stats = _run(main())
    assert req.finish_reason == "stalled" and stats["parked"] == 0 and stats["active"] == 0


def test_shutdown_ends_every_stream(trained_run):
    async def main():
        engine = Engine.load(trained_run, max_streams=2, flush=0.002)
        async with engine:
            reqs = [engine.submit("romeo", max_tokens=100_000) for _ in range(3)]
            await asyncio.sleep(0.1)
            engine.shutdown_soon()
            texts = await asyncio.wait_for(asyncio.gather(*(_read(r) for r in reqs)), 10)
        return reqs, texts

    reqs, texts = _run(main())
    assert [r.finish_reason for r in reqs] == ["shutdown"] * 3
    assert len(texts[0]) > 0 and texts[2] == ""  # the third never got a row


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_tokens=0), "max_tokens must be a positive integer, got 0"),
    (dict(max_tokens=10**9), "max_tokens must be at most 100000, got 1000000000"),
    (dict(temperature=-1), "temperature must be a finite number >= 0, got -1"),
    (dict(top_k=0), "top_k must be a positive integer or None, got 0"),
    (dict(prime="x" * 5000), "prompt has 5000 characters; at most 4096"),
    (dict(seed=-2), "seed must be a non-negative integer, got -2"),
])
def test_bad_requests(trained_run, kwargs, match):
    engine = Engine.load(trained_run, max_streams=1)
    with pytest.raises(ValueError, match=match):
        engine.submit(**kwargs)


def test_an_unrepresentable_prime_in_a_raw_run(raw_run):
    engine = Engine.load(raw_run, max_streams=1)
    with pytest.raises(ValueError, match=r"'z' \(U\+007A\) at position 1 is not in the vocabulary"):
        engine.submit("az")
    assert np.array_equal(engine.check("abc", 1, 1.0, None).ids, [1, 2, 3])


def test_stop_nucleus_logprobs_and_echo_in_the_engine_equal_the_single_stream(trained_run, single):
    # The single stream's own text decides the stops, so that they fire.
    rng = random.Random(3)
    specs = []
    for k in range(24):
        spec = dict(prime=rng.choice(["romeo:", "a", "", "all:\n"]), max_tokens=rng.randint(5, 300),
                    temperature=rng.choice([0.0, 0.7, 1.0]), top_k=rng.choice([None, 5]),
                    seed=k, top_p=rng.choice([1.0, 0.9, 0.5]), min_p=rng.choice([0.0, 0.1]))
        free = single.generate(spec["max_tokens"], **_settings(spec))
        if k % 2 and len(free) > 20:
            spec["stop"] = [free[10:13], "qq"] if k % 4 == 1 else free[rng.randint(3, 15)]
        if k % 3 == 0:
            spec["logprobs"] = rng.randint(0, 5)
        specs.append(spec)

    async def collect(engine, spec):
        req = engine.submit(**spec)
        return [chunk async for chunk in req.chunks()], req

    async def main():
        engine = Engine.load(trained_run, max_streams=5, max_queue=100, flush=0.0005)
        async with engine:
            results = await asyncio.gather(*(collect(engine, s) for s in specs))
            assert engine.stats()["free"] == 5
            return results

    for spec, (chunks, req) in zip(specs, _run(main())):
        kw = _settings(spec)
        expected = list(single.stream(max_chars=spec["max_tokens"], stop=spec.get("stop"),
                                      logprobs=spec.get("logprobs"), **kw))
        text = "".join(chunks)
        assert text == "".join(expected), spec
        stops = [spec["stop"]] if isinstance(spec.get("stop"), str) else spec.get("stop") or []
        assert not any(s in text for s in stops)        # no chunk ever carried a stop
        free = single.generate(spec["max_tokens"], **kw)
        assert req.finish_reason == ("stop" if text != free else "length")
        if "logprobs" in spec:
            got = [v for c in chunks for v in c.token_logprobs]
            want = [p.token_logprobs[0] for p in expected]
            np.testing.assert_allclose(got, want, atol=2e-5)
            tops = [t for c in chunks for t in c.top_logprobs]
            assert [sorted(t) for t in tops] == [sorted(p.top_logprobs[0]) for p in expected]


def _settings(spec):
    return {k: spec[k] for k in ("prime", "temperature", "top_k", "seed", "top_p", "min_p")}


def test_echo_with_max_tokens_0_scores_the_prompt_as_evaluation_does(trained_run, single):
    text = "first citizen:\nbefore we proceed any further, hear me speak."

    async def main():
        engine = Engine.load(trained_run, max_streams=2)
        async with engine:
            req = engine.submit(text, max_tokens=0, echo=True, logprobs=2)
            chunks = [c async for c in req.chunks()]
            plain = engine.submit("romeo", max_tokens=3, echo=True, seed=1)
            return chunks, req, "".join([c async for c in plain.chunks()])

    chunks, req, plain = _run(main())
    assert "".join(chunks) == text and req.finish_reason == "length" and req.produced == 0
    lps = [v for c in chunks for v in c.token_logprobs]
    single.reset()
    nll, _ = single.backend.score(single.encode(text))
    assert lps[0] is None and lps[1:] == [-v for v in nll]          # bit for bit
    tops = [t for c in chunks for t in c.top_logprobs]
    assert tops[0] is None and all(len(t) <= 3 and c in t for t, c in zip(tops[1:], text[1:]))
    assert plain == "romeo" + single.generate(3, prime="romeo", seed=1)


def test_bad_new_fields_name_the_field(trained_run):
    engine = Engine.load(trained_run, max_streams=1, max_prime=20)
    for kwargs, words in ((dict(top_p=0), "top_p must be in (0, 1], got 0"),
                          (dict(top_p=1.5), "top_p must be in (0, 1], got 1.5"),
                          (dict(min_p=-0.1), "min_p must be in [0, 1], got -0.1"),
                          (dict(logprobs=6), "logprobs must be an integer in [0, 5], got 6"),
                          (dict(logprobs=True), "logprobs must be an integer, got true"),
                          (dict(stop=["a"] * 5), "at most 4 strings"),
                          (dict(stop="x" * 21), "stop has 21 characters; at most 20"),
                          (dict(echo="yes"), "echo must be true or false"),
                          (dict(max_tokens=0), "max_tokens must be a positive integer, got 0")):
        with pytest.raises(ValueError) as info:
            engine.submit("a", **{"max_tokens": 5, **kwargs})
        assert words in str(info.value) and info.value.field == next(iter(kwargs)), kwargs


def test_requests_continue_states_as_a_fresh_stream_over_the_whole_text(trained_run, single):
    # Several stories at once, each continued by request after request from the
    # state the one before ended with; the text the single stream would give.
    plans = [[("romeo:", 50), ("", 20), ("\nwhat?", 40)], [("a", 30), ("b", 1), ("", 60)],
             [("all:\n", 10), ("yes", 70)]]

    async def story(engine, plan, seed):
        state, texts = None, []
        for k, (prompt, n) in enumerate(plan):
            req = engine.submit(prompt, n, 0.9, None, seed + k, state=state,
                                stop="qqq" if k == 1 else None)
            texts.append("".join([c async for c in req.chunks()]))
            state = req.state
            assert state is not None and req.finish_reason == "length"
        return texts, state

    async def main():
        engine = Engine.load(trained_run, max_streams=2, flush=0.001)
        async with engine:
            return await asyncio.gather(*(story(engine, p, 10 * i) for i, p in enumerate(plans)))

    for i, (plan, (texts, state)) in enumerate(zip(plans, _run(main()))):
        whole = ""
        for k, ((prompt, n), text) in enumerate(zip(plan, texts)):
            assert text == single.generate(n, prime=whole + prompt, seed=10 * i + k,
                                           temperature=0.9), (i, k)
            whole += prompt + text
        assert state.chars == len(whole)
        assert state.pending == single.vocab.chars.index(whole[-1])


def test_a_state_of_another_model_is_refused(trained_run, raw_run):
    other = StreamGenerator.load(raw_run, backend="native")
    other.generate(3, prime="ab")
    engine = Engine.load(trained_run, max_streams=1)
    with pytest.raises(ValueError, match="not by the served model"):
        engine.submit("a", 3, state=other.state())
