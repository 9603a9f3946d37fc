"""reduce_text, encode_reduced, Vocabulary and load_corpus against their definitions."""
import json
import subprocess
import sys
import types

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import charstream
from charstream import ALPHABET, Vocabulary, encode_reduced, load_corpus, reduce_text
from charstream import _reference as ref

# Any str, surrogates included (str.lower() and the kernel must both cope).
any_text = st.text(st.characters(codec=None, categories=None), max_size=200)
# Mostly ASCII with some of everything: exercises the fast path and its edges.
mixed_text = st.text(
    st.one_of(st.characters(min_codepoint=0, max_codepoint=127),
              st.sampled_from("İıKΣσςẞßÀéœŒǅﬃ\u0307\u212a\u2126😀\ud800")),
    max_size=200)


def test_alphabet_is_the_tutorials_36_characters_in_code_point_order():
    assert ALPHABET == "\n !',-.:;?abcdefghijklmnopqrstuvwxyz"
    assert len(ALPHABET) == 36
    assert list(ALPHABET) == sorted(set(ALPHABET))


@given(st.one_of(any_text, mixed_text))
def test_reduce_text_equals_definition(text):
    assert reduce_text(text) == ref.reduce_text(text)


@given(st.one_of(any_text, mixed_text))
def test_encode_reduced_equals_encode_of_reduce(text):
    out = encode_reduced(text)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, ref.encode_reduced(text))


def test_reduce_text_on_every_code_point():
    # Exhaustive: each code point once, and in a string of its own (the kernel
    # reads UCS1, UCS2 and UCS4 strings differently).
    everything = "".join(map(chr, range(0x110000)))
    assert reduce_text(everything) == ref.reduce_text(everything)
    np.testing.assert_array_equal(encode_reduced(everything), ref.encode_reduced(everything))
    for ch in ("\u0130", "\u212a", "\u00c9", "\u03a3", "\U0001d400", "\ud800"):
        assert reduce_text(ch + "Ab") == ref.reduce_text(ch + "Ab")


def test_reduce_text_known_cases():
    assert reduce_text("ROMEO: Wherefore?\tArt") == "romeo: wherefore? art"
    assert reduce_text("\u0130") == "i "        # lowercases to two characters
    assert reduce_text("\u212a") == "k"         # KELVIN SIGN lowercases to ASCII k
    assert reduce_text("") == ""
    assert encode_reduced("").shape == (0,)


@pytest.mark.parametrize("fn", [reduce_text, encode_reduced, Vocabulary.default().encode,
                                Vocabulary.from_text])
@pytest.mark.parametrize("bad", [b"bytes", bytearray(b"x"), None, 42, ["a"]])
def test_non_str_text_is_a_type_error(fn, bad):
    with pytest.raises(TypeError, match="must be a str"):
        fn(bad)


def test_bytes_error_says_to_decode():
    with pytest.raises(TypeError, match="decode it first"):
        reduce_text(b"abc")


def test_shared_corpus_reduces_to_36_characters(shakespeare):
    reduced = reduce_text(shakespeare)
    assert len(reduced) == 1_115_394
    assert len(set(reduced)) == 36
    ids = encode_reduced(shakespeare)
    np.testing.assert_array_equal(ids, Vocabulary.default().encode(reduced))


# ---------------------------------------------------------------- Vocabulary

def test_default_vocabulary():
    v = Vocabulary.default()
    assert v.chars == ALPHABET and v.size == 36 == len(v)
    assert v == Vocabulary(list(ALPHABET))


def test_from_text_is_the_sorted_set():
    v = Vocabulary.from_text("hello, World!")
    assert v.chars == "".join(sorted(set("hello, World!")))


@given(st.text(st.characters(codec=None, categories=None), min_size=1, max_size=300))
def test_encode_decode_round_trip_any_symbols(text):
    v = Vocabulary(sorted(set(text))[:256])
    text = "".join(ch for ch in text if ch in v.chars)
    ids = v.encode(text)
    np.testing.assert_array_equal(ids, ref.encode(text, v.chars))
    assert v.decode(ids) == text


def test_encode_unknown_character_names_it_and_its_position():
    v = Vocabulary("abc\u4e2d")
    with pytest.raises(ValueError, match=r"'d' \(U\+0064\) at position 3"):
        v.encode("ab\u4e2dd")
    with pytest.raises(ValueError, match=r"U\+1F600.*position 1"):
        v.encode("a\U0001f600")


def test_decode_bad_ids():
    v = Vocabulary.default()
    with pytest.raises(ValueError, match=r"ids\[1\] = 36 is out of range"):
        v.decode([0, 36])
    with pytest.raises(ValueError, match="out of range"):
        v.decode(np.array([-1]))
    with pytest.raises(TypeError, match="integers"):
        v.decode(np.array([1.0]))
    with pytest.raises(ValueError, match="1-D"):
        v.decode(np.zeros((2, 2), dtype=int))
    assert v.decode([]) == ""


@pytest.mark.parametrize("chars, error, match", [
    ("", ValueError, "at least one symbol"),
    ("abca", ValueError, r"'a' \(U\+0061\) appears twice \(ids 0 and 3\)"),
    (["a", "bc"], TypeError, "symbol 1 must be a one-character str"),
    (["a", 3], TypeError, "symbol 1"),
    ([chr(i) for i in range(257)], ValueError, "at most 256 symbols, got 257"),
])
def test_bad_vocabularies(chars, error, match):
    with pytest.raises(error, match=match):
        Vocabulary(chars)


def test_256_symbols_is_allowed():
    v = Vocabulary([chr(i + 200) for i in range(256)])
    text = "".join(chr(i + 200) for i in range(255, -1, -1))
    np.testing.assert_array_equal(v.encode(text), np.arange(255, -1, -1))


def test_save_load_round_trip(tmp_path):
    v = Vocabulary("\n xyz\u00e9\u4e2d\U0001f600")
    v.save(tmp_path / "vocab.json")
    assert Vocabulary.load(tmp_path / "vocab.json") == v
    assert [p.name for p in tmp_path.iterdir()] == ["vocab.json"]  # no temp file left


@pytest.mark.parametrize("content, match", [
    ("not json", "not valid JSON"),
    ("[1, 2]", "not a charstream vocabulary"),
    ('{"format": "other", "version": 1, "chars": ["a"]}', "not a charstream vocabulary"),
    ('{"format": "charstream.vocabulary", "version": 9, "chars": ["a"]}', "unsupported vocabulary version 9"),
    ('{"format": "charstream.vocabulary", "version": 1, "chars": "ab"}', "must be a list"),
    ('{"format": "charstream.vocabulary", "version": 1, "chars": []}', "at least one symbol"),
    ('{"format": "charstream.vocabulary", "version": 1, "chars": ["a", "a"]}', "appears twice"),
    ('{"format": "charstream.vocabulary", "version": 1, "chars": ["a", 1]}', "one-character str"),
    ('{"format": "charstream.vocabulary", "version": 1, "chars": ["ab"]}', "one-character str"),
])
def test_load_rejects_bad_files_naming_the_file(tmp_path, content, match):
    path = tmp_path / "vocab.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as info:
        Vocabulary.load(path)
    assert str(path) in str(info.value)


def test_load_too_many_symbols_and_missing_file(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({"format": "charstream.vocabulary", "version": 1,
                                "chars": [chr(i) for i in range(300)]}))
    with pytest.raises(ValueError, match="at most 256"):
        Vocabulary.load(path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        Vocabulary.load(tmp_path / "missing.json")


# ---------------------------------------------------------------- load_corpus

def test_load_corpus_reads_utf8(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes("Caf\u00e9\r\nbar".encode("utf-8"))
    assert load_corpus(path) == "Caf\u00e9\r\nbar"
    assert load_corpus(str(path)) == "Caf\u00e9\r\nbar"


def test_load_corpus_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_corpus(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.txt: the corpus is empty"):
        load_corpus(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes(b"abc\xe9def")
    with pytest.raises(ValueError, match=r"latin1.txt: not UTF-8 text: byte 0xe9 at offset 3"):
        load_corpus(tmp_path / "latin1.txt")
    with pytest.raises(ValueError, match="is a directory"):
        load_corpus(tmp_path)


def test_load_corpus_honours_charstream_data(tmp_path, monkeypatch):
    path = tmp_path / "env.txt"
    path.write_text("from the environment")
    monkeypatch.setenv("CHARSTREAM_DATA", str(path))
    assert load_corpus() == "from the environment"


def _fake_keras(monkeypatch, get_file):
    utils = types.ModuleType("keras.utils")
    utils.get_file = get_file
    keras = types.ModuleType("keras")
    keras.utils = utils
    monkeypatch.setitem(sys.modules, "keras", keras)
    monkeypatch.setitem(sys.modules, "keras.utils", utils)


def test_load_corpus_downloads_with_the_pinned_hash(tmp_path, monkeypatch):
    cached = tmp_path / "tinyshakespeare.txt"
    cached.write_text("First Citizen:")
    calls = []

    def get_file(fname, origin, file_hash, hash_algorithm, cache_subdir):
        calls.append((fname, origin, file_hash, hash_algorithm))
        return str(cached)

    monkeypatch.delenv("CHARSTREAM_DATA", raising=False)
    _fake_keras(monkeypatch, get_file)
    assert load_corpus() == "First Citizen:"
    assert calls == [("tinyshakespeare.txt", charstream.data.corpus.CORPUS_URL,
                      charstream.data.corpus.CORPUS_SHA256, "sha256")]
    assert "karpathy/char-rnn" in calls[0][1] and calls[0][1].endswith("tinyshakespeare/input.txt")


def test_load_corpus_offline_says_what_to_do(monkeypatch):
    def get_file(*args, **kwargs):
        raise Exception("URL fetch failure: network unreachable")

    monkeypatch.delenv("CHARSTREAM_DATA", raising=False)
    _fake_keras(monkeypatch, get_file)
    with pytest.raises(RuntimeError, match="set CHARSTREAM_DATA"):
        load_corpus()


def test_import_charstream_does_not_import_tensorflow():
    code = ("import sys, charstream; charstream.encode_reduced('x'); "
            "sys.exit(int('tensorflow' in sys.modules or 'keras' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
