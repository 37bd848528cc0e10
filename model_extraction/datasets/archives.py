"""Safe, atomic extraction of tarballs into the cache.

The archive is unpacked into a hidden temp directory next to the destination and renamed into
place only when complete, so an interrupted extraction never looks finished. Only regular files
and directories are extracted, through tarfile's ``data`` filter (no absolute paths, no ``..``,
no links, no devices).
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from .errors import DatasetCorruptError


def extract_tarball(archive: Path, dest: Path) -> Path:
    """Extract ``archive`` to ``dest`` unless ``dest`` already exists; return ``dest``.

    Raises `DatasetCorruptError` naming the archive if it is truncated or not a tarball.
    """
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part"))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                tar.extractall(tmp, members=_plain_members(tar), filter="data")
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise DatasetCorruptError(archive, f"truncated or corrupt archive ({exc})") from exc
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():  # not a concurrent extraction that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _plain_members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    for member in tar:
        if member.isfile() or member.isdir():
            yield member
