"""The native backend against the Keras inference copy, batching, and bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charstream import StreamGenerator
from charstream.streaming._lstm import NativeLSTM, sample_from_logits
from charstream.model import build_inference_model, build_training_model, lstm_layers, reset_states
from charstream.weights import load_stream_weights
from weight_files import meta_with, write_lying_header
from charstream import _reference as ref
from charstream.streaming.sampling import logprobs_of, sample_id

from conftest import load_run


def _native(train_model, batch=1):
    inf = build_inference_model(train_model)
    return NativeLSTM([l.get_weights() for l in lstm_layers(inf)], *inf.layers[-1].get_weights(),
                      batch=batch)


def _max_diff_over(train_model, steps, seed=0):
    depth = train_model.output_shape[-1]
    inf = build_inference_model(train_model)
    net = _native(train_model)
    step = __import__("tensorflow").function(lambda x: inf(x, training=False))
    reset_states(inf)
    worst = 0.0
    for i in np.random.default_rng(seed).integers(0, depth, steps):
        x = np.zeros((1, 1, depth), np.float32)
        x[0, 0, i] = 1
        keras_p = np.asarray(step(x))[0]
        worst = max(worst, float(np.abs(net.probs([i])[0] - keras_p).max()))
    return worst


@pytest.mark.parametrize("depth, units, layers", [(36, 128, 1), (7, 5, 2), (60, 33, 3), (256, 9, 1)])
def test_matches_keras_over_thousands_of_steps_on_random_weights(depth, units, layers):
    import keras

    keras.utils.set_random_seed(depth)
    model = build_training_model(depth=depth, units=units, layers=layers)  # Keras's random init
    assert _max_diff_over(model, 2000) <= 1e-5


def test_matches_keras_on_larger_random_weights():
    # Normal(0, 0.2) weights, about 4x Keras's init. From about 0.3 on the recurrence
    # turns chaotic: any two float32 implementations (even TF on two machines) part
    # ways after some hundred steps, so equivalence is tested below that regime.
    model = build_training_model(depth=36, units=128)
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.2, w.shape).astype("float32") for w in model.get_weights()])
    assert _max_diff_over(model, 2000, seed=1) <= 1e-5


@pytest.fixture(scope="module")
def keras_gen(trained_run):
    return StreamGenerator.load(trained_run)


@pytest.fixture(scope="module")
def native_gen(trained_run):
    return StreamGenerator.load(trained_run, backend="native")


def test_matches_keras_on_a_trained_run(keras_gen, native_gen):
    text = "romeo: but soft, what light through yonder window breaks?\n\n" * 40
    keras_gen.reset()
    native_gen.reset()
    worst = 0.0
    for ch in text:
        worst = max(worst, float(np.abs(keras_gen.step(ch) - native_gen.step(ch)).max()))
    assert worst <= 1e-5


@pytest.mark.parametrize("kwargs", [dict(), dict(temperature=0.7), dict(temperature=1.5, top_k=5),
                                    dict(temperature=0)])
def test_same_seed_same_text_on_both_backends(keras_gen, native_gen, kwargs):
    a = keras_gen.generate(400, prime="JULIET:", seed=11, **kwargs)
    b = native_gen.generate(400, prime="JULIET:", seed=11, **kwargs)
    assert a == b


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 60), st.integers(0, 2**32 - 1),
       st.sampled_from([0.0, 0.5, 1.0, 2.0, 1e-40, 2.9e-39, 3e-39, 1e-30, 1e-3]),
       st.integers(0, 70), st.sampled_from([1.0, 0.95, 0.6, 0.1, 1e-9]),
       st.sampled_from([0.0, 0.05, 0.3, 1.0]))
def test_c_and_numpy_samplers_equal_the_reference(depth, seed, temperature, top_k, top_p, min_p):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, depth).astype(np.float32)
    if depth > 3:
        logits[1] = logits[2]  # a tie, for top-k, top-p and argmax
    u = float(rng.random())
    p = np.exp(logits.astype(np.float64) - logits.max())
    p /= p.sum()
    expected = ref.sample_id(p, temperature, top_k or None, u, top_p, min_p)
    assert sample_from_logits(logits, temperature, top_k, u, top_p, min_p) == expected
    assert sample_id(p, temperature, top_k or None, u, top_p, min_p) == expected


def test_top_p_and_min_p_keep_what_the_contract_says():
    p = np.array([0.1, 0.4, 0.2, 0.3])
    # top-p 0.6: 0.4 + 0.3 reaches it; min-p 0.6: 0.3 and 0.2 are below 0.6 * 0.4.
    assert ref.kept_weights(p, 1.0, None, 0.6)[0] == 0 and ref.kept_weights(p, 1.0, None, 0.6)[2] == 0
    assert [w > 0 for w in ref.kept_weights(p, 1.0, None, 1.0, 0.6)] == [False, True, False, True]
    for u in np.linspace(0, 0.999, 50):
        assert sample_from_logits(np.log(p), 1.0, 0, u, 0.6) in (1, 3)
        assert sample_from_logits(np.log(p), 1.0, 2, u, 1.0, 0.9) == 1
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\], got 0.0"):
        sample_from_logits(np.log(p), 1.0, 0, 0.5, 0.0)
    with pytest.raises(ValueError, match=r"min_p must be in \[0, 1\], got -0.1"):
        sample_from_logits(np.log(p), 1.0, 0, 0.5, 1.0, -0.1)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0.0, 0.7, 1.0, 1.5]), st.integers(0, 8),
       st.sampled_from([1.0, 0.8]), st.sampled_from([0.0, 0.1]), st.integers(0, 5))
def test_the_c_steps_logprobs_are_those_of_the_distribution_it_sampled(
        seed, temperature, top_k, top_p, min_p, want):
    rng = np.random.default_rng(seed)
    lstm = [(rng.normal(0, 0.5, (7, 12)).astype(np.float32),
             rng.normal(0, 0.5, (3, 12)).astype(np.float32), np.zeros(12, np.float32))]
    dense = rng.normal(0, 1, (3, 7)).astype(np.float32), rng.normal(0, 1, 7).astype(np.float32)
    net, twin = NativeLSTM(lstm, *dense), NativeLSTM(lstm, *dense)
    char = 0
    for _ in range(20):
        u = float(rng.random())
        probs = twin.probs([char])[0]
        got, lp, top = net.step_sample_logprobs(char, temperature, top_k, u, top_p, min_p, want)
        assert got == ref.sample_id(probs, temperature, top_k or None, u, top_p, min_p)
        expected_lp, expected_top = logprobs_of(probs, got, temperature, top_k or None, want,
                                                top_p, min_p)
        assert lp == pytest.approx(expected_lp, abs=1e-5) and np.isfinite(lp)
        assert [k for k, _ in top] == [k for k, _ in expected_top]
        np.testing.assert_allclose([v for _, v in top], [v for _, v in expected_top], atol=1e-5)
        char = got
    # Scoring: the model's own distribution, as evaluation scores it.
    probs = twin.probs([char])[0]
    _, lp, top = net.step_sample_logprobs(char, 0.5, 2, 0.5, score=4, want=3)
    assert lp == pytest.approx(np.log(probs[4]), abs=1e-5)
    assert [k for k, _ in top] == list(np.argsort(-probs, kind="stable")[:3])


@pytest.mark.parametrize("temperature", [1e-40, 5e-324, 1 / ref.FLOAT32_OVERFLOW])
def test_a_temperature_below_float32_is_argmax_not_the_last_symbol(temperature):
    # 1 / T overflows float32 here: inf * 0 used to make NaNs, and the sampler's
    # fallback returned the last id whatever the logits.
    logits = np.array([0.5, 3.0, -1.0, 2.0], np.float32)
    p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    for u in (0.0, 0.5, 0.999):
        assert sample_from_logits(logits, temperature, 0, u) == 1
        assert sample_id(p, temperature, None, u) == 1
        assert ref.sample_id(p, temperature, None, u) == 1


@pytest.mark.parametrize("depth, units, batch", [(36, [128], 1), (7, [5, 9], 3), (60, [33, 8, 17], 9)])
def test_native_step_equals_the_reference_step(depth, units, batch):
    # Random weights of Keras's init scale, several layers and streams, 300 steps.
    rng = np.random.default_rng(depth)
    lstms, inp = [], depth
    for u in units:
        lstms.append((rng.normal(0, 0.3, (inp, 4 * u)).astype(np.float32),
                      rng.normal(0, 0.3, (u, 4 * u)).astype(np.float32),
                      rng.normal(0, 0.3, 4 * u).astype(np.float32)))
        inp = u
    dense = (rng.normal(0, 0.3, (inp, depth)).astype(np.float32),
             rng.normal(0, 0.3, depth).astype(np.float32))
    net = NativeLSTM(lstms, *dense, batch=batch)
    worst_p = worst_state = 0.0
    for _ in range(300):
        # Each step from the native state as it stands, so float32 rounding cannot
        # accumulate through a chaotic recurrence: the step itself is compared.
        ids = rng.integers(0, depth, batch)
        before = [(h.astype(np.float64), c.astype(np.float64)) for h, c in net.state()]
        expected, state = ref.lstm_step(lstms, dense, ids, before)
        worst_p = max(worst_p, float(np.abs(net.probs(ids) - expected).max()))
        for (h, c), (h_ref, c_ref) in zip(net.state(), state):
            worst_state = max(worst_state, float(np.abs(h - h_ref).max()),
                              float(np.abs(c - c_ref).max() / max(1.0, np.abs(c_ref).max())))
    assert worst_p <= 1e-5 and worst_state <= 1e-5



def test_step_rows_samples_each_row_with_its_own_settings():
    # A server batch: only the first `rows` streams step, each with its own
    # temperature, top-k and uniform. Every sampled id must be the reference
    # sampler's over that stream's own distribution (a batch-1 twin per stream).
    import keras

    keras.utils.set_random_seed(1)
    inf = build_inference_model(build_training_model(depth=20, units=16))
    weights = [l.get_weights() for l in lstm_layers(inf)], *inf.layers[-1].get_weights()
    net = NativeLSTM(weights[0], *weights[1:], batch=6)
    twins = [NativeLSTM(weights[0], *weights[1:]) for _ in range(6)]
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 20, 6).astype(np.int32)
    out = np.zeros(6, np.int32)
    for _ in range(300):
        rows = int(rng.integers(0, 7))
        temperature = rng.choice([0.0, 0.5, 1.0, 1.7], 6)
        top_k = rng.integers(0, 25, 6).astype(np.intc)
        u = rng.random(6)
        net.step_rows(rows, ids, temperature, top_k, u, out)
        for b in range(rows):
            p = twins[b].probs([ids[b]])[0]
            assert out[b] == ref.sample_id(p, temperature[b], int(top_k[b]) or None, u[b])
            ids[b] = out[b]
    for b in range(6):  # rows never stepped kept their state all along
        np.testing.assert_array_equal(net.get_row(b)[0][0], twins[b].state()[0][0][0])


def test_rows_can_be_moved_saved_and_restored():
    model = build_training_model(depth=5, units=4)
    net = _native(model, batch=3)
    net.probs([1, 2, 3])
    saved = net.get_row(2)
    net.copy_row(2, 0)
    np.testing.assert_array_equal(net.get_row(0)[0][0], saved[0][0])
    net.reset([False, False, True])
    net.set_row(2, saved)
    np.testing.assert_array_equal(net.get_row(2)[0][1], saved[0][1])
    with pytest.raises(ValueError, match=r"rows must be in \[0, 3\], got 4"):
        net.step_rows(4, np.zeros(4, np.int32), np.ones(4), np.zeros(4, np.intc),
                      np.zeros(4), np.zeros(4, np.int32))
    with pytest.raises(ValueError, match=r"temperature\[1\] must be a finite number >= 0"):
        net.step_rows(2, np.zeros(2, np.int32), np.array([1.0, -1.0]), np.zeros(2, np.intc),
                      np.zeros(2), np.zeros(2, np.int32))

def test_batched_streams_equal_single_streams(trained_run, native_gen, keras_gen):
    primes = ["ROMEO:", "", "a", "first citizen: before we proceed", "ALL:"]
    seeds = [1, 2, 3, 4, None]
    seeds[4] = 5
    for backend, single in (("native", native_gen), ("keras", keras_gen)):
        batch = StreamGenerator.load(trained_run, backend=backend, batch_size=5)
        rows = list(batch.stream_batch(primes, seeds, temperature=0.9, max_chars=120))
        assert len(rows) == 120 and all(len(r) == 5 for r in rows)
        for k in range(5):
            alone = single.generate(120, prime=primes[k], seed=seeds[k], temperature=0.9)
            assert "".join(r[k] for r in rows) == alone, (backend, k)


def test_batch_of_64_native_rows_are_bit_identical_to_single(trained_run):
    batch = StreamGenerator.load(trained_run, backend="native", batch_size=64)
    single = StreamGenerator.load(trained_run, backend="native")
    rows = list(batch.stream_batch(["romeo"] * 64, seeds=range(64), max_chars=50))
    for k in (0, 13, 63):
        assert "".join(r[k] for r in rows) == single.generate(50, prime="romeo", seed=k)


def test_native_never_imports_tensorflow(trained_run):
    code = ("import sys; from charstream import generate; "
            f"rc = generate.main([{str(trained_run)!r}, '--backend', 'native', '--length', '20']); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules; sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout) == 21


def test_reset_rows_zeroes_only_those_rows():
    model = build_training_model(depth=5, units=4)
    net = _native(model, batch=3)
    net.probs([1, 2, 3])
    before = net.state()
    net.reset([False, True, False])
    after = net.state()
    for (h0, c0), (h1, c1) in zip(before, after):
        assert h0[1].any() and c0[1].any()  # there was a state to lose
        np.testing.assert_array_equal(h1[[0, 2]], h0[[0, 2]])
        np.testing.assert_array_equal(c1[[0, 2]], c0[[0, 2]])
        assert not h1[1].any() and not c1[1].any()


def test_keras_backend_reset_rows_keeps_the_other_rows(trained_run):
    from charstream.streaming.keras_backend import KerasBackend

    model, _, _ = load_run(trained_run)
    backend = KerasBackend(model, batch=3)
    alone = KerasBackend(model, batch=3)
    for ids in ([1, 2, 3], [4, 5, 6]):
        backend.probs(ids)
        alone.probs(ids)
    backend.reset([False, True, False])
    after = backend.probs([7, 8, 9])
    kept = alone.probs([7, 8, 9])
    alone.reset()
    fresh = alone.probs([7, 8, 9])
    np.testing.assert_array_equal(after[[0, 2]], kept[[0, 2]])   # rows 0, 2 kept their state
    np.testing.assert_allclose(after[1], fresh[1], atol=1e-7)     # row 1 started over
    assert not np.allclose(after[1], kept[1], atol=1e-4)


def test_unseeded_batched_streams_differ_from_each_other_and_from_run_to_run(trained_run):
    batch = StreamGenerator.load(trained_run, backend="native", batch_size=4)
    first = list(batch.stream_batch(["romeo:"] * 4, seeds=None, max_chars=60))
    second = list(batch.stream_batch(["romeo:"] * 4, seeds=None, max_chars=60))
    texts = ["".join(r[k] for r in first) for k in range(4)]
    again = ["".join(r[k] for r in second) for k in range(4)]
    assert len(set(texts)) == 4                       # each stream draws its own
    assert set(texts).isdisjoint(again)               # fresh entropy every call
    seeded = StreamGenerator.load(trained_run, backend="native", batch_size=4)
    pinned = [list(seeded.stream_batch(["romeo:"] * 4, seeds=[5, 6, 7, 8], max_chars=60))
              for _ in range(2)]
    assert pinned[0] == pinned[1]                     # while a seed pins the text


# --------------------------------------------------------------------------- bad input

def test_bad_construction():
    w = [(np.zeros((5, 16), np.float32), np.zeros((4, 16), np.float32), np.zeros(16, np.float32))]
    with pytest.raises(ValueError, match="batch must be a positive integer, got 0"):
        NativeLSTM(w, np.zeros((4, 5)), np.zeros(5), batch=0)
    with pytest.raises(ValueError, match=r"layer 0 kernel must have shape \(5, 16\), got \(6, 16\)"):
        NativeLSTM([(np.zeros((6, 16)),) + w[0][1:]], np.zeros((4, 5)), np.zeros(5))
    with pytest.raises(ValueError, match=r"dense kernel must have shape \(4, 5\)"):
        NativeLSTM(w, np.zeros((3, 5)), np.zeros(5))
    with pytest.raises(ValueError, match="non-finite"):
        NativeLSTM(w, np.full((4, 5), np.nan), np.zeros(5))
    with pytest.raises(ValueError, match="at least one LSTM layer"):
        NativeLSTM([], np.zeros((4, 5)), np.zeros(5))
    net = NativeLSTM(w, np.zeros((4, 5)), np.zeros(5))
    with pytest.raises(ValueError, match=r"ids\[0\] = 5 is out of range for depth 5"):
        net.probs([5])
    with pytest.raises(ValueError, match="out of range"):
        net.step_sample1(-1, 1.0, 0, 0.5)
    with pytest.raises(ValueError, match="temperature"):
        net.step_sample1(0, -1.0, 0, 0.5)


def test_batch_size_zero(trained_run):
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        StreamGenerator.load(trained_run, backend="native", batch_size=0)
    with pytest.raises(ValueError, match="backend must be one of"):
        StreamGenerator.load(trained_run, backend="cuda")


def test_wrong_number_of_primes(trained_run):
    gen = StreamGenerator.load(trained_run, backend="native", batch_size=2)
    with pytest.raises(ValueError, match="expected 2 primes"):
        gen.stream_batch(["a"])
    with pytest.raises(ValueError, match="expected 2 seeds"):
        gen.stream_batch(["a", "b"], seeds=[1])
    with pytest.raises(ValueError, match="needs batch_size 1"):
        gen.stream()


def _save(path, **arrays):
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def test_corrupt_or_mismatched_stream_weights(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    good = dict(np.load(run / "stream.npz"))
    meta = json.loads(bytes(good["meta"]))
    path = run / "stream.npz"

    def expect(match):
        with pytest.raises(ValueError, match=match) as info:
            StreamGenerator.load(run, backend="native")
        assert "stream.npz" in str(info.value)

    path.write_bytes(b"not a zip at all")
    expect("not a readable .npz file")
    _save(path, **{k: v for k, v in good.items() if k != "dense_bias"})
    expect("missing array 'dense_bias'")
    _save(path, **{**good, "meta": np.frombuffer(json.dumps({**meta, "version": 7}).encode(), np.uint8)})
    expect("unsupported stream weights version 7")
    _save(path, **{**good, "meta": np.frombuffer(b"{not json", np.uint8)})
    expect("no valid \"meta\"")
    _save(path, **{**good, "lstm_1_bias": good["lstm_1_bias"].astype(np.float64)})
    expect("lstm_1_bias must be float32")
    _save(path, **{**good, "lstm_1_recurrent_kernel": good["lstm_1_recurrent_kernel"][:, :-4]})
    u = good["lstm_1_recurrent_kernel"].shape[0]
    expect(rf"lstm_1_recurrent_kernel has shape \({u}, {4 * u - 4}\), but the meta's depth and "
           rf"units make it \({u}, {4 * u}\)")
    # The arrays' real shapes are held to the meta (the server once trusted it).
    _save(path, **{**good, "meta": np.frombuffer(json.dumps({**meta, "depth": 40}).encode(), np.uint8)})
    expect(rf"lstm_1_kernel has shape \(36, {4 * u}\), but the meta's depth and units make it "
           rf"\(40, {4 * u}\)")
    top = good["dense_kernel"].shape[0]
    wide = {**good, "meta": np.frombuffer(json.dumps({**meta, "depth": 40}).encode(), np.uint8),
            "lstm_1_kernel": np.zeros((40, 4 * u), np.float32),
            "dense_kernel": np.zeros((top, 40), np.float32), "dense_bias": np.zeros(40, np.float32)}
    _save(path, **wide)
    expect("stream.npz reads and predicts 40 symbols but vocab.json has 36")
    # The recorded cell must be the one the C step computes.
    for key, value in (("gates", "fico"), ("activation", "relu"),
                       ("recurrent_activation", "hard_sigmoid")):
        _save(path, **{**good, "meta": np.frombuffer(
            json.dumps({**meta, key: value}).encode(), np.uint8)})
        expect(f"meta '{key}' is '{value}', but the native step computes")
    path.unlink()
    with pytest.raises(FileNotFoundError, match="stream.npz: no such stream weights file"):
        StreamGenerator.load(run, backend="native")
    # The pickle door stays shut: an object array is refused, not unpickled.
    np.savez(path, **{**good, "dense_bias": np.array([{"x": 1}], dtype=object)})
    expect("dense_bias must be float32, got object")


def test_hostile_stream_weights_sizes_are_refused_before_anything_is_allocated(trained_run, tmp_path):
    good = dict(np.load(trained_run / "stream.npz"))
    path = tmp_path / "stream.npz"

    def refused(match):
        with pytest.raises(ValueError, match=match) as info:
            load_stream_weights(path)
        assert str(path) in str(info.value) and len(str(info.value)) < 300

    _save(path, **{**good, "meta": meta_with(good, layers=3_000_000)})
    refused(r"meta \"layers\" must be an integer in \[1, 64\], got 3000000")
    _save(path, **{**good, "meta": meta_with(good, layers=3_000_000, units=[128] * 3_000_000)})
    refused(r"its \"meta\" entry is 15,\d{3},\d{3} bytes, more than the 65,536")
    _save(path, **{**good, "meta": meta_with(good, units=[10 ** 6])})
    refused(r"meta \"units\" must be an integer in \[1, 8192\], got 1000000")
    _save(path, **{**good, "meta": meta_with(good, layers=64, units=[8192] * 64)})
    refused(r"declares 34,\d{3},\d{3},\d{3} weights, more than the 268,435,456")
    _save(path, **{**good, "meta": meta_with(good, depth=10 ** 9)})
    refused(r"meta \"depth\" must be an integer in \[1, 256\]")
    # A header declaring 10^12 elements is a shape error, not a MemoryError.
    write_lying_header(path, good, "dense_bias", (10 ** 12,))
    refused(r"dense_bias has shape \(1000000000000,\), but the meta's depth and units make it \(36,\)")


def test_entries_the_meta_does_not_name_are_never_read(trained_run, tmp_path):
    import zipfile

    good = dict(np.load(trained_run / "stream.npz"))
    path = tmp_path / "stream.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for name, array in good.items():
            with zf.open(name + ".npy", "w") as fh:
                np.lib.format.write_array(fh, array)
        zf.writestr("junk.npy", b"J" * 4096)
    raw = bytearray(path.read_bytes())
    at = raw.index(b"J" * 4096)
    raw[at:at + 4096] = b"K" * 4096   # a failing CRC the moment anything reads it
    path.write_bytes(bytes(raw))
    with zipfile.ZipFile(path) as zf, pytest.raises(zipfile.BadZipFile):
        zf.read("junk.npy")
    weights = load_stream_weights(path)
    np.testing.assert_array_equal(weights["dense"][1], good["dense_bias"])


def test_running_out_of_memory_while_loading_is_one_line(trained_run, monkeypatch):
    import zipfile

    def no_memory(self, n=-1):
        raise MemoryError
    monkeypatch.setattr(zipfile.ZipExtFile, "read", no_memory)
    with pytest.raises(ValueError, match=r"stream.npz: not enough memory for its [\d,]+ weights"):
        load_stream_weights(trained_run / "stream.npz")


def test_exported_weights_are_the_inference_copys(trained_run):
    model, _, _ = load_run(trained_run)
    weights = load_stream_weights(trained_run / "stream.npz")
    inf = build_inference_model(model)
    for (k, r, b), layer in zip(weights["lstms"], lstm_layers(inf)):
        for a, e in zip((k, r, b), layer.get_weights()):
            np.testing.assert_array_equal(a, e)
    assert weights["meta"]["units"] == [24] and weights["meta"]["gates"] == "ifco"
