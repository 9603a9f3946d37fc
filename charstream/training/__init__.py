"""The training stage: plan → build → fit → finish.

`plan` (the arguments resolved and checked before anything is written),
`pipeline` and `batches` (one-hot batches on demand, windows or carried-state
streams, the streams in chunks of id batches), `steps` (the stream-mode step that
trains a whole chunk per call), `fused` (the LSTM as a C++ TensorFlow op,
`lstm_op.cc`, built on first use) and `unrolled` (its fallback in TensorFlow's
ops), `weight_drop`, `callbacks` (stop, resume, budget, validation through the
native step), `distribute` (tf.distribute, the one reader of `TF_CONFIG`), `plot`,
and `fit` (build, fit, finish). `python -m charstream.train` is the command line.
"""
