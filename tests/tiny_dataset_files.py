"""Writers of tiny dataset files in the real formats, for tests (no real data needed)."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

from model_extraction.datasets.idx import encode_idx
from model_extraction.datasets.mnist import IDX_FILES


def write_mnist(
    directory: Path, split: str = "test", n: int = 5, *, gz: bool = True, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """Write tiny IDX images (n, 28, 28) and labels; return them and sha256s of the raw IDX."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    directory.mkdir(parents=True, exist_ok=True)
    digests = {}
    for base, array in zip(IDX_FILES[split], (images, labels), strict=True):
        raw = encode_idx(array)
        digests[base] = hashlib.sha256(raw).hexdigest()
        if gz:
            (directory / f"{base}.gz").write_bytes(gzip.compress(raw, mtime=0))
        else:
            (directory / base).write_bytes(raw)
    return images, labels, digests


def cifar_arrays(n: int, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    return data, [int(v) for v in rng.integers(0, 10, size=n)]


def py3_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled by today's Python and numpy (str keys)."""
    entry = {"batch_label": "tiny", "labels": labels, "data": data, "filenames": ["a.png"]}
    return pickle.dumps(entry, protocol=pickle.HIGHEST_PROTOCOL)


def _binstring(value: bytes) -> bytes:
    if len(value) < 256:
        return b"U" + bytes([len(value)]) + value
    return b"T" + struct.pack("<i", len(value)) + value


def py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch with the opcodes Python 2's cPickle wrote for the canonical CIFAR-10 files:
    str as BINSTRING (bytes on load), ``numpy.core.multiarray._reconstruct``, protocol 2."""
    n = len(data)
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\n"
        + b"cnumpy\nndarray\n"
        + b"K\x00\x85"
        + _binstring(b"b")
        + b"\x87R"
        + b"(K\x01"
        + b"M"
        + struct.pack("<H", n)
        + b"M"
        + struct.pack("<H", 3072)
        + b"\x86"
        + b"cnumpy\ndtype\n"
        + _binstring(b"u1")
        + b"K\x00K\x01\x87R"
        + b"(K\x03"
        + _binstring(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        + b"\x89"
        + _binstring(np.ascontiguousarray(data).tobytes())
        + b"tb"
    )
    label_list = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return (
        b"\x80\x02}("
        + _binstring(b"batch_label")
        + _binstring(b"training batch 1 of 5")
        + _binstring(b"labels")
        + label_list
        + _binstring(b"data")
        + array
        + _binstring(b"filenames")
        + b"]("
        + _binstring(b"x.png")
        + b"e"
        + b"u."
    )


def write_cifar_batches(
    directory: Path, split: str = "test", n: int = 4, *, py2: bool = True, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Write the batch files of ``split`` into ``directory``; return concatenated data/labels."""
    directory.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    datas, labels = [], []
    for i, name in enumerate(names):
        data, lab = cifar_arrays(n, seed + i)
        (directory / name).write_bytes((py2_batch if py2 else py3_batch)(data, lab))
        datas.append(data)
        labels.extend(lab)
    return np.concatenate(datas), np.asarray(labels, dtype=np.int64)


def tar_directory(source: Path, tarball: Path, arcname: str = "") -> Path:
    """Tar and gzip the contents of ``source`` (under ``arcname`` if given)."""
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball, "w:gz") as tar:
        for path in sorted(source.rglob("*")):
            rel = path.relative_to(source).as_posix()
            tar.add(path, arcname=f"{arcname}/{rel}" if arcname else rel, recursive=False)
    return tarball


def write_image_tree(
    root: Path,
    classes: dict[str, dict[str, int]],
    *,
    size: tuple[int, int] = (6, 5),
    mode: str = "RGB",
    suffix: str = ".png",
    seed: int = 0,
) -> None:
    """Write ``root/<split>/<class>/NNNN<suffix>``: ``classes[split][class]`` images each."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    shape = (h, w) if mode == "L" else (h, w, 3)
    for split, per_class in classes.items():
        for name, count in per_class.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
                Image.fromarray(pixels, mode=None).convert(mode).save(folder / f"{i:04d}{suffix}")


def write_svhn(path: Path, n: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An SVHN-style ``.mat``: X (32, 32, 3, n) uint8, y (n, 1) in 1..10 (10 = digit 0)."""
    import scipy.io

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = rng.integers(1, 11, size=(n, 1)).astype(np.uint8)
    y[0, 0] = 10
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"X": x, "y": y})
    return x, y
