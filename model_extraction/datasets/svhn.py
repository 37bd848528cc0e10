"""SVHN (Street View House Numbers), cropped digits: 32x32 RGB, 73,257 train / 26,032 test.

Jagielski et al. (2020) use SVHN in Table 3 (with CIFAR-10). The files are MATLAB ``.mat``
files, ``train_32x32.mat`` and ``test_32x32.mat``, holding ``X`` of shape (32, 32, 3, N) and
``y`` of shape (N, 1) with labels 1..10, where 10 stands for the digit 0. Verified with
torchvision's md5s (see `checksums`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import checksums
from .dataset import Dataset
from .download import download
from .errors import DatasetCorruptError
from .sources import Found, first_existing

SVHN_BASE_URL = "http://ufldl.stanford.edu/housenumbers/"
SVHN_CLASSES = tuple(str(d) for d in range(10))
#: Sizes of the canonical splits (implied by the digests; for reference and tests).
CANONICAL_COUNTS = {"train": 73_257, "test": 26_032}


def mat_name(split: str) -> str:
    return f"{split}_32x32.mat"


def read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N,3,32,32) uint8, labels (N,) int64 with 0..9)`` from an SVHN ``.mat``."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(path, variable_names=("X", "y"))
    except Exception as exc:  # scipy raises many types on truncated or foreign files
        raise DatasetCorruptError(path, f"not a readable .mat file ({exc})") from exc
    x, y = mat.get("X"), mat.get("y")
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.shape[:3] != (32, 32, 3):
        shape = getattr(x, "shape", None)
        raise DatasetCorruptError(path, f"'X' is not uint8 of shape (32, 32, 3, N) ({shape})")
    n = x.shape[3] if x.ndim == 4 else -1
    if not isinstance(y, np.ndarray) or y.size != n or y.ndim > 2:
        raise DatasetCorruptError(path, f"'y' does not hold one label per image (N={n})")
    labels = y.reshape(-1).astype(np.int64)
    if n and not 1 <= labels.min() <= labels.max() <= 10:
        raise DatasetCorruptError(path, "labels out of range 1..10")
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
    return images, labels % 10


@dataclass(frozen=True)
class SvhnSource:
    name: str = "svhn"
    dirnames: tuple[str, ...] = ("svhn", "SVHN")
    urls: tuple[str, ...] = (SVHN_BASE_URL,)

    def find(self, directory: Path, split: str) -> Found | None:
        path = first_existing(directory, (mat_name(split),))
        return None if path is None else Found(directory, "mat", {mat_name(split): path})

    def missing(self, split: str, directory: Path | None = None) -> list[str]:
        return [mat_name(split)]

    def load(self, found: Found, split: str) -> Dataset:
        path = found.files[mat_name(split)]
        verified = checksums.check_file(path, self.name)
        images, labels = read_mat(path)
        return Dataset(
            name=self.name,
            split=split,
            images=images,
            labels=labels,
            classes=SVHN_CLASSES,
            pixel_max=255,
            source=str(path),
            verified=verified,
        )

    def count(self, found: Found, split: str) -> int | None:
        import scipy.io

        try:
            shapes = {n: s for n, s, _ in scipy.io.whosmat(found.files[mat_name(split)])}
        except Exception:
            return None
        shape = shapes.get("X")
        return int(shape[3]) if shape is not None and len(shape) == 4 else None

    def download(self, directory: Path, split: str, progress: bool) -> None:
        name = mat_name(split)

        def check(tmp: Path) -> None:
            checksums.check_file(tmp, self.name, name)
            read_mat(tmp)

        download([u + name for u in self.urls], directory / name, check=check, progress=progress)


SVHN = SvhnSource()
