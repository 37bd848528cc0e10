"""Atomic downloads: fetch into a hidden temp file next to the target, check it, then rename.

A download that fails midway, or whose content fails the check, leaves nothing behind that
looks like the finished file (the temp file is ``.<name>.<random>.part`` and is removed).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import tempfile
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from .errors import DatasetCorruptError

USER_AGENT = "model-extraction (python urllib)"
CHUNK = 1 << 16


class DownloadError(OSError):
    """Every URL failed; ``failures`` holds ``(url, reason)`` pairs."""

    def __init__(self, dest: Path, failures: Sequence[tuple[str, str]]) -> None:
        lines = "; ".join(f"{url}: {reason}" for url, reason in failures)
        super().__init__(f"could not download {dest.name} ({lines})")
        self.failures = tuple(failures)


def download(
    urls: Sequence[str],
    dest: Path,
    *,
    check: Callable[[Path], object] | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download the first URL of ``urls`` that works to ``dest``, atomically.

    ``check(tmp_path)`` runs on the complete temp file before the rename and must raise
    `DatasetCorruptError` to reject it (the next mirror is then tried). Raises
    `DatasetCorruptError` if some mirror served bad content and none served good content,
    otherwise `DownloadError` when no mirror could be reached.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures: list[tuple[str, str]] = []
    corrupt: DatasetCorruptError | None = None
    for url in urls:
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                _fetch(url, out, label=dest.name, progress=progress, timeout=timeout)
            if check is not None:
                check(tmp)
            os.replace(tmp, dest)
            return dest
        except DatasetCorruptError as exc:
            corrupt = DatasetCorruptError(dest, f"download from {url} refused: {exc.reason}")
            failures.append((url, exc.reason))
        except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError, timeouts, ...
            failures.append((url, f"{type(exc).__name__}: {exc}"))
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    if corrupt is not None:
        raise corrupt
    raise DownloadError(dest, failures)


def _fetch(url: str, out: BinaryIO, *, label: str, progress: bool, timeout: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        received = 0
        with _progress_bar(label, total, progress) as advance:
            while block := response.read(CHUNK):
                out.write(block)
                received += len(block)
                advance(len(block))
    # http.client does not raise when a body with a Content-Length ends early: check here.
    if total is not None and received != total:
        raise OSError(f"connection closed after {received} of {total} bytes")


@contextlib.contextmanager
def _progress_bar(
    label: str, total: int | None, enabled: bool
) -> Iterator[Callable[[int], object]]:
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(f"downloading {label}", total=total)
        yield lambda n: bar.advance(task, n)
