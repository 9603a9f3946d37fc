"""The text stage: alphabet, reduction, `Vocabulary`, one-hot windows and streams
(Cython kernels, `csrc/_text.pyx`), reading a corpus and the train/held-out split.

No TensorFlow here.
"""
from .corpus import (Corpus, Split, corpus_path, file_sha256, load_corpus, read_corpus,
                     split_corpus, split_index, split_starts, window_starts)
from .text import ALPHABET, Vocabulary, encode_reduced, reduce_text
from .windows import onehot_batch, onehot_streams, onehot_windows, stream_length, translate

__all__ = ["ALPHABET", "Corpus", "Split", "Vocabulary", "corpus_path", "encode_reduced",
           "file_sha256", "load_corpus", "onehot_batch", "onehot_streams", "onehot_windows",
           "read_corpus", "reduce_text", "split_corpus", "split_index", "split_starts",
           "stream_length", "translate", "window_starts"]
