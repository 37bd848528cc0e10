"""Where dataset files are looked for, in order.

1. the ``data_dir`` argument,
2. the directory in the ``MODEL_EXTRACTION_DATA`` environment variable,
3. the cache (``MODEL_EXTRACTION_CACHE``, default ``~/.cache/model-extraction``), where
   downloads, extracted archives and decoded arrays go,
4. known system locations (Debian's ``dataset-fashion-mnist`` package installs to
   ``/usr/share/datasets/fashion-mnist/``).

Inside each of these a dataset is looked for in ``<dir>/<dataset dir name>/`` and directly in
``<dir>/``. Only if all fail (and ``download=True``) is anything downloaded, into the cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DATA_ENV = "MODEL_EXTRACTION_DATA"
CACHE_ENV = "MODEL_EXTRACTION_CACHE"
DEFAULT_CACHE = Path("~/.cache/model-extraction")

#: System directories that hold ``<dataset dir name>/`` subdirectories (Debian's ``dataset-*``
#: packages). A module-level tuple so tests can empty it.
SYSTEM_DATA_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets"),)


@dataclass(frozen=True)
class SearchRoot:
    """A directory to search, and why it is searched (shown in error messages)."""

    path: Path
    origin: str


def cache_dir() -> Path:
    """The cache directory (not created here)."""
    value = os.environ.get(CACHE_ENV)
    return Path(value).expanduser() if value else DEFAULT_CACHE.expanduser()


def search_roots(data_dir: str | os.PathLike[str] | None = None) -> list[SearchRoot]:
    """The directories to search, in priority order (duplicates removed)."""
    roots: list[SearchRoot] = []
    if data_dir is not None:
        roots.append(SearchRoot(Path(data_dir).expanduser(), "data_dir argument"))
    env = os.environ.get(DATA_ENV)
    if env:
        roots.append(SearchRoot(Path(env).expanduser(), f"${DATA_ENV}"))
    roots.append(SearchRoot(cache_dir(), "cache"))
    roots.extend(SearchRoot(p, "system location") for p in SYSTEM_DATA_DIRS)
    seen: set[Path] = set()
    unique = []
    for root in roots:
        key = root.path.absolute()
        if key not in seen:
            seen.add(key)
            unique.append(root)
    return unique


def candidate_dirs(root: Path, dirnames: tuple[str, ...]) -> list[Path]:
    """``root/<name>`` for each dataset directory name, then ``root`` itself."""
    return [root / name for name in dirnames] + [root]
