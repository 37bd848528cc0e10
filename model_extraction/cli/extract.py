"""``model-extraction extract``: functionally-equivalent extraction (§6) of a local victim or of
any Open Inference Protocol API, with the report of Table 6."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from .common import (
    ApiKey,
    BatchSize,
    Concurrency,
    DataDir,
    Dataset,
    DryRun,
    InputDim,
    InputName,
    JsonPath,
    OutputName,
    Progress_,
    QueryLog,
    Url,
    connect,
    console,
    fail,
    load_data,
    results,
    write_json,
)


class Mode(StrEnum):
    default = "default"
    paper = "paper"


class ExtractOutput(StrEnum):
    logits = "logits"
    probabilities = "probabilities"


def extract(
    dataset: Annotated[Dataset | None, typer.Option(
        help="A local victim's training data (default digits, embedded); with --url, the "
             "attacker's reference and test inputs (optional).")] = None,
    hidden: Annotated[int, typer.Option(min=1, help="Hidden units of a victim trained here.")]
    = 32,
    victim: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, help="Load this saved victim (.safetensors) instead of "
        "training one; with --url, a copy of the served model to measure fidelity against.")]
    = None,
    random_victim: Annotated[bool, typer.Option("--random-victim", help="Random weights "
                                                "instead of training (scale tests).")] = False,
    mode: Annotated[Mode, typer.Option(help="default (improved) or paper (reference).")]
    = Mode.default,
    seed: Annotated[int, typer.Option(help="Seed of the victim and of the attack.")] = 0,
    epochs: Annotated[int | None, typer.Option(
        min=1, help="Training epochs of a victim trained here (default: the paper's 20, or "
        "more for at least 2,400 Adam steps on a small dataset).")] = None,
    budget: Annotated[int | None, typer.Option(min=1, help="Query budget (rows).")] = None,
    output_kind: Annotated[ExtractOutput, typer.Option(
        "--output-kind", "--output", help="What the API returns: float64 logits, or float64 "
        "probabilities (extracted through their log-ratios).")] = ExtractOutput.logits,
    input_range: Annotated[tuple[float, float], typer.Option(
        help="The API's input box LOW HIGH: no query leaves it.")] = (0.0, 1.0),
    unbounded: Annotated[bool, typer.Option("--unbounded", help="Query anywhere in R^d (the "
                                            "paper's setting) instead of only in the box.")]
    = False,
    reference: Annotated[int, typer.Option(min=0, help="Unlabelled training inputs the "
                                           "attacker holds (lines pass through them).")] = 500,
    data_dir: DataDir = None,
    save_victim: Annotated[Path | None, typer.Option(dir_okay=False,
                                                     help="Save the victim here.")] = None,
    save_extracted: Annotated[Path | None, typer.Option(
        dir_okay=False, help="Save the extracted model here (.safetensors).")] = None,
    json_path: JsonPath = None,
    progress: Progress_ = True,
    url: Url = None,
    api_key: ApiKey = None,
    input_name: InputName = None,
    output_name: OutputName = None,
    input_dim: InputDim = None,
    concurrency: Concurrency = 4,
    batch_size: BatchSize = 512,
    query_log: QueryLog = None,
    dry_run: DryRun = False,
) -> None:
    """Functionally-equivalent extraction (§6) of a ReLU network of any depth.

    Without --url: trains a victim on the dataset (or loads or draws one) and extracts it
    through its float64 oracle. With --url: extracts the model behind that API. Either way no
    query leaves the input box (unless --unbounded), and the report gives fidelity, queries,
    weight precision and wall time, as Table 6 of the paper does.
    """
    if not input_range[0] < input_range[1]:
        fail(f"--input-range needs LOW < HIGH, got {input_range[0]:g} {input_range[1]:g}")
    if not np.all(np.isfinite(input_range)):
        fail(f"--input-range needs two finite numbers, got {input_range[0]:g} "
             f"{input_range[1]:g}")
    if url is None and (dry_run or query_log or input_name or output_name or input_dim):
        fail("--dry-run, --query-log, --input-name, --output-name and --input-dim apply to a "
             "remote API: add --url")
    started = time.perf_counter()
    if url is not None:
        oracle = connect(url, api_key=api_key, input_name=input_name, output_name=output_name,
                         output_kind=output_kind.value, input_dim=input_dim, budget=budget,
                         concurrency=concurrency, batch_size=batch_size, query_log=query_log)
        if dry_run:
            return
        net = None if victim is None else _load_victim(victim)
        data = _inputs(dataset.value if dataset else None, data_dir, oracle.input_dim)
        about = {"url": oracle.plan["url"], "input_dim": oracle.input_dim}
    else:
        net, data = _local_victim(dataset.value if dataset else "digits", hidden, victim,
                                  random_victim, seed, epochs, data_dir)
        oracle = _local_oracle(net, output_kind, budget)
        about = {"dataset": str(net.metadata.get("dataset", "random")),
                 "input_dim": net.input_dim, "hidden": net.hidden, "outputs": net.num_outputs,
                 "parameters": net.num_parameters,
                 "test_accuracy": net.metadata.get("test_accuracy")}
    if save_victim is not None and net is not None:
        net.save(save_victim)
    about["seconds_to_build"] = time.perf_counter() - started
    bounded = not unbounded and mode is Mode.default
    pool = _reference(data, reference, seed) if bounded else None
    if pool is not None and (pool.min() < input_range[0] or pool.max() > input_range[1]):
        fail(f"the {len(pool)} reference inputs (--reference, from the dataset) lie outside "
             f"--input-range {input_range[0]:g} {input_range[1]:g}: give --reference 0, or "
             "a --dataset whose inputs the API accepts")
    result = _run(oracle, output_kind, mode, net, seed, input_range, bounded, pool, progress)
    if save_extracted is not None:
        result.network.save(save_extracted)
    report = {"victim": about, "attack": result.summary() | {
        "input_range": list(input_range), "queries_inside_input_range": bounded},
        "oracle": getattr(oracle, "cost", {"queries": oracle.queries})}
    if net is not None:
        from model_extraction.evaluation import compare_networks

        report["evaluation"] = compare_networks(
            net, result.network, test_inputs=None if data is None else data[1],
            input_bounds=input_range, seed=seed,
            up_to_constant=output_kind is ExtractOutput.probabilities)
    _print_report(report, results(json_path))
    write_json(json_path, report)


def _load_victim(path: Path) -> Any:
    from model_extraction.network import ReLUNetwork

    return ReLUNetwork.load(path)


def _inputs(dataset: str | None, data_dir: Path | None,
            d: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(training inputs, test inputs) of ``dataset`` as flat rows, if it has width ``d``."""
    if dataset is None:
        return None
    train, test = load_data(dataset, "train", data_dir), load_data(dataset, "test", data_dir)
    if int(np.prod(train.input_shape)) != d:
        fail(f"--dataset {dataset} has inputs of width {int(np.prod(train.input_shape))}; the "
             f"model takes {d}")
    return train.flat(), test.flat()


def _local_victim(dataset: str, hidden: int, path: Path | None, random_victim: bool, seed: int,
                  epochs: int | None, data_dir: Path | None) -> tuple[Any, Any]:
    from model_extraction.network import ReLUNetwork
    from model_extraction.victims import train_victim, victim_epochs

    train, test = load_data(dataset, "train", data_dir), load_data(dataset, "test", data_dir)
    data = (train.flat(), test.flat())
    if path is not None:
        net = _load_victim(path)
        return net, data if data[0].shape[1] == net.input_dim else None
    if random_victim:
        d = int(np.prod(test.input_shape))
        return ReLUNetwork.random(d, hidden, 10, seed=seed, metadata={"dataset": "random"}), data
    epochs = epochs or victim_epochs(len(train))
    with console.status(f"training a {hidden}-unit victim on {dataset} ({epochs} epochs)"):
        net = train_victim(train.flat(np.float32), train.labels, hidden,
                           num_classes=train.num_classes, epochs=epochs, seed=seed,
                           x_test=data[1], y_test=test.labels, metadata={"dataset": dataset})
    return net, data


def _local_oracle(net: Any, kind: ExtractOutput, budget: int | None) -> Any:
    from model_extraction.oracle import ModelOracle

    return ModelOracle(net, output=kind.value, budget=budget)


def _reference(data: tuple[np.ndarray, np.ndarray] | None, n: int,
               seed: int) -> np.ndarray | None:
    if not n or data is None:
        return None
    train_x = data[0]
    pick = np.random.default_rng(seed).choice(len(train_x), min(n, len(train_x)), replace=False)
    return train_x[pick]


def _run(oracle: Any, kind: ExtractOutput, mode: Mode, net: Any, seed: int,
         bounds: tuple[float, float], bounded: bool, pool: np.ndarray | None,
         progress: bool) -> Any:
    from model_extraction.attacks.functional import extract_functional
    from model_extraction.oracle import LogitDifferenceOracle

    if kind is ExtractOutput.probabilities:
        oracle = LogitDifferenceOracle(oracle)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, disable=not progress, transient=True) as bar:
        task = bar.add_task("starting")

        def report(phase: str, queries: int, units: int, h: int | None) -> None:
            of = f"/{h}" if h else ""
            bar.update(task, description=f"[bold]{phase}[/] · {queries:,} queries · "
                                         f"{units}{of} units")

        return extract_functional(
            oracle, mode=mode.value, hidden=net.hidden if mode is Mode.paper and net else None,
            seed=seed, progress=report, input_bounds=bounds, stay_in_bounds=bounded,
            reference_inputs=pool,
        )


def _fmt_bits(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _print_report(r: dict[str, Any], to: Console) -> None:
    v, a, e = r["victim"], r["attack"], r.get("evaluation")
    after = "; deeper layers after Carlini et al. 2020" if a["mode"] == "deep" else ""
    t = Table(title=f"Functionally-equivalent extraction (Jagielski et al. 2020, §6{after})",
              show_header=False)
    t.add_column(style="bold")
    t.add_column()
    if "url" in v:
        t.add_row("victim", f"{v['url']} (input width {v['input_dim']})")
    else:
        acc = v["test_accuracy"]
        t.add_row("victim", f"{v['dataset']}: {v['input_dim']}-{v['hidden']}-{v['outputs']}, "
                  f"{v['parameters']:,} parameters"
                  + (f", test accuracy {100 * acc:.2f}%" if acc is not None else ""))
    t.add_row("mode", a["mode"])
    lo, hi = a["input_range"]
    t.add_row("queries sent", f"inside [{lo:g}, {hi:g}]^d" if a["queries_inside_input_range"]
              else f"anywhere (the paper's setting; evaluated on [{lo:g}, {hi:g}]^d)")
    found = f"{a['hidden']}" + (", plus an affine term" if a["affine_term"] else "")
    if e is not None:
        which = "of them" if isinstance(e["hidden"], int) else "of its first layer's units"
        found += (f" (victim: {e['hidden']}, {e['units_crossing_box']} {which} change state "
                  "on the box)")
    t.add_row("hidden units found", found)
    c = a["self_check"]
    bound = (f"; so the model may still differ on at most {100 * c['disagreement_bound']:.3g}% "
             "of the distribution its fresh points were drawn from (95% confidence, for this "
             "check)" if c["passed"] else "")
    t.add_row("self-check", f"relative error {c['max_error']:.1e} on {c['points']} fresh "
              f"points and {c['answers']} answers held (must be ≤ {c['tolerance']:.0e})"
              + bound)
    units = a["hidden"] if isinstance(a["hidden"], int) else sum(a["hidden"])
    dh = v["input_dim"] * max(units, 1)
    t.add_row("queries", f"{a['queries']:,} (2^{a['log2_queries']:.2f}, "
              f"{a['queries'] / dh:.2f}·d·h)")
    if "paid" in r["oracle"]:
        o = r["oracle"]
        t.add_row("paid", f"{o['paid']:,} rows charged; {o['cached']:,} answered from the query "
                  f"log (asked before, in this run or an earlier one); {o['requests']:,} HTTP "
                  f"request{'s' if o['requests'] != 1 else ''} ({o['retried']} retried)")
    if e is not None:
        _evaluation_rows(t, a, e)
    else:
        t.add_row("fidelity", "not measured: no copy of the victim (--victim); the self-check "
                  "is the attack's verification against the API")
    phases = ", ".join(f"{k} {p['queries']:,}q {p['seconds']:.2f}s" for k, p in a["phases"].items())
    built = "connecting" if "url" in v else "building the victim"
    t.add_row("wall time", f"attack {a['seconds']:.2f} s ({phases}); {built} "
              f"{v['seconds_to_build']:.1f} s")
    for note in dict.fromkeys(a["notes"]):  # each note once
        t.add_row("note", note)
    to.print(t)


def _evaluation_rows(t: Table, a: dict[str, Any], e: dict[str, Any]) -> None:
    if "fidelity_test" in e:
        t.add_row("fidelity, test set", f"{100 * e['fidelity_test']:.2f}% of {e['test_inputs']:,}")
    t.add_row("fidelity, uniform inputs", f"{100 * e['fidelity_uniform']:.2f}% of 10,000")
    t.add_row("first layer, max |error|", f"{e['max_abs_weight_error']:.2e} (unit-norm rows)")
    t.add_row("first layer, mean |error|", f"{e['mean_abs_weight_error']:.2e}")
    t.add_row("first layer, bits", f"{_fmt_bits(e['mean_bits'])} mean, "
              f"{_fmt_bits(e['worst_unit_bits'])} worst unit "
              f"(attack's own estimate: {_fmt_bits(a['estimated_bits_mean'])} / "
              f"{_fmt_bits(a['estimated_bits_min'])})")
    widths = e["hidden"] if "layers" in e else []  # a deep victim: every layer measured
    for i, (layer, width) in enumerate(zip(e.get("layers", []), widths, strict=True), 1):
        t.add_row(f"layer {i}, bits", f"{_fmt_bits(layer['worst_bits'])} worst entry, "
                  f"{_fmt_bits(layer['mean_bits'])} mean; {layer['units_matched']} of {width} "
                  "units matched" + ("" if i == 1 else " (not estimated by the attack)"))
    t.add_row("max logit error, uniform inputs", f"2^{e['log2_max_logit_error']:.1f} over 10,000")
    t.add_row("wrong row signs", str(e["wrong_signs"]))
