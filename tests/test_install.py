"""`pip install .` (not only editable) builds a working compiled extension."""
import importlib.machinery
import shutil
import subprocess
import sys
from pathlib import Path

import charstream.data._text

ROOT = Path(__file__).resolve().parents[1]


def test_extension_is_compiled():
    assert charstream.data._text.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def test_pip_install_dot_builds_the_extension(tmp_path):
    # Build from a copy of the sources, as a fresh clone would, into a target folder
    # (no dependencies: the venv already has them), then import it from elsewhere.
    src = tmp_path / "src"
    for name in ("charstream", "csrc"):
        shutil.copytree(ROOT / name, src / name,
                        ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--no-build-isolation", "--target", str(target), str(src)],
        check=True, cwd=tmp_path)
    code = ("import charstream, charstream.data._text as t; "
            "assert t.__file__.startswith(%r), t.__file__; "
            "print(charstream.reduce_text('Hi!'))" % str(target))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True,
                         capture_output=True, text=True, env={"PYTHONPATH": str(target)})
    assert out.stdout == "hi!\n"
