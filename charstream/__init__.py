"""charstream: character-level LSTM language models that stream text.

The stages are subpackages: `charstream.data` (text → ids → one-hot, no
TensorFlow), `charstream.training`, `charstream.streaming` (the generator and
the native C step) and `charstream.serving` (continuous batching over HTTP),
around the shared contract at the top (`config`, `run`, `weights`, `model`).

The text pipeline (`ALPHABET`, `reduce_text`, `encode_reduced`, `Vocabulary`,
`load_corpus`, `onehot_windows`, `onehot_batch`, `translate`) is imported eagerly
and needs no TensorFlow. Names that need Keras are imported on first use, so
`import charstream` stays fast.
"""
from ._version import __version__
from .config import TrainConfig
from .data import (ALPHABET, Vocabulary, encode_reduced, load_corpus, onehot_batch,
                   onehot_windows, reduce_text, translate)

# name -> module, imported on first attribute access (PEP 562).
_LAZY = {
    "build_training_model": ".model",
    "build_stream_model": ".model",
    "build_inference_model": ".model",
    "reset_states": ".model",
    "WindowBatches": ".training.batches",
    "StreamBatches": ".training.batches",
    "StreamGenerator": ".streaming.generator",
    "State": ".streaming.state",
    "evaluate_stream": ".streaming.evaluate",
    "Engine": ".serving.engine",
}

__all__ = [
    "__version__", "TrainConfig", "ALPHABET", "Vocabulary", "encode_reduced", "load_corpus",
    "reduce_text", "onehot_batch", "onehot_windows", "translate", *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'charstream' has no attribute {name!r}")
