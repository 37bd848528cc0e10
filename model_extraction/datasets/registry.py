"""`load_dataset`: one way to ask for any dataset by name and split.

Names: ``mnist``, ``fashion-mnist``, ``cifar10``, ``svhn``, ``digits``, and ``folder:<path>``
for any image-folder tree ``<path>/<split>/<class>/<image>``. The lookup order is described in
`locations`; the file formats in the modules named after each dataset.
"""

from __future__ import annotations

import os
from pathlib import Path

from .cifar import CIFAR10
from .dataset import SPLITS, Dataset
from .digits import load_digits_split
from .download import DownloadError
from .errors import DatasetNotFoundError
from .folder import load_folder
from .locations import DATA_ENV, SearchRoot, cache_dir, candidate_dirs, search_roots
from .mnist import FASHION_MNIST, MNIST
from .sources import Found, Source
from .svhn import SVHN

#: The datasets that live in files, by canonical name.
SOURCES: dict[str, Source] = {
    "mnist": MNIST,
    "fashion-mnist": FASHION_MNIST,
    "cifar10": CIFAR10,
    "svhn": SVHN,
}
#: Every built-in name (``folder:<path>`` comes on top).
DATASET_NAMES: tuple[str, ...] = ("mnist", "fashion-mnist", "cifar10", "svhn", "digits")
FOLDER_PREFIX = "folder:"
_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
}


def canonical_name(name: str) -> str:
    """The canonical spelling of a dataset name (``folder:`` paths are kept as given)."""
    if name.startswith(FOLDER_PREFIX):
        return name
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASET_NAMES:
        raise ValueError(
            f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}, "
            f"or {FOLDER_PREFIX}<path> for an image-folder tree <path>/<split>/<class>/<image>"
        )
    return key


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return split


def load_dataset(
    name: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: bool = True,
) -> Dataset:
    """Load one split of a dataset as a `Dataset` (uint8 NCHW images, int64 labels).

    Files are looked for in ``data_dir``, then ``$MODEL_EXTRACTION_DATA``, then the cache
    (``$MODEL_EXTRACTION_CACHE``, default ``~/.cache/model-extraction``), then system locations
    such as ``/usr/share/datasets``; each as ``<dir>/<name>/`` and ``<dir>/``. The first
    directory holding the files is used. If none does and ``download`` is true, the files are
    downloaded from the canonical source into the cache (with a progress bar if ``progress``).
    ``digits`` comes from scikit-learn and never needs files.

    Raises `DatasetNotFoundError` when the files are nowhere, `DatasetCorruptError` when they
    are present but fail verification or parsing, `ValueError` for an unknown name or split.
    """
    split = _check_split(split)
    key = canonical_name(name)
    if key.startswith(FOLDER_PREFIX):
        return load_image_folder(key[len(FOLDER_PREFIX) :], split)
    if key == "digits":
        return load_digits_split(split)
    source = SOURCES[key]
    roots = search_roots(data_dir)
    found = locate(source, split, roots)
    if found is not None:
        return source.load(found, split)
    if not download:
        raise not_found_error(source, split, roots, "not attempted (download=False)")
    target = cache_dir() / source.dirnames[0]
    try:
        source.download(target, split, progress)
    except DownloadError as exc:
        raise not_found_error(source, split, roots, f"failed: {exc}") from exc
    found = source.find(target, split)
    if found is None:  # pragma: no cover - a download that succeeded always leaves the files
        raise not_found_error(source, split, roots, f"left no files in {target}")
    return source.load(found, split)


def load_image_folder(root: str | os.PathLike[str], split: str = "train") -> Dataset:
    """Load ``split`` of the image-folder tree ``root/<split>/<class>/<image>``.

    The dataset is named ``folder:<absolute root>``; it is never ``verified`` (there is no
    reference to check against). Decoded arrays are cached, keyed by the files' names, sizes
    and modification times.
    """
    path = Path(root).expanduser().absolute()
    return load_folder(
        path,
        _check_split(split),
        name=f"{FOLDER_PREFIX}{path}",
        source=str(path),
        verified=False,
        cache=cache_dir() / "decoded",
    )


def locate(source: Source, split: str, roots: list[SearchRoot]) -> Found | None:
    """The files of ``split`` in the first directory that has them all, or None."""
    for root in roots:
        for directory in candidate_dirs(root.path, source.dirnames):
            if directory.is_dir():
                found = source.find(directory, split)
                if found is not None:
                    return found
    return None


def not_found_error(
    source: Source, split: str, roots: list[SearchRoot], download_note: str
) -> DatasetNotFoundError:
    """The error for a dataset found nowhere: what is missing, where we looked, what to do."""
    missing = source.missing(split)
    subdirs = ", ".join(f"<dir>/{d}/" for d in source.dirnames)
    lines = [
        f"Dataset {source.name!r} (split {split!r}) was not found.",
        f"Missing files: {'; '.join(missing)}.",
        f"Looked in, in this order (each <dir> as {subdirs} and <dir>/ itself):",
    ]
    searched: list[Path] = []
    partial: list[str] = []
    for i, root in enumerate(roots, 1):
        state = "" if root.path.is_dir() else " [does not exist]"
        lines.append(f"  {i}. {root.path} ({root.origin}){state}")
        for directory in candidate_dirs(root.path, source.dirnames):
            searched.append(directory)
            if directory.is_dir():
                absent = source.missing(split, directory)
                if absent and absent != missing:
                    partial.append(f"  {directory} has some files but lacks {'; '.join(absent)}")
    if partial:
        lines += ["Incomplete copies:", *partial]
    cache = cache_dir() / source.dirnames[0]
    lines += [
        f"Download from {', '.join(source.urls)}: {download_note}.",
        "To provide the files, either:",
        f"  - put them in a directory <dir> (as <dir>/{source.dirnames[0]}/<file> or "
        f"<dir>/<file>) and pass data_dir=<dir>, or set {DATA_ENV}=<dir>; or",
        f"  - allow the download: load_dataset({source.name!r}, {split!r}, download=True) "
        f"fetches them into {cache}.",
    ]
    return DatasetNotFoundError(
        "\n".join(lines), name=source.name, split=split, missing=missing, searched=searched
    )
