"""Import the compiled kernels, with a message that says how to build them."""
try:
    from . import _text  # noqa: F401  (charstream/data/_text*.so, built from csrc/_text.pyx)
except ImportError as err:  # pragma: no cover - only without a build
    raise ImportError(
        "charstream's compiled extension charstream.data._text is missing: install the "
        "package with `pip install .` (or `pip install -e .` in a clone), which "
        "compiles csrc/_text.pyx. If you run from a clone after `pip install .`, the "
        f"source folder shadows the installed package. ({err})"
    ) from err
