"""What the commands share: consoles, ``--json PATH``, the options that name a remote API, and
the translation of the errors a user can act on into one line (exit code 2)."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)
"""Progress, plans and errors."""
out = Console()
"""Results."""

API_KEY_ENV = "MODEL_EXTRACTION_API_KEY"
DEBUG_ENV = "MODEL_EXTRACTION_DEBUG"

JsonPath = Annotated[Path | None, typer.Option(
    "--json", help="Write the report as JSON to this file ('-': standard output).",
    dir_okay=False)]
DataDir = Annotated[Path | None, typer.Option(
    help="Directory holding the datasets (else $MODEL_EXTRACTION_DATA, then the cache).",
    file_okay=False)]
Progress_ = Annotated[bool, typer.Option(help="Show a live progress display.")]


class Dataset(StrEnum):
    digits = "digits"
    mnist = "mnist"
    fashion_mnist = "fashion-mnist"
    cifar10 = "cifar10"
    svhn = "svhn"


def write_json(path: Path | None, data: Any) -> None:
    """Write ``data`` to ``path`` (``-``: standard output; ``None``: nowhere)."""
    if path is None:
        return
    text = json.dumps(data, indent=2)
    if str(path) == "-":
        print(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def results(json_path: Path | None) -> Console:
    """Where the tables go: standard output, unless the JSON goes there (then standard error)."""
    return console if str(json_path) == "-" else out


def load_data(name: str, split: str, data_dir: Path | None) -> Any:
    from model_extraction.datasets import load_dataset

    return load_dataset(name, split, data_dir=data_dir)


# ------------------------------------------------------------------ a remote API
Url = Annotated[str | None, typer.Option(
    help="Attack this model over the Open Inference Protocol instead of a local victim: "
         "http://HOST:PORT/v2/models/NAME.", rich_help_panel="Remote API")]
ApiKey = Annotated[str | None, typer.Option(
    envvar=API_KEY_ENV, show_envvar=True, show_default=False,
    help="API key, sent as a bearer token (never printed or logged).",
    rich_help_panel="Remote API")]
InputName = Annotated[str | None, typer.Option(
    help="Input tensor to fill (default: the model's only input; 'input' when it publishes "
         "none).", rich_help_panel="Remote API")]
OutputName = Annotated[str | None, typer.Option(
    help="Output tensor to ask for (default: from the metadata and --output-kind).",
    rich_help_panel="Remote API")]
InputDim = Annotated[int | None, typer.Option(
    min=1, help="Input width d (default: from the metadata).", rich_help_panel="Remote API")]
Concurrency = Annotated[int, typer.Option(
    min=1, help="Requests in flight at once.", rich_help_panel="Remote API")]
BatchSize = Annotated[int, typer.Option(
    min=1, help="Rows per request.", rich_help_panel="Remote API")]
QueryLog = Annotated[Path | None, typer.Option(
    dir_okay=False, help="SQLite log of every answer: a rerun pays only for rows not in it.",
    rich_help_panel="Remote API")]
DryRun = Annotated[bool, typer.Option(
    "--dry-run", help="Read the model's metadata, print the plan, send no paid query.",
    rich_help_panel="Remote API")]


def connect(url: str, *, api_key: str | None, input_name: str | None,
            output_name: str | None, output_kind: str | None, input_dim: int | None,
            budget: int | None, concurrency: int, batch_size: int,
            query_log: Path | None, width_from: str = "given") -> Any:
    """A :class:`~model_extraction.remote.RemoteOracle` for the CLI options (one free metadata
    request), with its plan printed before any paid query. ``width_from`` says where a given
    ``input_dim`` came from (the user, or the dataset)."""
    from model_extraction.remote import RemoteOracle

    oracle = RemoteOracle(url, api_key=api_key, input_name=input_name,
                          output_name=output_name, output_kind=output_kind,
                          input_dim=input_dim, budget=budget, concurrency=concurrency,
                          batch_size=batch_size, log=query_log)
    if oracle.sources.get("input_dim") == "given":
        oracle.sources["input_dim"] = width_from
    print_plan(oracle.plan, api_key is not None)
    return oracle


def print_plan(plan: dict[str, Any], keyed: bool) -> None:
    i, o = plan["input"], plan["output"]
    t = Table(title="Remote API", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("model", plan["url"])
    t.add_row("input", f"{i['name']!r} {i['datatype']} {i['shape']} (name: {i['from']}, width: "
              f"{i['width_from']})")
    t.add_row("output", f"{o['name']!r} {o['datatype']}, {o['kind']} (name: {o['from']}; "
              f"classes: {o['classes']})")
    t.add_row("requests", f"{plan['batch_size']} rows each, {plan['concurrency']} at once"
              + ("; API key set" if keyed else "; no API key"))
    budget = plan["budget"]
    t.add_row("budget", "none (client side)" if budget is None else f"{budget:,} rows")
    t.add_row("query log", plan["query_log"] or "none")
    console.print(t)


# ------------------------------------------------------------------ errors
def _user_errors() -> tuple[type[BaseException], ...]:
    from model_extraction.attacks.functional import ExtractionError
    from model_extraction.oracle import BudgetExhaustedError
    from model_extraction.remote import NotInLogError, RemoteOracleError

    return (ValueError, OSError, BudgetExhaustedError, ExtractionError, RemoteOracleError,
            NotInLogError, sqlite3.DatabaseError)


def one_line(err: BaseException) -> str:
    """The message of ``err`` as one line, phrased for a command-line user."""
    from model_extraction.datasets import DatasetNotFoundError

    if isinstance(err, DatasetNotFoundError):
        return (f"dataset {err.name!r} ({err.split}) is not on this machine: pass "
                f"--data-dir DIR (with the files in DIR/{err.name}/) or set "
                f"MODEL_EXTRACTION_DATA=DIR; 'model-extraction datasets' lists what is present")
    return " ".join(str(err).split()) or type(err).__name__


def fail(message: str, code: int = 2) -> None:
    console.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


class OneLineErrors(typer.core.TyperGroup):
    """Every command answers bad input with one line and exit code 2: click's usage errors and
    this project's errors alike. ``--debug`` (or ``$MODEL_EXTRACTION_DEBUG=1``) shows the
    traceback instead."""

    def main(self, args: Any = None, prog_name: str | None = None,  # type: ignore[override]
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
        if "--debug" in argv:  # accepted anywhere on the line, not only before the command
            argv = ["--debug", *(a for a in argv if a != "--debug")]
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            fail("aborted", 1)
        except typer.TyperException as err:  # click's usage errors, as vendored by typer
            ctx = getattr(err, "ctx", None)
            if type(err).__name__ == "NoArgsIsHelpError" and ctx is not None:
                typer.echo(ctx.get_help(), err=True)
                sys.exit(2)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            fail(" ".join(err.format_message().split()) + hint, getattr(err, "exit_code", 2))
        except _user_errors() as err:
            if debug:
                raise
            fail(one_line(err))
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)
