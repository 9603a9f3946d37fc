"""Hostile `stream.npz` files for the loader's tests: a changed meta, a header
that lies about its array's size."""
import json
import zipfile

import numpy as np


def meta_with(good: dict, **changes) -> np.ndarray:
    """`good`'s meta entry with `changes` made, as the uint8 bytes it is stored as."""
    meta = json.loads(bytes(good["meta"]))
    return np.frombuffer(json.dumps({**meta, **changes}).encode(), np.uint8)


def write_lying_header(path, good: dict, name: str, shape: tuple) -> None:
    """A valid archive of `good` whose entry `name` declares `shape` in its
    `.npy` header but holds only its real data."""
    with zipfile.ZipFile(path, "w") as zf:
        for key, array in good.items():
            with zf.open(key + ".npy", "w") as fh:
                if key == name:
                    np.lib.format.write_array_header_1_0(
                        fh, {"descr": "<f4", "fortran_order": False, "shape": shape})
                    fh.write(array.tobytes())
                else:
                    np.lib.format.write_array(fh, array)
