"""scikit-learn's 8x8 handwritten digits: always available, nothing to download.

1,797 grey images of 8x8 pixels with values 0..16 (``pixel_max=16``), C=1, classes "0".."9".
The split is fixed and deterministic: the first 1,500 rows (in scikit-learn's order) are
``train``, the last 297 are ``test``. The content is checked against a sha256 of the whole set;
should a future scikit-learn ship different data, the dataset still loads with
``verified=False``.
"""

from __future__ import annotations

import hashlib

import numpy as np

from . import checksums
from .dataset import Dataset

TRAIN_SIZE = 1500
TOTAL_SIZE = 1797
DIGITS_CLASSES = tuple(str(d) for d in range(10))


def load_digits_split(split: str) -> Dataset:
    """The ``train`` (rows 0..1499) or ``test`` (rows 1500..1796) split of the digits."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.ascontiguousarray(bunch.images.astype(np.uint8))  # values are integers 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    expected = checksums.expected_digest("digits", "load_digits")
    verified = False
    if expected is not None:
        h = hashlib.new(expected.algorithm)
        h.update(images.tobytes())
        h.update(labels.astype("<i8").tobytes())
        verified = h.hexdigest() == expected.hexdigest
    rows = slice(0, TRAIN_SIZE) if split == "train" else slice(TRAIN_SIZE, None)
    return Dataset(
        name="digits",
        split=split,
        images=images[rows, None, :, :],
        labels=labels[rows],
        classes=DIGITS_CLASSES,
        pixel_max=16,
        source="scikit-learn",
        verified=verified,
    )
