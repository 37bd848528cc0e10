"""The ``model-extraction`` command line."""

from __future__ import annotations

import json
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Steal neural networks through their prediction APIs (Jagielski et al., USENIX Sec 2020).",
)
console = Console(stderr=True)
out = Console()


class Mode(StrEnum):
    default = "default"
    paper = "paper"


def _victim_data(dataset: str, data_dir: Path | None) -> tuple[Any, Any]:
    from model_extraction.datasets import load_dataset

    train = load_dataset(dataset, "train", data_dir=data_dir)
    test = load_dataset(dataset, "test", data_dir=data_dir)
    return train, test


def _fmt_bits(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


@app.command()
def extract(
    dataset: Annotated[str, typer.Option(help="Victim's training data: digits (embedded), "
                                         "mnist, fashion-mnist, cifar10.")] = "digits",
    hidden: Annotated[int, typer.Option(help="Hidden units of a victim trained here.")] = 32,
    victim: Annotated[Path | None, typer.Option(help="Load this saved victim (.safetensors) "
                                                "instead of training one.")] = None,
    random_victim: Annotated[bool, typer.Option("--random-victim", help="Random weights "
                                                "instead of training (scale tests).")] = False,
    mode: Annotated[Mode, typer.Option(help="default (improved) or paper (reference).")]
    = Mode.default,
    seed: Annotated[int, typer.Option(help="Seed of the victim and of the attack.")] = 0,
    epochs: Annotated[int, typer.Option(help="Training epochs (the paper: 20).")] = 20,
    budget: Annotated[int | None, typer.Option(help="Query budget of the oracle.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Directory holding the datasets "
                                                  "(else $MODEL_EXTRACTION_DATA, the cache).")]
    = None,
    save_victim: Annotated[Path | None, typer.Option(help="Save the victim here.")] = None,
    save_extracted: Annotated[Path | None, typer.Option(help="Save the extracted model here.")]
    = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON.")]
    = None,
    progress: Annotated[bool, typer.Option(help="Show a live progress display.")] = True,
) -> None:
    """Functionally-equivalent extraction (§6) of a one-hidden-layer ReLU victim, end to end.

    Trains a victim (or loads or draws one), extracts it through its float64 logit oracle, and
    reports fidelity, queries, weight precision and wall time, as Table 6 of the paper does.
    """
    from model_extraction.attacks.functional import extract_functional
    from model_extraction.evaluation import compare_networks
    from model_extraction.network import ReLUNetwork
    from model_extraction.oracle import BudgetExhaustedError, ModelOracle
    from model_extraction.victims import train_victim

    started = time.perf_counter()
    test_x = None
    name = dataset
    if victim is not None or not random_victim:
        train, test = _victim_data(dataset, data_dir)
        test_x = test.flat()
    if victim is not None:
        net = ReLUNetwork.load(victim)
        name = str(net.metadata.get("dataset", victim.name))
        if test_x is not None and test_x.shape[1] != net.input_dim:
            test_x = None
    elif random_victim:
        from model_extraction.datasets import load_dataset

        d = int(np.prod(load_dataset(dataset, "test", data_dir=data_dir).input_shape))
        net = ReLUNetwork.random(d, hidden, 10, seed=seed, metadata={"dataset": "random"})
        name = "random"
    else:
        with console.status(f"training a {hidden}-unit victim on {dataset} ({epochs} epochs)"):
            net = train_victim(
                train.flat(np.float32), train.labels, hidden, num_classes=train.num_classes,
                epochs=epochs, seed=seed, x_test=test_x, y_test=test.labels,
                metadata={"dataset": dataset},
            )
    if save_victim is not None:
        net.save(save_victim)
    train_seconds = time.perf_counter() - started

    oracle = ModelOracle(net, budget=budget)
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
        console=console, disable=not progress, transient=True,
    ) as bar:
        task = bar.add_task("starting")

        def report(phase: str, queries: int, units: int, h: int | None) -> None:
            of = f"/{h}" if h else ""
            bar.update(task, description=f"[bold]{phase}[/] · {queries:,} queries · "
                                         f"{units}{of} units")

        try:
            result = extract_functional(
                oracle, mode=mode.value, hidden=net.hidden if mode is Mode.paper else None,
                seed=seed, progress=report,
            )
        except BudgetExhaustedError as err:
            console.print(f"[red]error:[/] {err}")
            raise typer.Exit(2) from None
    if save_extracted is not None:
        result.network.save(save_extracted)
    metrics = compare_networks(net, result.network, test_inputs=test_x, seed=seed)
    summary = result.summary()
    report_dict = {
        "victim": {"dataset": name, "input_dim": net.input_dim, "hidden": net.hidden,
                   "outputs": net.num_outputs, "parameters": net.num_parameters,
                   "test_accuracy": net.metadata.get("test_accuracy"),
                   "seconds_to_build": train_seconds},
        "attack": summary,
        "evaluation": metrics,
    }
    _print_report(report_dict)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report_dict, indent=2))


def _print_report(r: dict[str, Any]) -> None:
    v, a, e = r["victim"], r["attack"], r["evaluation"]
    t = Table(title="Functionally-equivalent extraction (Jagielski et al. 2020, §6)",
              show_header=False)
    t.add_column(style="bold")
    t.add_column()
    acc = v["test_accuracy"]
    t.add_row("victim", f"{v['dataset']}: {v['input_dim']}-{v['hidden']}-{v['outputs']}, "
              f"{v['parameters']:,} parameters"
              + (f", test accuracy {100 * acc:.2f}%" if acc is not None else ""))
    t.add_row("mode", a["mode"])
    t.add_row("hidden units found", f"{e['hidden_extracted']} (victim: {e['hidden']})")
    t.add_row("queries", f"{a['queries']:,} (2^{a['log2_queries']:.2f}, "
              f"{a['queries'] / (v['input_dim'] * v['hidden']):.2f}·d·h)")
    if "fidelity_test" in e:
        t.add_row("fidelity, test set", f"{100 * e['fidelity_test']:.2f}% of {e['test_inputs']:,}")
    t.add_row("fidelity, uniform inputs", f"{100 * e['fidelity_uniform']:.2f}% of 10,000")
    t.add_row("first layer, max |error|", f"{e['max_abs_weight_error']:.2e} (unit-norm rows)")
    t.add_row("first layer, mean |error|", f"{e['mean_abs_weight_error']:.2e}")
    t.add_row("bits of precision", f"{_fmt_bits(e['mean_bits'])} mean, "
              f"{_fmt_bits(e['worst_unit_bits'])} worst unit "
              f"(attack's own estimate: {_fmt_bits(a['estimated_bits_mean'])} / "
              f"{_fmt_bits(a['estimated_bits_min'])})")
    t.add_row("max logit error", f"2^{e['log2_max_logit_error']:.1f}")
    t.add_row("wrong row signs", str(e["wrong_signs"]))
    phases = ", ".join(f"{k} {p['queries']:,}q {p['seconds']:.2f}s" for k, p in a["phases"].items())
    t.add_row("wall time", f"{a['seconds']:.2f} s ({phases})")
    for note in a["notes"]:
        t.add_row("note", note)
    out.print(t)


@app.command()
def datasets(
    data_dir: Annotated[Path | None, typer.Option(help="Also look in this directory.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the datasets present and verified on this machine (never downloads)."""
    from model_extraction.datasets import dataset_report, format_report

    rows = dataset_report(data_dir=data_dir)
    if json_output:
        print(json.dumps(rows, indent=2))
    else:
        out.print(format_report(rows))


def main() -> None:  # pragma: no cover
    app()
