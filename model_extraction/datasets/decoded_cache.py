"""Decoded image arrays kept as ``.npy`` in the cache, so decoding JPEG/PNG happens once.

Per split three files: ``<split>.images.npy``, ``<split>.labels.npy`` and ``<split>.json``. The
JSON is written last and holds the sha256 of both arrays and the key of the source they were
decoded from; an entry whose JSON is missing, whose key differs, or whose arrays do not hash to
the recorded values is ignored (and rebuilt by the caller). Arrays are loaded with
``allow_pickle=False``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = 1


def _paths(directory: Path, split: str) -> tuple[Path, Path, Path]:
    return (
        directory / f"{split}.images.npy",
        directory / f"{split}.labels.npy",
        directory / f"{split}.json",
    )


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def load_decoded(
    directory: Path, split: str, key: str
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """``(images, labels, meta)`` if a complete, intact entry for ``key`` exists, else None."""
    images_path, labels_path, meta_path = _paths(directory, split)
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT or meta.get("key") != key:
            return None
        images = np.load(images_path, allow_pickle=False)
        labels = np.load(labels_path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if (
        images.dtype != np.uint8
        or labels.dtype != np.int64
        or images.ndim != 4
        or len(images) != len(labels)
        or _sha256(images) != meta.get("images_sha256")
        or _sha256(labels) != meta.get("labels_sha256")
    ):
        return None
    return images, labels, meta


def save_decoded(
    directory: Path,
    split: str,
    key: str,
    images: np.ndarray,
    labels: np.ndarray,
    meta: dict[str, Any],
) -> None:
    """Write an entry atomically (each file via a temp file and rename, the JSON last)."""
    directory.mkdir(parents=True, exist_ok=True)
    images_path, labels_path, meta_path = _paths(directory, split)
    _atomic_write(images_path, lambda f: np.save(f, images, allow_pickle=False))
    _atomic_write(labels_path, lambda f: np.save(f, labels, allow_pickle=False))
    record = dict(
        meta,
        format=FORMAT,
        key=key,
        images_sha256=_sha256(images),
        labels_sha256=_sha256(labels),
    )
    text = json.dumps(record, indent=1)
    _atomic_write(meta_path, lambda f: f.write(text.encode()))


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
