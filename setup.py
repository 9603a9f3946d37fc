"""Build the Cython kernels in csrc/ into charstream._text.

Metadata lives in pyproject.toml; this file only describes the extension.
Set CHARSTREAM_DEBUG=1 to rebuild with bounds and initialisation checks on
(and no -O3) when chasing a memory bug in a kernel.
"""
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("CHARSTREAM_DEBUG", "0") not in ("", "0")

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": False,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}

extensions = [
    Extension(
        "charstream._text",
        ["csrc/_text.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O0", "-g"] if DEBUG else ["-O3"],
    ),
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives, force=DEBUG))
