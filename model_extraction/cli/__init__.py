"""The ``model-extraction`` command line: one module per command, errors as one line."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import DEBUG_ENV, OneLineErrors
from .datasets import datasets
from .extract import extract
from .learn import learn
from .limits import limits
from .serve import serve

__all__ = ["app", "main"]

app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Steal neural networks through their prediction APIs (Jagielski et al., USENIX Sec 2020).",
)


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option(
        "--debug", envvar=DEBUG_ENV, help="Show the traceback of an error instead of one line.")]
    = False,
) -> None:
    """Steal neural networks through their prediction APIs (Jagielski et al., USENIX Sec 2020)."""


for command in (extract, learn, limits, serve, datasets):
    app.command()(command)


def main() -> None:  # pragma: no cover
    app()
