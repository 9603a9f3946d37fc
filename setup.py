"""Build the two compiled extensions from csrc/: charstream.data._text (the text
and one-hot kernels, csrc/_text.pyx) and charstream.streaming._lstm (the native
LSTM step and sampler, csrc/_lstm.pyx over csrc/lstm_step.h).

Metadata lives in pyproject.toml; this file only describes the extensions.
A C compiler is needed (gcc or clang); Cython and NumPy come from the build
requirements. OpenMP (-fopenmp) spreads batched streams over the cores on Linux;
CHARSTREAM_OPENMP=0 builds without it (single-threaded batches, nothing else
changes). CHARSTREAM_DEBUG=1 rebuilds with bounds and initialisation checks on
(and -O0 -g) when chasing a memory bug in a kernel.
"""
import os
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("CHARSTREAM_DEBUG", "0") not in ("", "0")
# GCC and clang on Linux take -fopenmp; elsewhere (or CHARSTREAM_OPENMP=0) the
# kernels are built single-threaded, which changes nothing but the batched speed.
OPENMP = (["-fopenmp"] if sys.platform.startswith("linux")
          and os.environ.get("CHARSTREAM_OPENMP", "1") != "0" else [])

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": False,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}

# (extension module, its Cython source): each lives in the stage that uses it.
SOURCES = (("charstream.data._text", "csrc/_text.pyx"),
           ("charstream.streaming._lstm", "csrc/_lstm.pyx"))

extensions = [
    Extension(
        name,
        [source],
        include_dirs=["csrc", np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        # -O3 vectorises the kernels' loops; lstm_step.h adds per-CPU clones; OpenMP
        # spreads a batch of streams over the cores (OMP_NUM_THREADS to limit it).
        extra_compile_args=(["-O0", "-g"] if DEBUG else ["-O3"]) + OPENMP,
        extra_link_args=OPENMP,
        depends=["csrc/lstm_step.h", "csrc/nt_copy.h"],
    )
    for name, source in SOURCES
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives, force=DEBUG))
