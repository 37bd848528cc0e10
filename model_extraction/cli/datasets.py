"""``model-extraction datasets``: what is present and verified on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import JsonPath, results, write_json


def datasets(
    data_dir: Annotated[Path | None, typer.Option(help="Also look in this directory.",
                                                  file_okay=False)] = None,
    json_path: JsonPath = None,
) -> None:
    """List the datasets present and verified on this machine (never downloads)."""
    from model_extraction.datasets import dataset_report, format_report

    rows = dataset_report(data_dir=data_dir)
    results(json_path).print(format_report(rows))
    write_json(json_path, rows)
