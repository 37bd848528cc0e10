"""Image-folder trees: ``root/<split>/<class>/<image>``, decoded with pillow.

Classes are the sorted union of the class directories of ``train/`` and ``test/`` (so a label
means the same class in both splits); images are taken in class order, then file-name order.
Hidden entries and files without an image suffix are ignored. Grey images give C=1; if any image
has colour, all are converted to RGB (C=3). All images of a split must have the same size.

Decoded arrays are cached as ``.npy`` (see `decoded_cache`), keyed by a fingerprint of the file
names, sizes and modification times (or by an archive's digest, for extracted tarballs).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np

from .dataset import SPLITS, Dataset
from .decoded_cache import load_decoded, save_decoded
from .errors import DatasetCorruptError, DatasetNotFoundError

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


def _visible(entries: list[os.DirEntry[str]]) -> list[os.DirEntry[str]]:
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _is_image(entry: os.DirEntry[str]) -> bool:
    return entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES


def folder_classes(root: Path) -> tuple[str, ...]:
    """The class names of the tree at ``root``; checks the layout.

    Raises `DatasetNotFoundError` if ``root`` is not a directory, and `DatasetCorruptError` if
    it has neither ``train/`` nor ``test/``, or a split holds images outside class directories.
    """
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"image folder {root} does not exist (expected {root}/<split>/<class>/<image>)",
            name=f"folder:{root}",
            missing=[str(root)],
            searched=[root],
        )
    splits = [root / s for s in SPLITS if (root / s).is_dir()]
    if not splits:
        raise DatasetCorruptError(
            root, "wrong layout: no train/ or test/ directory (expected <root>/<split>/<class>/)"
        )
    classes: set[str] = set()
    for split_dir in splits:
        with os.scandir(split_dir) as it:
            entries = _visible(list(it))
        stray = [e.name for e in entries if _is_image(e)]
        if stray:
            raise DatasetCorruptError(
                split_dir / stray[0],
                f"wrong layout: image directly in {split_dir.name}/ "
                "(expected <split>/<class>/<image>)",
            )
        classes.update(e.name for e in entries if e.is_dir())
    if not classes:
        raise DatasetCorruptError(root, "wrong layout: no class directories under train/ or test/")
    return tuple(sorted(classes))


def scan_split(root: Path, split: str, classes: tuple[str, ...]) -> tuple[list[Path], np.ndarray]:
    """Image paths of ``root/split`` and their labels (indices into ``classes``)."""
    split_dir = root / split
    if not split_dir.is_dir():
        raise DatasetNotFoundError(
            f"image folder {root} has no {split}/ directory "
            f"(expected {root}/{split}/<class>/<image>)",
            name=f"folder:{root}",
            split=split,
            missing=[str(split_dir)],
            searched=[root],
        )
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue
        with os.scandir(class_dir) as it:
            images = [Path(e.path) for e in _visible(list(it)) if _is_image(e)]
        paths.extend(images)
        labels.extend([label] * len(images))
    if not paths:
        raise DatasetCorruptError(split_dir, "wrong layout: no images in any class directory")
    return paths, np.asarray(labels, dtype=np.int64)


def decode_image(path: Path) -> np.ndarray:
    """One image as uint8 ``(H, W)`` (grey) or ``(H, W, 3)`` (colour)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            mode = "L" if image.mode in _GREY_MODES else "RGB"
            if image.mode != mode:
                image = image.convert(mode)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as exc:
        raise DatasetCorruptError(path, f"cannot decode image ({exc})") from exc


def decode_images(paths: list[Path]) -> np.ndarray:
    """Decode and stack images into uint8 ``(N, C, H, W)``; sizes must agree."""
    arrays = [decode_image(p) for p in paths]
    size = arrays[0].shape[:2]
    for path, array in zip(paths, arrays, strict=True):
        if array.shape[:2] != size:
            raise DatasetCorruptError(
                path,
                f"image is {array.shape[1]}x{array.shape[0]} but {paths[0].name} is "
                f"{size[1]}x{size[0]}; all images of a split must have the same size",
            )
    if all(a.ndim == 2 for a in arrays):
        return np.stack(arrays)[:, None, :, :]
    colour = [a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2) for a in arrays]
    return np.ascontiguousarray(np.stack(colour).transpose(0, 3, 1, 2))


def fingerprint(paths: list[Path]) -> str:
    """A digest of the names, sizes and modification times of ``paths``."""
    h = hashlib.sha256()
    for path in paths:
        st = path.stat()
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def load_folder(
    root: Path,
    split: str,
    *,
    name: str,
    source: str,
    verified: bool,
    cache: Path | None,
    key: str | None = None,
    expected_classes: tuple[str, ...] | None = None,
) -> Dataset:
    """Load one split of an image-folder tree, using the decoded cache under ``cache``.

    ``key`` identifies the content (e.g. the digest of the tarball the tree came from); when
    None, a fingerprint of the files is used. With a ``key``, a cache hit skips the tree
    entirely. ``expected_classes``, when given, must equal the tree's classes.
    """
    entry = None
    if key is not None and cache is not None:
        entry = load_decoded(cache / key, split, key)
    if entry is None:
        classes = folder_classes(root)
        if expected_classes is not None and classes != expected_classes:
            raise DatasetCorruptError(
                root, f"wrong layout: classes {list(classes)}, expected {list(expected_classes)}"
            )
        paths, labels = scan_split(root, split, classes)
        if key is None:
            key = "folder-" + fingerprint(paths)[:24]
            entry = load_decoded(cache / key, split, key) if cache is not None else None
        if entry is None:
            images = decode_images(paths)
            entry = (images, labels, {"classes": list(classes), "root": str(root)})
            if cache is not None:
                try:
                    save_decoded(cache / key, split, key, images, labels, entry[2])
                except OSError as exc:
                    warnings.warn(f"could not cache decoded images: {exc}", stacklevel=2)
    images, labels, meta = entry
    return Dataset(
        name=name,
        split=split,
        images=images,
        labels=labels,
        classes=tuple(meta["classes"]),
        pixel_max=255,
        source=source,
        verified=verified,
    )
