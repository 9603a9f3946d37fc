"""The streaming stage: a trained run as text, one character per step.

`sampling` (how a seed becomes text), the two backends behind one protocol
(`native`: the C step, the only door to it; `keras_backend`: the reference),
`generator` (`StreamGenerator`) and `evaluate` (held-out loss, windowed and
streamed). Nothing here but the Keras backend imports TensorFlow.
"""
