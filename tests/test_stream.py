"""StreamGenerator and python -m charstream.generate."""
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest

from charstream import StreamGenerator, Vocabulary, reduce_text
from charstream.streaming.evaluate import evaluate_stream

from conftest import load_run


@pytest.fixture(scope="module")
def gen(trained_run):
    return StreamGenerator.load(trained_run)


def test_stream_step_equals_windowed_model_on_a_trained_run(trained_run, gen):
    model, vocab, _ = load_run(trained_run)
    text = reduce_text("ROMEO: But soft, what light")
    for window in (text[:16], text[5:21], text[-16:]):
        gen.reset()
        for ch in window:
            probs = gen.step(ch)
        x = np.eye(vocab.size, dtype="float32")[vocab.encode(window)][None]
        expected = np.asarray(model(x, training=False))[0]
        assert np.max(np.abs(probs - expected)) <= 1e-5
        assert probs.dtype == np.float64 and probs.sum() == pytest.approx(1.0)


def test_feed_equals_steps(gen):
    gen.reset()
    a = gen.feed("juliet: o romeo")
    gen.reset()
    for ch in "juliet: o romeo":
        b = gen.step(ch)
    np.testing.assert_allclose(a, b, atol=1e-7)
    assert gen.feed("") is None


class CountingBackend:
    """A backend that counts the steps it runs, around a real one."""

    def __init__(self, backend):
        self.inner, self.steps = backend, 0
        self.name, self.batch, self.depth = backend.name, backend.batch, backend.depth

    def reset(self, rows=None):
        self.inner.reset(rows)

    def probs(self, ids):
        self.steps += 1
        return self.inner.probs(ids)

    def step_sample1(self, char_id, temperature, top_k, u, top_p=1.0, min_p=0.0):
        self.steps += 1
        return self.inner.step_sample1(char_id, temperature, top_k, u, top_p, min_p)


def test_stream_is_lazy_one_step_per_character(gen):
    counting = CountingBackend(gen.backend)
    lazy = StreamGenerator(counting, gen.vocab, gen.reduce)
    it = lazy.stream(prime="romeo:", seed=1)
    before = counting.steps
    assert before >= 5  # 'romeo' fed at the call; ':' is fed by the first next()
    chars = [next(it) for _ in range(5)]
    assert counting.steps - before == 5
    assert all(len(c) == 1 and c in gen.vocab.chars for c in chars)


def test_same_seed_same_text_and_max_chars(gen):
    a = "".join(gen.stream(prime="juliet:", seed=42, max_chars=80))
    b = "".join(gen.stream(prime="juliet:", seed=42, max_chars=80))
    c = "".join(gen.stream(prime="juliet:", seed=43, max_chars=80))
    assert a == b and len(a) == 80 and a != c
    assert gen.generate(80, prime="juliet:", seed=42) == a
    assert list(gen.stream(max_chars=0)) == []


def test_temperature_zero_is_argmax(gen):
    text = gen.generate(30, prime="romeo", temperature=0, seed=None)
    gen.reset()
    probs = gen.feed("romeo")
    expected = ""
    for _ in range(30):
        ch = gen.vocab.chars[int(np.argmax(probs))]
        expected += ch
        probs = gen.step(ch)
    assert text == expected


def test_top_k_one_is_argmax(gen):
    assert gen.generate(20, prime="all:", top_k=1, seed=3) == gen.generate(
        20, prime="all:", temperature=0)


def test_prime_is_reduced_like_the_training_text(gen):
    a = gen.generate(40, prime="ROMEO:\tBut", seed=7)
    b = gen.generate(40, prime="romeo: but", seed=7)
    assert a == b


def test_empty_prime_starts_at_a_newline(gen):
    a = gen.generate(40, prime="", seed=9)
    b = gen.generate(40, prime="\n", seed=9)
    assert a == b


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-1), "temperature must be a finite number >= 0, got -1"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(top_k=0), "top_k must be a positive integer or None, got 0"),
    (dict(max_chars=-1), "max_chars"),
])
def test_bad_stream_arguments(gen, kwargs, match):
    with pytest.raises(ValueError, match=match):
        gen.stream(**kwargs)


def test_step_takes_one_character(gen):
    with pytest.raises(ValueError, match="one character"):
        gen.step("ab")


def test_unrepresentable_prime_in_a_raw_vocabulary(trained_run):
    model, _, _ = load_run(trained_run)
    raw = StreamGenerator.from_model(model, Vocabulary.default(), reduce=False)
    with pytest.raises(ValueError, match=r"'R' \(U\+0052\) at position 0 is not in the vocabulary"):
        raw.stream(prime="ROMEO")


def _copy(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def test_bad_run_directories(trained_run, tmp_path):
    with pytest.raises(ValueError, match="not a charstream run"):
        StreamGenerator.load(tmp_path)
    run = _copy(trained_run, tmp_path)
    (run / "vocab.json").write_text("{broken")
    with pytest.raises(ValueError, match="vocab.json: not valid JSON"):
        StreamGenerator.load(run)
    Vocabulary("abc").save(run / "vocab.json")
    with pytest.raises(ValueError, match="config.json says reduce, but vocab.json is not ALPHABET"):
        StreamGenerator.load(run)
    doc = json.loads((run / "config.json").read_text())
    doc["settings"]["reduce"] = False
    (run / "config.json").write_text(json.dumps(doc))
    for backend, name in (("keras", "model.keras"), ("native", "stream.npz")):
        with pytest.raises(ValueError, match=f"{name} reads and predicts 36 symbols but vocab.json has 3"):
            StreamGenerator.load(run, backend=backend)
    Vocabulary.default().save(run / "vocab.json")
    (run / "model.keras").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="model.keras: cannot load the model"):
        StreamGenerator.load(run)
    (run / "model.keras").unlink()
    with pytest.raises(FileNotFoundError, match="model.keras: no such model file"):
        StreamGenerator.load(run)


def test_evaluate_stream_scores_the_same_characters(trained_run):
    text = reduce_text("ROMEO: But soft, what light through yonder window breaks?\n\n") * 3
    result = evaluate_stream(trained_run, text)
    assert result["characters"] == len(text) - 16
    assert result["window_bits"] == pytest.approx(result["window_nats"] / math.log(2))
    # The tiny two-epoch model scores about 2.37 nats on this verse (untrained:
    # ln 36 = 3.58), and streaming it costs next to nothing against its windows.
    assert 0 < result["window_nats"] < 2.6
    assert 0 < result["stream_nats"] < result["window_nats"] + 0.1
    # Re-priming at every character from the last 16 is the windowed model exactly.
    reprimed = evaluate_stream(trained_run, text, reprime_every=1)
    assert reprimed["stream_nats"] == pytest.approx(result["window_nats"], abs=1e-4)



@pytest.mark.parametrize("backend", ["native", "keras"])
def test_reprime_every_k_is_its_definition(trained_run, backend):
    # Character k is scored by a stream reset at the last multiple c of K below k
    # (c >= seq_len) and fed ids[c - seq_len + 1 : k]: checked step by step.
    from charstream.streaming.evaluate import stream_nll

    gen = StreamGenerator.load(trained_run, backend=backend)
    ids = gen.encode(reduce_text("ROMEO: But soft, what light through yonder window breaks?\n"))
    for k_every in (5, 16, 23):
        expected = []
        for k in range(16, len(ids)):
            cuts = [c for c in range(16, k) if c % k_every == 0]
            gen.reset()
            for j in range(cuts[-1] - 15 if cuts else 0, k):
                p = gen.backend.probs([int(ids[j])])[0]
            expected.append(-math.log(p[ids[k]]))
        got = stream_nll(gen, ids, 16, k_every)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)

# --------------------------------------------------------------------------- CLI

def _generate(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "charstream.generate", *args],
                          capture_output=True, text=True, timeout=120, **kwargs)


def test_cli_streams_and_is_deterministic(trained_run, gen):
    out = _generate(str(trained_run), "--prime", "ROMEO:", "--length", "50", "--seed", "4")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "ROMEO:" + gen.generate(50, prime="ROMEO:", seed=4) + "\n"


def test_cli_top_p_min_p_and_stop(trained_run, gen):
    free = gen.generate(300, prime="ROMEO:", seed=4, top_p=0.9, min_p=0.05)
    stop = free[100:102]
    out = _generate(str(trained_run), "--prime", "ROMEO:", "--length", "300", "--seed", "4",
                    "--top-p", "0.9", "--min-p", "0.05", "--stop", stop.replace("\n", "\\n"),
                    "--backend", "native")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "ROMEO:" + free[:free.index(stop)] + "\n"
    bad = _generate(str(trained_run), "--top-p", "0", "--backend", "native")
    assert bad.returncode == 2 and "top_p must be in (0, 1], got 0.0" in bad.stderr


def test_cli_survives_a_closed_pipe(trained_run):
    cmd = (f"{sys.executable} -m charstream.generate {trained_run} --length 0 --seed 1 "
           f"| head -c 10; echo \" rc=${{PIPESTATUS[0]}}\"")
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert out.stdout.endswith(" rc=0\n") and len(out.stdout) == 10 + len(" rc=0\n")
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr


def test_cli_ctrl_c_ends_quietly(trained_run):
    import signal

    # A shell that starts pytest in the background leaves SIGINT ignored, and children
    # inherit that; give the child the default disposition, as a terminal would.
    proc = subprocess.Popen([sys.executable, "-m", "charstream.generate", str(trained_run),
                             "--length", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert len(proc.stdout.read(20)) == 20  # it is streaming
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err


def test_cli_errors(trained_run, tmp_path):
    out = _generate(str(tmp_path))
    assert out.returncode == 2 and "not a charstream run" in out.stderr
    out = _generate(str(trained_run), "--temperature", "-1")
    assert out.returncode == 2 and "temperature must be" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("backend", ["keras", "native"])
def test_cli_evaluate(trained_run, backend):
    out = _generate(str(trained_run), "--evaluate", "--backend", backend,
                    "--reprime-every", "64")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert {"window_nats", "stream_nats", "window_bits", "stream_bits"} <= set(result)
    # The numbers are the API's for the same run, and the run's own held-out score.
    expected = evaluate_stream(trained_run, reprime_every=64, backend=backend)
    assert result == pytest.approx(expected, abs=1e-9)
    summary = json.loads((trained_run / "summary.json").read_text())
    assert result["window_nats"] == pytest.approx(summary["val_loss"], abs=1e-5)
    assert result["characters"] == summary["val_targets"]


def test_stop_ends_the_stream_before_the_stop_and_the_seed_holds(gen):
    free = gen.generate(400, prime="romeo:", seed=4)
    stop = free[150:152]                   # a pair the model does produce
    cut = free[:free.index(stop)]
    assert gen.generate(400, prime="romeo:", seed=4, stop=[stop, "zzzz"]) == cut
    assert gen.generate(400, prime="romeo:", seed=4, stop="qqq") == free


@pytest.mark.parametrize("backend", ["keras", "native"])
def test_top_p_min_p_and_logprobs_on_both_backends(trained_run, backend):
    import numpy as np

    from charstream import _reference as ref

    g = StreamGenerator.load(trained_run, backend=backend)
    twin = StreamGenerator.load(trained_run, backend="native")
    kwargs = dict(prime="romeo:", seed=9, temperature=0.9, top_p=0.8, min_p=0.05)
    pieces = list(g.stream(max_chars=60, logprobs=3, **kwargs))
    assert "".join(pieces) == twin.generate(60, **kwargs)
    twin.reset()
    twin.feed("romeo")
    previous = ":"
    for piece in pieces:
        probs = twin.step(previous)
        weights = np.array(ref.kept_weights(probs, 0.9, None, 0.8, 0.05))
        expected = np.log(weights[g.vocab.chars.index(piece)] / weights.sum())
        assert piece.token_logprobs[0] == pytest.approx(expected, abs=1e-5)
        top = piece.top_logprobs[0]
        assert piece in top and len(top) <= 4
        assert all(v <= 0 for v in top.values())
        previous = str(piece)
