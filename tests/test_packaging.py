"""`python -m build` from a clean copy of the tree: an sdist with everything the
build needs and nothing it makes, a wheel with the compiled extensions and no
sources, and both installed in fresh virtual environments, offline, where the
kernels equal the reference and the native backend streams without TensorFlow.

Marked `packaging` (minutes: two builds, two installs): `pytest -m packaging`,
as .ci/run does; a plain `pytest` skips it.
"""
import os
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.packaging
ROOT = Path(__file__).resolve().parents[1]

SMOKE = textwrap.dedent("""
    import sys, json, numpy as np
    import charstream, charstream.data._text, charstream.streaming._lstm
    from charstream import _reference as ref
    assert "site-packages" in charstream.__file__, charstream.__file__
    text = "ROMEO: Wherefore art thou, \\u0130stanbul?\\n" * 50
    assert charstream.reduce_text(text) == ref.reduce_text(text)
    np.testing.assert_array_equal(charstream.encode_reduced(text), ref.encode_reduced(text))
    ids = charstream.encode_reduced(text)
    X, Y = charstream.onehot_windows(ids)
    Xr, Yr = ref.onehot_windows(ids)
    assert (X == Xr).all() and (Y == Yr).all()
    # A small stream.npz from random weights, streamed by the native backend.
    from charstream.streaming.native import NativeBackend
    from charstream.weights import export_stream_weights, load_stream_weights
    from charstream.streaming.generator import StreamGenerator
    rng = np.random.default_rng(0)
    f32 = lambda *shape: rng.normal(0, 0.3, shape).astype(np.float32)
    weights = {"lstms": [(f32(36, 32), f32(8, 32), f32(32))], "dense": (f32(8, 36), f32(36))}
    export_stream_weights(weights, sys.argv[1], 16)
    gen = StreamGenerator(NativeBackend(load_stream_weights(sys.argv[1])),
                          charstream.Vocabulary.default())
    text = gen.generate(200, prime="romeo:", seed=1)
    assert len(text) == 200 and set(text) <= set(charstream.ALPHABET)
    assert "tensorflow" not in sys.modules and "keras" not in sys.modules
    print(json.dumps({"ok": True, "sample": text[:40]}))
""")


FUSED = textwrap.dedent("""
    from charstream.training import fused
    print(fused.SOURCE)
    print(fused.build())
""")


def _run(*cmd, **kwargs):
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """sdist, then the wheel built from the sdist (what `python -m build` does),
    from a clean copy of the tracked files, without build isolation (offline)."""
    tmp = tmp_path_factory.mktemp("packaging")
    clean = tmp / "clone"
    _run("git", "clone", "--quiet", "--no-hardlinks", ROOT, clean)
    # The working tree as it is now (a clone has only what is committed).
    files = _run("git", "ls-files", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    for name in files.stdout.split():
        src = ROOT / name
        if src.is_file():
            (clean / name).parent.mkdir(parents=True, exist_ok=True)
            (clean / name).write_bytes(src.read_bytes())
    out = tmp / "dist"
    _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, clean, cwd=tmp,
         timeout=900)
    [sdist] = out.glob("charstream-*.tar.gz")
    [wheel] = out.glob("charstream-*.whl")
    return sdist, wheel


def test_the_sdist_holds_the_sources_and_nothing_built(dist):
    sdist, _ = dist
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in ("setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in",
                   "csrc/_text.pyx", "csrc/_lstm.pyx", "csrc/lstm_step.h", "csrc/nt_copy.h",
                   "charstream/serving/page.html", "charstream/serving/engine.py",
                   "charstream/data/corpus.py", "charstream/training/lstm_op.cc",
                   "tests/conftest.py",
                   "tests/test_packaging.py"):
        assert needed in names, needed
    assert not [n for n in names if n.endswith((".c", ".so", ".pyd", ".o", ".pyc"))]


def test_the_wheel_holds_the_package_and_the_extensions_and_no_sources(dist):
    _, wheel = dist
    names = set(zipfile.ZipFile(wheel).namelist())
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    # lstm_op.cc is compiled on first use, against the TensorFlow installed then
    assert {f"charstream/data/_text{suffix}", f"charstream/streaming/_lstm{suffix}",
            "charstream/__init__.py", "charstream/serving/page.html",
            "charstream/training/fit.py", "charstream/training/lstm_op.cc"} <= names
    assert not [n for n in names if n.startswith("csrc/") or n.endswith((".pyx", ".c", ".h"))]
    assert any(n.endswith("dist-info/licenses/LICENSE") for n in names)
    meta = next(n for n in names if n.endswith("dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert "Provides-Extra: serve" in text and "Provides-Extra: test" in text


@pytest.mark.parametrize("what", ["wheel", "sdist"])
def test_each_installs_offline_in_a_fresh_venv_and_works(dist, tmp_path, what):
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    # venv seeds an old setuptools of its own (no PEP 639 licence field): drop it,
    # so that the build uses this environment's, as the build requirements ask.
    _run(python, "-m", "pip", "uninstall", "--quiet", "--yes", "setuptools")
    # The dependencies (numpy; Cython and setuptools to build the sdist) come from
    # this environment, read-only through a .pth file: nothing is downloaded.
    site = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    Path(site.stdout.strip(), "_here.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    package = dist[0] if what == "sdist" else dist[1]
    _run(python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
         "--no-build-isolation", package, cwd=tmp_path, timeout=900)
    out = _run(python, "-c", SMOKE, tmp_path / "stream.npz", cwd=tmp_path,
               env={**os.environ, "PYTHONPATH": ""})
    assert '"ok": true' in out.stdout
    # the fused LSTM op's source ships with the package and builds (or is found built)
    out = _run(python, "-c", FUSED, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""},
               timeout=600)
    assert "site-packages" in out.stdout and out.stdout.strip().endswith(".so")
