"""The two ways loading a dataset can fail: the files are absent, or they are bad."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are in none of the places searched (and were not downloaded).

    The message names the missing files, every directory that was searched, and the two ways
    to provide the files. The same facts are kept as attributes for programs.
    """

    def __init__(
        self,
        message: str,
        *,
        name: str = "",
        split: str = "",
        missing: Sequence[str] = (),
        searched: Sequence[Path] = (),
    ) -> None:
        super().__init__(message)
        self.name = name
        self.split = split
        self.missing = tuple(missing)
        self.searched = tuple(searched)

    def __str__(self) -> str:
        return str(self.args[0])


class DatasetCorruptError(ValueError):
    """A dataset file is present but wrong: checksum mismatch, truncated, unparsable, or laid out
    differently than expected. Nothing is loaded when this is raised."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[Path, str]]:
        return (type(self), (self.path, self.reason))
