"""A stream's state as a value (`charstream.streaming.state`): continuing a
state equals a fresh stream over the whole text, on both backends; bytes round
trip; another model's state and bad bytes are refused."""
import struct

import numpy as np
import pytest

from charstream import StreamGenerator
from charstream.streaming.state import MAGIC, State, StateError


@pytest.fixture(scope="module")
def native(trained_run):
    return StreamGenerator.load(trained_run, backend="native")


@pytest.mark.parametrize("backend", ["native", "keras"])
def test_continuing_a_state_equals_a_fresh_stream_over_the_whole_text(trained_run, native,
                                                                       backend):
    gen = StreamGenerator.load(trained_run, backend=backend)
    text, state = "", None
    for k, (prompt, n) in enumerate((("romeo:", 80), ("\nwhat say you?", 60), ("", 50),
                                     ("", 1), ("o, ", 70))):
        got = gen.generate(n, prime=prompt, seed=k, temperature=0.9, state=state)
        expected = native.generate(n, prime=text + prompt, seed=k, temperature=0.9)
        assert got == expected, k
        text += prompt + got
        state = State.from_bytes(gen.state().to_bytes())       # through bytes, every time
        assert state == gen.state() and state.chars == len(text)
        assert len(state.to_bytes()) < 2 * 4 * sum(state.units) + 200


def test_a_state_is_small_immutable_and_keras_and_native_agree(trained_run, native):
    keras_gen = StreamGenerator.load(trained_run, backend="keras")
    native.generate(30, prime="juliet:", seed=1)
    keras_gen.generate(30, prime="juliet:", seed=1)
    a, b = native.state(), keras_gen.state()
    assert a.fingerprint == b.fingerprint and a.pending == b.pending and a.chars == 37
    for (h1, c1), (h2, c2) in zip(a.layers, b.layers):
        np.testing.assert_allclose(h1, h2, atol=1e-5)
        np.testing.assert_allclose(c1, c2, atol=1e-4)
    with pytest.raises(ValueError):
        a.layers[0][0][0] = 1.0                                 # read-only
    native.feed("more text")                                    # the state object is a copy
    assert a == State.from_bytes(a.to_bytes()) and native.state() != a


def test_another_models_state_and_bad_bytes_are_refused(trained_run, raw_run, native):
    other = StreamGenerator.load(raw_run, backend="native")
    other.generate(5, prime="ab", seed=1)
    with pytest.raises(StateError, match=rf"made by the model {other.state().fingerprint}, "
                                         rf"not by this model \({native.state().fingerprint}\)"):
        native.set_state(other.state())
    good = native.state().to_bytes()
    for data, words in ((b"nonsense", "bad magic"),
                        (MAGIC + struct.pack("<I", 10 ** 6) + b"{}", "header of 1000000 bytes"),
                        (good[:-4], "holds"),
                        (MAGIC + struct.pack("<I", 2) + b"{}", "units must be"),
                        (good[:-4] + np.float32(np.nan).tobytes(), "non-finite")):
        with pytest.raises(StateError, match=words):
            State.from_bytes(data)


def test_generate_saves_and_loads_state_across_invocations(trained_run, native, tmp_path):
    import subprocess
    import sys

    path = tmp_path / "story.state"

    def run(*args):
        out = subprocess.run([sys.executable, "-m", "charstream.generate", str(trained_run),
                              "--backend", "native", *args], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    first = run("--prime", "romeo:", "--length", "60", "--seed", "1", "--save-state", str(path))
    second = run("--prime", "", "--length", "40", "--seed", "2", "--load-state", str(path),
                 "--save-state", str(path))
    assert first == "romeo:" + native.generate(60, prime="romeo:", seed=1) + "\n"
    whole = native.generate(40, prime=first[:-1], seed=2)
    assert second == whole + "\n"
    assert State.from_bytes(path.read_bytes()).chars == len(first) - 1 + 40
    path.write_bytes(b"junk")
    out = subprocess.run([sys.executable, "-m", "charstream.generate", str(trained_run),
                          "--backend", "native", "--load-state", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and f"{path}: not a charstream state" in out.stderr
