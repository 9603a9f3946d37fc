"""charstream.run: the run directory's names, reading and cross-checks; and the
shared argument checks."""
import json
import shutil

import numpy as np
import pytest

from charstream import _checks
from charstream.config import ConfigError, TrainConfig
from charstream.streaming.evaluate import evaluate_stream, held_out_text
from charstream.data.corpus import split_index
from charstream.run import RunDir, RunError
from charstream.data.text import encode_reduced


def test_every_file_name_lives_here(tmp_path):
    run = RunDir(tmp_path)
    names = [run.config_file, run.vocab_file, run.summary_file, run.history_file,
             run.plot_file, run.model_file, run.stream_file, run.sample_file]
    assert [p.name for p in names] == [
        "config.json", "vocab.json", "summary.json", "history.csv", "history.png",
        "model.keras", "stream.npz", "sample.txt"]
    assert run.checkpoint(7) == tmp_path / "checkpoints" / "epoch-0007.keras"


def test_newest_checkpoint_ignores_temporary_files(tmp_path):
    run = RunDir(tmp_path)
    assert run.newest_checkpoint() == (0, None)
    run.checkpoints.mkdir()
    for name in ("epoch-0002.keras", "epoch-0010.keras", ".epoch-0011.keras.x.tmp.keras",
                 "epoch-12.keras"):
        (run.checkpoints / name).write_text("")
    assert run.newest_checkpoint() == (10, run.checkpoint(10))


def test_a_new_run_needs_an_empty_place(tmp_path):
    assert RunDir.new(tmp_path / "fresh").path == tmp_path / "fresh"
    (tmp_path / "empty").mkdir()
    assert RunDir.new(tmp_path / "empty").path == tmp_path / "empty"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(RunError, match="already exists and is not an empty directory"):
        RunDir.new(tmp_path / "full")


def test_bad_run_directories_are_one_error_type(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    doc = json.loads((run / "config.json").read_text())
    for broken, match in [
        ({**doc, "format": "other"}, "config.json: not a charstream run config"),
        ({**doc, "version": 9}, "unsupported config version 9"),
        ({**doc, "settings": {**doc["settings"], "colour": 1}}, "only TrainConfig fields"),
        ({**doc, "settings": {**doc["settings"], "units": 0}},
         "config.json: units must be a positive integer, got 0"),
    ]:
        (run / "config.json").write_text(json.dumps(broken))
        with pytest.raises(RunError, match=match):
            RunDir(run).read()
    assert issubclass(RunError, ConfigError) and issubclass(RunError, ValueError)


def test_the_split_is_defined_once(trained_run, corpus_file):
    # Training held out ids[split:]; evaluation reads back exactly those.
    settings = RunDir(trained_run).read().settings
    ids = encode_reduced(corpus_file.read_text())
    split = split_index(len(ids), settings.val_fraction)
    assert split == int(len(ids) * (1 - settings.val_fraction))
    np.testing.assert_array_equal(RunDir(trained_run).held_out_ids(), ids[split:])
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["val_targets"] == len(ids) - split - settings.seq_len
    assert held_out_text(trained_run) == RunDir(trained_run).read().vocab.decode(ids[split:])


def test_evaluation_refuses_a_changed_corpus(trained_run, tmp_path, corpus_file):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    changed = tmp_path / "changed.txt"
    changed.write_text(corpus_file.read_text().replace("ROMEO", "TYBALT"))
    doc = json.loads((run / "config.json").read_text())
    doc["corpus"]["path"] = doc["settings"]["data"] = str(changed)
    (run / "config.json").write_text(json.dumps(doc))
    for backend in ("keras", "native"):
        with pytest.raises(RunError, match="changed.txt: the corpus changed since"):
            evaluate_stream(run, backend=backend)


def test_nothing_held_out(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    doc = json.loads((run / "config.json").read_text())
    doc["settings"]["val_fraction"] = 0
    (run / "config.json").write_text(json.dumps(doc))
    with pytest.raises(RunError, match="trained with val_fraction 0"):
        RunDir(run).held_out_ids()


# --------------------------------------------------------------------------- _checks

@pytest.mark.parametrize("check, value, message", [
    (_checks.positive_int, 0, "x must be a positive integer, got 0"),
    (_checks.positive_int, True, "x must be a positive integer, got True"),
    (_checks.positive_int, 2.0, "x must be a positive integer, got 2.0"),
    (_checks.non_negative_int, -1, "x must be a non-negative integer, got -1"),
    (_checks.fraction, 1.0, "x must be in [0, 1), got 1.0"),
    (_checks.fraction, float("nan"), "x must be in [0, 1), got nan"),
    (_checks.positive_number, 0, "x must be a positive number, got 0"),
    (_checks.positive_number, float("inf"), "x must be a positive number, got inf"),
    (_checks.non_negative_number, -0.5, "x must be a finite number >= 0, got -0.5"),
    (_checks.boolean, 1, "x must be true or false, got 1"),
    (_checks.optional_positive_int, 0, "x must be a positive integer or None, got 0"),
    (_checks.optional_non_negative_int, -2, "x must be a non-negative integer or None, got -2"),
])
def test_checks_quote_the_bad_value(check, value, message):
    with pytest.raises(ValueError) as info:
        check(value, "x")
    assert str(info.value) == message


def test_checks_raise_the_callers_error_type():
    with pytest.raises(ConfigError, match="units must be a positive integer, got -3"):
        TrainConfig(units=-3).validate()
    with pytest.raises(ConfigError, match=r"mode must be one of \('windows', 'stream'\), got 'x'"):
        _checks.one_of("x", "mode", ("windows", "stream"), ConfigError)
    assert _checks.fraction(0, "x") == 0.0 and _checks.positive_int(3, "x") == 3
