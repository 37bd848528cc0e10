"""What every built-in dataset provides to the lookup in `registry`.

A *source* knows the directory names a dataset may sit under, how to recognise its files in one
directory, how to load and verify them, how to count them cheaply (for reports), and how to
download them into the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .dataset import Dataset


@dataclass(frozen=True)
class Found:
    """The files of one split of one dataset, found in ``directory``.

    ``kind`` names the format when a dataset has several (e.g. CIFAR-10's python batches,
    its tarball, or a JPEG image-folder tarball).
    """

    directory: Path
    kind: str
    files: dict[str, Path] = field(default_factory=dict)


class Source(Protocol):
    """The interface of a built-in dataset (see `mnist.IdxSource` for an example)."""

    name: str
    #: Subdirectory names tried under each search root, before the root itself.
    dirnames: tuple[str, ...]
    #: Where a download would come from (shown in error messages).
    urls: tuple[str, ...]

    def find(self, directory: Path, split: str) -> Found | None:
        """The files of ``split`` if all are in ``directory``, else None."""
        ...

    def missing(self, split: str, directory: Path | None = None) -> list[str]:
        """Human-readable names of the files ``split`` needs (for error messages); with a
        ``directory``, only those absent from it."""
        ...

    def load(self, found: Found, split: str) -> Dataset:
        """Load and verify; raise `DatasetCorruptError` on bad content."""
        ...

    def count(self, found: Found, split: str) -> int | None:
        """The number of examples, read cheaply without verifying (None if not cheap)."""
        ...

    def download(self, directory: Path, split: str, progress: bool) -> None:
        """Fetch the files of ``split`` into ``directory`` (the cache), verified, atomically."""
        ...


def first_existing(directory: Path, names: tuple[str, ...]) -> Path | None:
    """The first ``directory/name`` that is a regular file."""
    for name in names:
        path = directory / name
        if path.is_file():
            return path
    return None
