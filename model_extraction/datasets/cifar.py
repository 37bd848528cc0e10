"""CIFAR-10: 32x32 RGB photos, 10 classes, 50,000 train and 10,000 test images.

Jagielski et al. (2020) use CIFAR-10 in Table 3 (with SVHN) and Table 6 (with MNIST).

Three forms are understood, tried in this order within a directory:

* the canonical python batches, ``cifar-10-batches-py/data_batch_1..5`` and ``test_batch``
  (or those files directly in the directory), read with a restricted unpickler;
* the canonical tarball ``cifar-10-python.tar.gz``, extracted once into the cache;
* an image-folder tarball ``cifar10_jpg.tar.gz`` (``train/<class>/NNNN.jpg``,
  ``test/<class>/NNNN.jpg``), extracted once into the cache and decoded with pillow; the
  decoded arrays are cached as ``.npy``. Its pixels are JPEG-compressed (lossy), labels and the
  split are exact.

Verification uses torchvision's md5s of the batches and tarball, and the sha256 of the shared
JPEG tarball (see `checksums`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import checksums, locations, safe_pickle
from .archives import extract_tarball
from .dataset import Dataset
from .decoded_cache import load_decoded
from .download import download
from .errors import DatasetCorruptError, DatasetNotFoundError
from .folder import load_folder
from .sources import Found, first_existing

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
BATCHES_DIR = "cifar-10-batches-py"
TARBALL = "cifar-10-python.tar.gz"
JPEG_TARBALL = "cifar10_jpg.tar.gz"
BATCH_FILES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
#: Sizes of the canonical splits (implied by the digests; for reference and tests).
CANONICAL_COUNTS = {"train": 50_000, "test": 10_000}


def _get(entry: dict[Any, Any], key: str) -> Any:
    """``entry[key]`` for str or bytes keys (Python 2 pickles give bytes keys)."""
    if key in entry:
        return entry[key]
    return entry.get(key.encode())


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray, bool]:
    """One batch file as ``(images (n,3,32,32) uint8, labels (n,) int64, verified)``."""
    data = path.read_bytes()
    verified = checksums.check_bytes(data, "cifar10", path.name, path)
    entry = safe_pickle.loads(data, path)
    if not isinstance(entry, dict):
        raise DatasetCorruptError(path, f"expected a dict, got {type(entry).__name__}")
    pixels, labels = _get(entry, "data"), _get(entry, "labels")
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2:
        raise DatasetCorruptError(path, "'data' is not a uint8 array of shape (n, 3072)")
    if pixels.shape[1] != 3 * 32 * 32:
        raise DatasetCorruptError(path, f"'data' has shape {pixels.shape}, expected (n, 3072)")
    if not isinstance(labels, list) or not all(isinstance(v, int) for v in labels):
        raise DatasetCorruptError(path, "'labels' is not a list of ints")
    label_array = np.asarray(labels, dtype=np.int64)
    if len(label_array) != len(pixels):
        raise DatasetCorruptError(path, f"{len(label_array)} labels for {len(pixels)} images")
    if len(label_array) and not 0 <= label_array.min() <= label_array.max() < 10:
        raise DatasetCorruptError(path, "labels out of range 0..9")
    return pixels.reshape(-1, 3, 32, 32), label_array, verified


def _archive_digest(path: Path) -> tuple[str, bool]:
    """(hex digest used as cache key, verified) for an archive; raises on a known mismatch."""
    expected = checksums.expected_digest("cifar10", path.name)
    algorithm = expected.algorithm if expected else "sha256"
    actual = checksums.digest_file(path, algorithm)
    if expected is not None and actual != expected.hexdigest:
        raise DatasetCorruptError(
            path, checksums.mismatch_message(expected, actual, "cifar10", path.name)
        )
    return actual, expected is not None


def _descend(root: Path, marker: str) -> Path:
    """``root``, or its only subdirectory if ``marker`` is there rather than in ``root``."""
    if (root / marker).exists():
        return root
    subdirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subdirs) == 1 and (subdirs[0] / marker).exists():
        return subdirs[0]
    return root


@dataclass(frozen=True)
class CifarSource:
    name: str = "cifar10"
    dirnames: tuple[str, ...] = ("cifar10", "cifar-10", "CIFAR10", "cifar10-jpeg")
    urls: tuple[str, ...] = (CIFAR10_URL,)

    def find(self, directory: Path, split: str) -> Found | None:
        for batches in (directory / BATCHES_DIR, directory):
            files = {name: batches / name for name in BATCH_FILES[split]}
            if all(p.is_file() for p in files.values()):
                return Found(batches, "batches", files)
        tarball = first_existing(directory, (TARBALL,))
        if tarball is not None:
            return Found(directory, "tarball", {TARBALL: tarball})
        jpeg = first_existing(directory, (JPEG_TARBALL,))
        if jpeg is not None:
            return Found(directory, "jpeg-tarball", {JPEG_TARBALL: jpeg})
        return None

    def missing(self, split: str, directory: Path | None = None) -> list[str]:
        names = BATCH_FILES[split]
        if directory is not None:
            batches = directory / BATCHES_DIR
            if not any((batches / n).is_file() for n in names):
                batches = directory
            absent = [n for n in names if not (batches / n).is_file()]
            if len(absent) < len(names):
                return [f"{BATCHES_DIR}/{n}" for n in absent]
        listed = ", ".join(f"{BATCHES_DIR}/{n}" for n in names)
        return [
            f"{listed} (or the tarball {TARBALL}, or the JPEG image-folder tarball {JPEG_TARBALL})"
        ]

    def load(self, found: Found, split: str) -> Dataset:
        if found.kind == "batches":
            return self._from_batches(found.files, split, source=str(found.directory))
        if found.kind == "tarball":
            return self._from_tarball(found.files[TARBALL], split)
        return self._from_jpeg_tarball(found.files[JPEG_TARBALL], split)

    def _from_batches(
        self, files: dict[str, Path], split: str, *, source: str, verified: bool = True
    ) -> Dataset:
        parts = [read_batch(files[name]) for name in BATCH_FILES[split]]
        return Dataset(
            name=self.name,
            split=split,
            images=np.concatenate([p[0] for p in parts]),
            labels=np.concatenate([p[1] for p in parts]),
            classes=CIFAR10_CLASSES,
            pixel_max=255,
            source=source,
            verified=verified and all(p[2] for p in parts),
        )

    def _from_tarball(self, tarball: Path, split: str) -> Dataset:
        digest, verified = _archive_digest(tarball)
        key = f"cifar-10-python-{digest[:16]}"
        root = extract_tarball(tarball, locations.cache_dir() / "extracted" / key)
        batches = _descend(root, BATCHES_DIR) / BATCHES_DIR
        files = {name: batches / name for name in BATCH_FILES[split]}
        absent = [name for name, p in files.items() if not p.is_file()]
        if absent:
            raise DatasetCorruptError(
                tarball, f"wrong layout: archive lacks {BATCHES_DIR}/{absent[0]}"
            )
        return self._from_batches(files, split, source=str(tarball), verified=verified)

    def _from_jpeg_tarball(self, tarball: Path, split: str) -> Dataset:
        digest, verified = _archive_digest(tarball)
        key = f"cifar10_jpg-{digest[:16]}"
        decoded = locations.cache_dir() / "decoded"
        cached = load_decoded(decoded / key, split, key)
        if cached is not None:
            images, labels, meta = cached
            dataset = Dataset(
                name=self.name,
                split=split,
                images=images,
                labels=labels,
                classes=tuple(meta["classes"]),
                pixel_max=255,
                source=str(tarball),
                verified=verified,
            )
        else:
            root = extract_tarball(tarball, locations.cache_dir() / "extracted" / key)
            try:
                dataset = load_folder(
                    _descend(root, split),
                    split,
                    name=self.name,
                    source=str(tarball),
                    verified=verified,
                    cache=decoded,
                    key=key,
                    expected_classes=CIFAR10_CLASSES,
                )
            except DatasetNotFoundError as exc:  # the archive lacks this split's directory
                raise DatasetCorruptError(
                    tarball, f"wrong layout: archive has no {split}/<class>/ tree"
                ) from exc
        return dataset

    def count(self, found: Found, split: str) -> int | None:
        if found.kind == "batches":
            try:
                return sum(len(read_batch(p)[1]) for p in found.files.values())
            except DatasetCorruptError:
                return None
        if found.kind == "jpeg-tarball":
            # Only if an earlier load left decoded arrays behind (hashing the tarball is cheap).
            try:
                digest, _ = _archive_digest(found.files[JPEG_TARBALL])
            except DatasetCorruptError:
                return None
            key = f"cifar10_jpg-{digest[:16]}"
            cached = load_decoded(locations.cache_dir() / "decoded" / key, split, key)
            return None if cached is None else len(cached[1])
        return None

    def download(self, directory: Path, split: str, progress: bool) -> None:
        if (directory / TARBALL).is_file():
            return

        def check(tmp: Path) -> None:
            checksums.check_file(tmp, self.name, TARBALL)

        download(self.urls, directory / TARBALL, check=check, progress=progress)


CIFAR10 = CifarSource()
