"""--mode stream: the contiguous batch layout, carried state, validation that does
not touch training, --max-time, and the bad values of the new settings."""
import json
import math

import numpy as np
import pytest

from charstream import train
from charstream.training.batches import StreamBatches, StreamChunks
from charstream.data.windows import stream_length


def _decode(X):
    """The ids a one-hot float32 batch holds: (batch, steps)."""
    assert set(np.unique(X)) <= {0.0, 1.0} and (X.sum(axis=-1) == 1).all()
    return X.argmax(axis=-1)


@pytest.mark.parametrize("n, batch, seq_len", [(1000, 4, 16), (997, 3, 5), (150, 2, 7)])
def test_batches_are_contiguous_streams(n, batch, seq_len):
    ids = (np.arange(n) % 251).astype(np.uint8)  # position-like ids: easy to check
    data = StreamBatches(ids, batch, seq_len, depth=256, seed=3, epoch=0)
    L = data.stream_len
    assert L == (n - seq_len) // batch // seq_len * seq_len == stream_length(n, batch, seq_len)
    assert len(data) == L // seq_len and data.targets == batch * L
    for epoch in range(3):
        data.set_epoch(epoch)
        off = data.offset
        assert 0 <= off < seq_len
        for k in range(len(data)):
            X, Y = data[k]
            assert X.shape == (batch, seq_len, 256) and X.dtype == np.float32
            assert Y.shape == (batch, seq_len) and Y.dtype == np.int32
            for s in range(batch):
                first = off + s * L + k * seq_len
                np.testing.assert_array_equal(_decode(X)[s], ids[first:first + seq_len])
                np.testing.assert_array_equal(Y[s], ids[first + 1:first + seq_len + 1])
        # The ragged end is dropped: nothing past the last stream's end is read.
        assert off + batch * L <= n - 1
    with pytest.raises(IndexError):
        data[len(data)]


def test_each_epoch_moves_the_streams_by_an_offset_from_the_seed():
    ids = np.zeros(5000, np.uint8)

    def offsets(seed):
        data = StreamBatches(ids, 4, 16, 36, seed=seed)
        out = []
        for epoch in range(12):
            data.set_epoch(epoch)
            out.append(data.offset)
        return out

    a = offsets(1)
    assert a == offsets(1)                    # the same seed, the same offsets
    assert a != offsets(2)
    assert len(set(a)) > 3                    # the chunk boundaries move
    resumed = StreamBatches(ids, 4, 16, 36, seed=1, epoch=7)
    assert resumed.offset == a[7]             # a resume starts where the run would be


@pytest.mark.parametrize("n, batch, seq_len, chunk", [(1000, 4, 16, 4), (997, 3, 5, 5),
                                                     (150, 2, 7, 32)])
def test_chunks_hold_the_batches_as_ids_the_last_padded(n, batch, seq_len, chunk):
    ids = (np.arange(n) % 251).astype(np.uint8)
    batches = StreamBatches(ids, batch, seq_len, depth=256, seed=3)
    chunks = StreamChunks(ids, batch, seq_len, 256, chunk, seed=3)
    assert chunks.batches == len(batches) and len(chunks) == math.ceil(len(batches) / chunk)
    for epoch in range(2):
        batches.set_epoch(epoch)
        chunks.set_epoch(epoch)
        for i in range(len(chunks)):
            X, Y = chunks[i]
            assert X.shape == Y.shape == (chunk, batch, seq_len)
            assert X.dtype == np.uint8 and Y.dtype == np.int32
            for k in range(chunk):
                if i * chunk + k < len(batches):
                    bx, by = batches[i * chunk + k]
                    np.testing.assert_array_equal(X[k], _decode(bx))
                    np.testing.assert_array_equal(Y[k], by)
                else:  # padding: the step skips batches whose targets are -1
                    assert (Y[k] == -1).all() and (X[k] == 0).all()
    with pytest.raises(IndexError):
        chunks[len(chunks)]
    with pytest.raises(ValueError, match="chunk must be a positive integer, got 0"):
        StreamChunks(ids, batch, seq_len, 256, 0)


def test_the_chunk_step_trains_as_the_per_batch_loop_bit_for_bit():
    """Without XLA, chunks looped inside the step are Keras's `steps_per_execution`
    loop, bit for bit, padding and dropout included; XLA sums in other orders (and
    draws other dropout masks), so without dropout it stays within float noise."""
    import keras

    from charstream.model import build_stream_model
    from charstream.training.steps import train_in_chunks

    ids = np.random.default_rng(0).integers(0, 36, 3000).astype(np.uint8)
    batches = StreamBatches(ids, 4, 8, 36, seed=1)
    chunks = StreamChunks(ids, 4, 8, 36, 4, seed=1)
    assert len(batches) % 4  # the last chunk is padded

    def trained(chunked: bool, jit: bool = False, dropout: float = 0.1):
        keras.utils.set_random_seed(0)
        model = build_stream_model(4, 8, units=8, dropout=dropout, unroll=True,
                                   steps_per_execution=4, learning_rate=3e-3)
        data = chunks if chunked else batches
        if chunked:
            train_in_chunks(model, 36, jit)
        model.fit(data, epochs=2, verbose=0, shuffle=False, callbacks=[data.epoch_callback()])
        return model.get_weights()

    per_batch, chunked = trained(False), trained(True)
    for a, b in zip(per_batch, chunked):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(trained(False, dropout=0.0), trained(True, jit=True, dropout=0.0)):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_too_short_for_the_streams():
    with pytest.raises(ValueError, match="too few for 8 streams of one 16-character step"):
        StreamBatches(np.zeros(100, np.uint8), 8, 16, 36)


# ------------------------------------------------------------------ carried state

def _pairs_text(n_words: int, seed: int = 0) -> str:
    # "qz qz mk mk ...": every two-letter word is said twice. The copy is
    # predictable only by a model that still sees the first one, three characters
    # back, which at a chunk boundary is in the previous chunk.
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefgh"))
    words = ["".join(rng.choice(letters, 2)) for _ in range(n_words)]
    return "".join(f"{w} {w} " for w in words)


def test_the_state_really_carries_across_chunks(tmp_path):
    from charstream.streaming._lstm import NativeLSTM
    from charstream.weights import load_stream_weights
    from charstream.data.text import encode_reduced

    path = tmp_path / "pairs.txt"
    path.write_text(_pairs_text(4000))
    run = tmp_path / "run"
    # 4-character chunks: most copies sit in another chunk than their first word.
    assert train.main(["--data", str(path), "--mode", "stream", "--seq-len", "4",
                       "--batch-size", "16", "--units", "32", "--epochs", "6",
                       "--learning-rate", "0.01", "--out", str(run),
                       "--sample-length", "0"]) == 0
    weights = load_stream_weights(run / "stream.npz")
    net = NativeLSTM(weights["lstms"], *weights["dense"])
    ids = encode_reduced(_pairs_text(600, seed=1))          # unseen text
    net.reset()
    carried = net.score(ids)[0][3:].mean()
    reset = []
    for k in range(0, len(ids) - 4, 4):                       # zero state every chunk
        net.reset()
        reset.append(net.score(ids[k:k + 5])[0])
    reset = np.concatenate(reset)[3:].mean()
    # Random first words cost 2 ln 8 / 6 = 0.69 nats a character; copied ones
    # nothing, if the model remembers (this short run gets to about 0.9). Reset
    # at every chunk it cannot: about 1.7.
    assert carried < 1.1 and carried + 0.5 < reset, (carried, reset)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_loss"] == pytest.approx(carried, abs=0.1)


# ------------------------------------------------------------------ validation

def _history(run):
    import csv

    with open(run / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_validation_does_not_change_training(tmp_path, corpus_file, monkeypatch):
    from charstream.training.callbacks import StreamValidation

    common = ["--data", str(corpus_file), "--mode", "stream", "--units", "16",
              "--batch-size", "8", "--epochs", "2", "--seed", "5", "--sample-length", "0"]
    assert train.main([*common, "--out", str(tmp_path / "with")]) == 0
    monkeypatch.setattr(StreamValidation, "on_epoch_end", lambda self, epoch, logs=None: None)
    assert train.main([*common, "--out", str(tmp_path / "without")]) == 0
    with_val, without = _history(tmp_path / "with"), _history(tmp_path / "without")
    assert "val_loss" in with_val[0] and "val_loss" not in without[0]
    assert [r["loss"] for r in with_val] == [r["loss"] for r in without]  # bit for bit
    for a, b in zip(with_val, without):
        assert float(a["val_loss"]) > 0


def test_the_held_out_loss_is_the_evaluated_stream_loss(stream_run):
    from charstream.streaming.evaluate import evaluate_stream

    summary = json.loads((stream_run / "summary.json").read_text())
    result = evaluate_stream(stream_run, backend="native")
    assert summary["val_loss"] == pytest.approx(result["stream_nats"], abs=1e-9)
    assert summary["val_targets"] == result["characters"]
    rows = _history(stream_run)
    assert float(rows[-1]["val_loss"]) == pytest.approx(summary["val_loss"], abs=1e-9)


# ------------------------------------------------------------------ --max-time

@pytest.mark.parametrize("mode", ["stream", "windows"])
def test_max_time_ends_the_run_cleanly(tmp_path, corpus_file, mode, capsys):
    run = tmp_path / "run"
    # Short epochs (about 170 steps): the budget ends in the middle of a late one.
    assert train.main(["--data", str(corpus_file), "--mode", mode, "--units", "16",
                       "--batch-size", "4", "--samples", "700" if mode == "windows" else "all",
                       "--epochs", "500", "--max-time", "6s", "--out", str(run),
                       "--sample-length", "20"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["ended_by"] == "max_time" and 2 <= summary["epochs"] < 500
    assert summary["training_seconds"] >= 6
    names = sorted(p.name for p in run.iterdir())
    assert names == ["checkpoints", "config.json", "history.csv", "history.png", "model.keras",
                     "sample.txt", "stream.npz", "summary.json", "vocab.json"]
    assert len(list((run / "checkpoints").iterdir())) == summary["epochs"]
    rows = _history(run)
    assert len(rows) == summary["epochs"] and float(rows[-1]["seconds"]) >= 6
    # The learning rate decays over the budget (to 10% at its very end; the last
    # update comes one execution of steps before it).
    rates = [float(r["learning_rate"]) for r in rows]
    assert rates == sorted(rates, reverse=True) and rates[-1] <= 0.3 * 2e-3
    assert "stopped by --max-time" in capsys.readouterr().out
    # Resuming with the budget spent has nothing to do; a larger one continues.
    assert train.main(["--resume", str(run), "--sample-length", "0"]) == 2
    assert "the whole --max-time" in capsys.readouterr().err


def test_the_schedule_follows_whichever_limit_comes_first():
    from charstream.training.callbacks import LinearDecay

    decay = LinearDecay(1.0, 0.1, epochs=5, max_time=100)
    assert decay.rate(0, 0) == 1.0
    assert decay.rate(2, 10) == pytest.approx(0.55)        # half the epochs
    assert decay.rate(1, 50) == pytest.approx(0.55)        # half the time
    assert decay.rate(4, 0) == decay.rate(0, 500) == pytest.approx(0.1)
    assert LinearDecay(1.0, 0.1, epochs=5).rate(2, 1e9) == pytest.approx(0.55)


# ------------------------------------------------------------------ bad values

def _bad(capsys, argv, match):
    with pytest.raises(SystemExit) as info:
        train.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and match in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("argv, match", [
    (["--mode", "sideways"], "argument --mode: invalid choice: 'sideways'"),
    (["--max-time", "5x"], "expected a duration such as 90s, 5m or 1h30m, got '5x'"),
    (["--max-time", "0s"], "expected a positive duration, got '0s'"),
    (["--max-time", ""], "expected a duration such as 90s, 5m or 1h30m, got ''"),
])
def test_bad_mode_and_max_time(tmp_path, capsys, argv, match):
    _bad(capsys, [*argv, "--out", str(tmp_path / "r")], match)
    assert not (tmp_path / "r").exists()


def test_stream_mode_refuses_several_replicas(tmp_path, capsys, corpus_file):
    rc = train.main(["--data", str(corpus_file), "--mode", "stream", "--strategy", "mirrored",
                     "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "--mode stream trains on one device" in err
    assert not (tmp_path / "r").exists()


def test_a_corpus_too_short_for_the_streams(tmp_path, capsys):
    path = tmp_path / "short.txt"
    path.write_text("to be or not to be " * 30)
    rc = train.main(["--data", str(path), "--batch-size", "64", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "too few for 64 streams" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("text, seconds", [
    ("90", 90), ("90s", 90), ("5m", 300), ("1.5h", 5400), ("1h30m", 5400), ("2m30s", 150)])
def test_durations(text, seconds):
    from charstream.config import parse_duration

    assert parse_duration(text) == seconds
    assert math.isfinite(parse_duration(text))
