"""Group `reduce`: reducing and encoding text, Cython vs plain Python.

Every contender's output is checked, after timing, against the plain definition
in `charstream._reference` (`reduce_text`, `encode_reduced`: one character at a
time), computed once per text.
"""
import numpy as np
import pytest

from charstream import _reference as ref

from _shared import record_rate

SIZES = ["1x", "4x", "16x", "non-ascii"]


@pytest.fixture(scope="module")
def definitions(texts):
    """The plain definition's output for each text, computed once (slowly)."""
    cache = {}

    def get(kind, size):
        if (kind, size) not in cache:
            fn = ref.reduce_text if kind == "reduce" else ref.encode_reduced
            cache[kind, size] = fn(texts[size])
        return cache[kind, size]

    return get


@pytest.mark.benchmark(group="reduce: reduce_text -> str")
@pytest.mark.parametrize("size", SIZES)
def test_reduce(benchmark, texts, definitions, reduce_contender, size):
    name, contender = reduce_contender
    if name == "python-tutorial-loop" and size not in ("1x", "non-ascii"):
        pytest.skip("the per-character loop is only timed at 1x (it is linear and slow)")
    text = texts[size]
    benchmark.extra_info["contender"] = name
    out = benchmark.pedantic(contender, (text,), rounds=5, warmup_rounds=1)
    record_rate(benchmark, len(text) / 1e6, "Mchar/s")
    assert out == definitions("reduce", size)


@pytest.mark.benchmark(group="reduce: encode_reduced -> uint8 ids")
@pytest.mark.parametrize("size", SIZES)
def test_encode(benchmark, texts, definitions, encode_contender, size):
    name, contender = encode_contender
    benchmark.extra_info["contender"] = name
    text = texts[size]
    out = benchmark.pedantic(contender, (text,), rounds=5, warmup_rounds=1)
    record_rate(benchmark, len(text) / 1e6, "Mchar/s")
    np.testing.assert_array_equal(out, definitions("encode", size))
