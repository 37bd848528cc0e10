"""Known digests of the canonical dataset files, and the helpers that check them.

IDX files (MNIST, Fashion-MNIST) are checked on their *decompressed* bytes, because gzip
wrappers differ between mirrors while the content does not (the digests below are the sha256s in
``SHA256SUMS.decompressed`` of the shared copies). CIFAR-10 and SVHN use the md5s torchvision has
published for years; the JPEG image-folder copy of CIFAR-10 uses the sha256 of its tarball.

The table is looked up at call time, so tests may ``monkeypatch`` entries in or out.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from .errors import DatasetCorruptError


@dataclass(frozen=True)
class Digest:
    """An expected digest: ``algorithm`` is a hashlib name, ``hexdigest`` lower-case hex."""

    algorithm: str
    hexdigest: str


def _sha256(hexdigest: str) -> Digest:
    return Digest("sha256", hexdigest)


def _md5(hexdigest: str) -> Digest:
    return Digest("md5", hexdigest)


#: (dataset, file name) -> expected digest. IDX entries are keyed by the *decompressed* file name
#: and hold the digest of the decompressed bytes; all others are digests of the file as stored.
KNOWN_DIGESTS: dict[tuple[str, str], Digest] = {
    ("mnist", "train-images-idx3-ubyte"): _sha256(
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
    ),
    ("mnist", "train-labels-idx1-ubyte"): _sha256(
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
    ),
    ("mnist", "t10k-images-idx3-ubyte"): _sha256(
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
    ),
    ("mnist", "t10k-labels-idx1-ubyte"): _sha256(
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
    ),
    ("fashion-mnist", "train-images-idx3-ubyte"): _sha256(
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
    ),
    ("fashion-mnist", "train-labels-idx1-ubyte"): _sha256(
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
    ),
    ("fashion-mnist", "t10k-images-idx3-ubyte"): _sha256(
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
    ),
    ("fashion-mnist", "t10k-labels-idx1-ubyte"): _sha256(
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
    ),
    # CIFAR-10, python version: the tarball and each pickled batch (torchvision's constants).
    ("cifar10", "cifar-10-python.tar.gz"): _md5("c58f30108f718f92721af3b95e74349a"),
    ("cifar10", "data_batch_1"): _md5("c99cafc152244af753f735de768cd75f"),
    ("cifar10", "data_batch_2"): _md5("d4bba439e000b95fd0a9bffe97cbabec"),
    ("cifar10", "data_batch_3"): _md5("54ebc095f3ab1f0389bbae665268c751"),
    ("cifar10", "data_batch_4"): _md5("634d18415352ddfa80567beed471001a"),
    ("cifar10", "data_batch_5"): _md5("482c414d41f54cd18b22e5b47cb7c3cb"),
    ("cifar10", "test_batch"): _md5("40351d587109b95175f43aff81a1287e"),
    # CIFAR-10 as a JPEG image-folder tarball (the shared offline copy; lossy pixels).
    ("cifar10", "cifar10_jpg.tar.gz"): _sha256(
        "586969f1471e09011a47b7c6eed6657fd601439c8a64cb0637fad511d5d97691"
    ),
    ("svhn", "train_32x32.mat"): _md5("e26dedcc434d2e4c54c9b2d4a06d8373"),
    ("svhn", "test_32x32.mat"): _md5("eb5a983be6a315427106f1b164d9cef3"),
    # scikit-learn's 8x8 digits: sha256 of images (uint8, C order) followed by targets (<i8).
    ("digits", "load_digits"): _sha256(
        "65e5b4619795efb40c1082f4c350c049e4ad552200d369b6ae99e21eef5e72c5"
    ),
}


def expected_digest(dataset: str, filename: str) -> Digest | None:
    """The known digest of ``filename`` in ``dataset``, or None when none is known."""
    return KNOWN_DIGESTS.get((dataset, filename))


def digest_bytes(data: bytes | memoryview, algorithm: str) -> str:
    return hashlib.new(algorithm, data).hexdigest()


def digest_file(path: Path, algorithm: str, chunk: int = 1 << 20) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_bytes(data: bytes | memoryview, dataset: str, filename: str, path: Path) -> bool:
    """Check ``data`` against the known digest of ``filename``.

    Returns True when it matched, False when no digest is known; raises
    `DatasetCorruptError` (naming ``path``) on a mismatch.
    """
    expected = expected_digest(dataset, filename)
    if expected is None:
        return False
    actual = digest_bytes(data, expected.algorithm)
    if actual != expected.hexdigest:
        raise DatasetCorruptError(path, mismatch_message(expected, actual, dataset, filename))
    return True


def check_file(path: Path, dataset: str, filename: str | None = None) -> bool:
    """Like `check_bytes`, for the file at ``path`` as stored (``filename``: its name)."""
    filename = filename or path.name
    expected = expected_digest(dataset, filename)
    if expected is None:
        return False
    actual = digest_file(path, expected.algorithm)
    if actual != expected.hexdigest:
        raise DatasetCorruptError(path, mismatch_message(expected, actual, dataset, filename))
    return True


def mismatch_message(expected: Digest, actual: str, dataset: str, filename: str) -> str:
    """The explanation of a digest mismatch, naming the dataset the file belongs to if known."""
    others = [
        other
        for (other, name), digest in KNOWN_DIGESTS.items()
        if name == filename and other != dataset and digest.hexdigest == actual
    ]
    if others:
        advice = (
            f"this is {others[0]}'s file of that name, not {dataset}'s: keep each dataset in its "
            f"own <dir>/{dataset}/ subdirectory"
        )
    else:
        advice = "the file is truncated, corrupt or not the canonical one (delete it, or "
        advice += "download it again)"
    return (
        f"{expected.algorithm} mismatch for {dataset}/{filename}: expected {expected.hexdigest}, "
        f"got {actual}; {advice}"
    )
