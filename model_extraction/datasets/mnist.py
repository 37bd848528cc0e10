"""MNIST and Fashion-MNIST: four IDX files each, raw or gzip-compressed.

MNIST is used by Jagielski et al. (2020) in Table 6 (with CIFAR-10); Fashion-MNIST in Table 4.
Both have 60,000 training and 10,000 test images of 28x28 grey pixels (C=1, values 0..255).
Each file is verified by the sha256 of its decompressed content (see `checksums`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import checksums, idx
from .dataset import Dataset
from .download import download
from .errors import DatasetCorruptError
from .sources import Found, first_existing

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
FASHION_MNIST_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)

#: split -> (images file, labels file), names without ``.gz``.
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

DIGIT_CLASSES = tuple(str(d) for d in range(10))
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@dataclass(frozen=True)
class IdxSource:
    """A dataset stored as an images IDX file and a labels IDX file per split."""

    name: str
    dirnames: tuple[str, ...]
    urls: tuple[str, ...]
    classes: tuple[str, ...]

    def find(self, directory: Path, split: str) -> Found | None:
        files = {}
        for base in IDX_FILES[split]:
            path = first_existing(directory, (base, base + ".gz"))
            if path is None:
                return None
            files[base] = path
        return Found(directory, "idx", files)

    def missing(self, split: str, directory: Path | None = None) -> list[str]:
        names = IDX_FILES[split]
        if directory is not None:
            names = tuple(b for b in names if first_existing(directory, (b, b + ".gz")) is None)
        return [f"{base}.gz (or {base})" for base in names]

    def load(self, found: Found, split: str) -> Dataset:
        image_name, label_name = IDX_FILES[split]
        images, images_ok = self._read(found.files[image_name], image_name)
        labels, labels_ok = self._read(found.files[label_name], label_name)
        image_path, label_path = found.files[image_name], found.files[label_name]
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DatasetCorruptError(
                image_path, f"expected uint8 images (N, H, W), got {images.dtype} {images.shape}"
            )
        if labels.ndim != 1 or labels.dtype != np.uint8:
            raise DatasetCorruptError(
                label_path, f"expected uint8 labels (N,), got {labels.dtype} {labels.shape}"
            )
        if len(images) != len(labels):
            raise DatasetCorruptError(
                label_path, f"{len(labels)} labels for {len(images)} images in {image_path.name}"
            )
        if len(labels) and int(labels.max()) >= len(self.classes):
            raise DatasetCorruptError(label_path, f"label {int(labels.max())} out of range")
        return Dataset(
            name=self.name,
            split=split,
            images=images[:, None, :, :],
            labels=labels.astype(np.int64),
            classes=self.classes,
            pixel_max=255,
            source=str(found.directory),
            verified=images_ok and labels_ok,
        )

    def _read(self, path: Path, base: str) -> tuple[np.ndarray, bool]:
        data = idx.read_bytes(path)
        array = idx.parse_idx(data, path)
        return array, checksums.check_bytes(data, self.name, base, path)

    def count(self, found: Found, split: str) -> int | None:
        path = found.files[IDX_FILES[split][1]]
        try:
            return len(idx.read_idx(path))
        except DatasetCorruptError:
            return None

    def download(self, directory: Path, split: str, progress: bool) -> None:
        for base in IDX_FILES[split]:
            if first_existing(directory, (base, base + ".gz")) is not None:
                continue

            def check(tmp: Path, base: str = base) -> None:
                data = idx.read_bytes(tmp)
                idx.parse_idx(data, tmp)
                checksums.check_bytes(data, self.name, base, tmp)

            urls = [mirror + base + ".gz" for mirror in self.urls]
            download(urls, directory / (base + ".gz"), check=check, progress=progress)


MNIST = IdxSource("mnist", ("mnist", "MNIST", "MNIST/raw"), MNIST_MIRRORS, DIGIT_CLASSES)
FASHION_MNIST = IdxSource(
    "fashion-mnist",
    ("fashion-mnist", "fashion_mnist", "FashionMNIST", "FashionMNIST/raw"),
    FASHION_MNIST_MIRRORS,
    FASHION_CLASSES,
)
