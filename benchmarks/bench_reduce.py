"""Group `reduce`: reducing and encoding text, Cython vs plain Python."""
import numpy as np
import pytest

from charstream import _reference as ref

from conftest import ENCODE_CONTENDERS, REDUCE_CONTENDERS, record_rate

SIZES = ["1x", "4x", "16x", "non-ascii"]


@pytest.mark.benchmark(group="reduce: reduce_text -> str")
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", REDUCE_CONTENDERS)
def test_reduce(benchmark, texts, name, size):
    if name == "python-tutorial-loop" and size not in ("1x", "non-ascii"):
        pytest.skip("the per-character loop is only timed at 1x (it is linear and slow)")
    text = texts[size]
    out = benchmark.pedantic(REDUCE_CONTENDERS[name], (text,), rounds=5, warmup_rounds=1)
    record_rate(benchmark, len(text) / 1e6, "Mchar/s")
    assert out == ref.reduce_text_translate(text)


@pytest.mark.benchmark(group="reduce: encode_reduced -> uint8 ids")
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", ENCODE_CONTENDERS)
def test_encode(benchmark, texts, name, size):
    text = texts[size]
    out = benchmark.pedantic(ENCODE_CONTENDERS[name], (text,), rounds=5, warmup_rounds=1)
    record_rate(benchmark, len(text) / 1e6, "Mchar/s")
    if size == "1x":  # the slow definition once, on the real corpus
        np.testing.assert_array_equal(out, ref.encode_reduced(text))
    else:
        np.testing.assert_array_equal(out, ref.encode_reduced_translate(text))
