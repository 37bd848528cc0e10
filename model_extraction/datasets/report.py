"""Which datasets are on this machine, and are they intact? Never downloads anything."""

from __future__ import annotations

import os
from typing import Any

from rich.markup import escape
from rich.table import Table

from .dataset import SPLITS
from .digits import load_digits_split
from .locations import search_roots
from .registry import DATASET_NAMES, SOURCES, locate


def dataset_report(
    data_dir: str | os.PathLike[str] | None = None, verify: bool = True
) -> list[dict[str, Any]]:
    """One row per built-in dataset and split, in the order of `DATASET_NAMES` and splits.

    Each row has ``name``, ``split``, ``count`` (int, or None when absent or not cheaply
    known), ``verified`` (bool), ``source`` (str, or None when absent) and ``error`` (the
    reason a present copy failed to load, else None). With ``verify=True`` every present
    split is fully loaded and checked (this extracts and decodes archives into the cache the
    first time); with ``verify=False`` files are only located and counted from their headers,
    and ``verified`` is False.
    """
    roots = search_roots(data_dir)
    rows: list[dict[str, Any]] = []
    for name in DATASET_NAMES:
        for split in SPLITS:
            row: dict[str, Any] = {
                "name": name,
                "split": split,
                "count": None,
                "verified": False,
                "source": None,
                "error": None,
            }
            rows.append(row)
            if name == "digits":
                dataset = load_digits_split(split)
                row.update(count=len(dataset), verified=dataset.verified, source=dataset.source)
                continue
            source = SOURCES[name]
            found = locate(source, split, roots)
            if found is None:
                continue
            paths = sorted(found.files.values())
            row["source"] = str(paths[0] if len(paths) == 1 else found.directory)
            if not verify:
                row["count"] = source.count(found, split)
                continue
            try:
                dataset = source.load(found, split)
            except (ValueError, OSError) as exc:  # DatasetCorruptError is a ValueError
                row["error"] = str(exc)
                continue
            row.update(count=len(dataset), verified=dataset.verified, source=dataset.source)
    return rows


def format_report(rows: list[dict[str, Any]]) -> Table:
    """A rich table of `dataset_report` rows, for people."""
    table = Table(title="Datasets")
    for column, justify in (
        ("dataset", "left"),
        ("split", "left"),
        ("count", "right"),
        ("verified", "center"),
        ("source", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        if row.get("error"):
            status = "[red]corrupt[/red]"
            source = f"{escape(str(row['source']))}\n[red]{escape(row['error'])}[/red]"
        elif row["source"] is None:
            status, source = "[dim]absent[/dim]", "[dim]-[/dim]"
        else:
            status = "[green]yes[/green]" if row["verified"] else "[yellow]no[/yellow]"
            source = escape(row["source"])
        count = "-" if row["count"] is None else f"{row['count']:,}"
        table.add_row(row["name"], row["split"], count, status, source)
    return table
