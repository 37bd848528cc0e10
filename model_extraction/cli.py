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
    unbounded: Annotated[bool, typer.Option("--unbounded", help="Query anywhere in R^d (the "
                                            "paper's setting) instead of only inside [0, 1]^d."
                                            )] = False,
    reference: Annotated[int, typer.Option(help="Unlabelled training inputs the attacker holds "
                                           "(lines pass through them; 0 for none).")] = 500,
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

    Trains a victim (or loads or draws one), extracts it through its float64 logit oracle
    without a query outside [0, 1]^d (unless --unbounded), with some unlabelled training inputs
    as the attacker's reference, and reports fidelity, queries, weight precision and wall time,
    as Table 6 of the paper does.
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

        pool = None
        if reference and test_x is not None and mode is Mode.default and not unbounded:
            train_x = train.flat()
            pick = np.random.default_rng(seed).choice(len(train_x), min(reference, len(train_x)),
                                                      replace=False)
            pool = train_x[pick]
        try:
            result = extract_functional(
                oracle, mode=mode.value, hidden=net.hidden if mode is Mode.paper else None,
                seed=seed, progress=report, stay_in_bounds=not unbounded, reference_inputs=pool,
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
    t.add_row("hidden units found", f"{e['hidden_extracted']} (victim: {e['hidden']}, "
              f"{e['units_crossing_box']} of them change state on the box)"
              + (", plus an affine term" if a["affine_term"] else ""))
    c = a["self_check"]
    t.add_row("self-check", f"relative error {c['max_error']:.1e} on {c['points']} fresh "
              f"points and {c['answers']} answers held (must be ≤ {c['tolerance']:.0e})")
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


@app.command()
def limits(
    dataset: Annotated[str, typer.Option(help="digits (embedded) or fashion-mnist (the "
                                         "paper's).")] = "digits",
    data_dir: Annotated[Path | None, typer.Option(help="Directory holding the datasets.")]
    = None,
    arch: Annotated[str, typer.Option(help="mlp or cnn.")] = "mlp",
    width: Annotated[int | None, typer.Option(help="Hidden units (mlp, default 256) or base "
                                              "channels (cnn, default 32).")] = None,
    models: Annotated[int, typer.Option(help="Models per setting (the paper: 10).")] = 10,
    epochs: Annotated[int, typer.Option(help="SGD epochs of every model.")] = 20,
    lr: Annotated[float, typer.Option(help="SGD learning rate (momentum 0.9).")] = 0.05,
    eps: Annotated[float, typer.Option(help="FGSM step (the paper: 25/255).")] = 25 / 255,
    uniform: Annotated[int, typer.Option(help="Uniform random query inputs.")] = 10_000,
    train_size: Annotated[int | None, typer.Option(help="First N training images only.")] = None,
    test_size: Annotated[int | None, typer.Option(help="First N test images only.")] = None,
    oracle_init_seed: Annotated[int, typer.Option(help="Oracle's init seed.")] = 0,
    oracle_sgd_seed: Annotated[int, typer.Option(help="Oracle's batch-order seed.")] = 0,
    seed_base: Annotated[int, typer.Option(help="First of the fresh seeds of the other "
                                           "settings.")] = 1000,
    threads: Annotated[int, typer.Option(help="torch threads while training.")] = 1,
    init_ulps: Annotated[int, typer.Option(help="Move each initial weight by this many "
                                           "float32 ulps (emulated GPU noise).")] = 0,
    residual: Annotated[bool, typer.Option(help="Also measure the residual non-determinism "
                                           "(more threads, 1-ulp init change).")] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the result as JSON.")]
    = None,
    progress: Annotated[bool, typer.Option(help="Show a live progress display.")] = True,
) -> None:
    """The limits of learning-based extraction (§5, Table 4): does fixing seeds buy fidelity?

    Trains an oracle (init seed 0, SGD seed 0), labels the training inputs through it, trains
    models on those labels in four seed settings, and prints their label agreement with the
    oracle and with each other on test inputs, FGSM examples and uniform noise.
    """
    from model_extraction.limits import (
        MEASURES,
        QUERY_SETS,
        SETTING_TITLES,
        LimitsConfig,
        run_limits,
    )

    width = width or (256 if arch == "mlp" else 32)
    try:
        config = LimitsConfig(
            arch=arch, options={"hidden" if arch == "mlp" else "width": width}, epochs=epochs,
            lr=lr, models_per_setting=models, eps=eps, n_uniform=uniform,
            oracle_init_seed=oracle_init_seed, oracle_order_seed=oracle_sgd_seed,
            seed_base=seed_base, train_size=train_size, test_size=test_size, threads=threads,
            init_ulps=init_ulps,
        )
        config.validate()
    except ValueError as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    train, test = _victim_data(dataset, data_dir)
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
        console=console, disable=not progress, transient=True,
    ) as bar:
        task = bar.add_task("starting", total=None)

        def report(description: str, done: int, total: int) -> None:
            bar.update(task, description=f"[bold]{description}[/] · {done}/{total} models",
                       completed=done, total=total)

        result = run_limits(train, test, config, residual=residual, progress=report)

    o = result.oracle
    accs = [r.test_accuracy for r in result.runs]
    for measure, title in MEASURES.items():
        t = Table(title=f"Table 4 (Jagielski et al. 2020, §5): {title}")
        t.add_column("query set", style="bold")
        for s in config.settings:
            t.add_column(SETTING_TITLES[s], justify="right")
        rows = result.agreement(measure)
        for q in QUERY_SETS:
            t.add_row(q, *("-" if rows[q][s] is None or rows[q][s] != rows[q][s]
                           else f"{rows[q][s]:.3f}" if measure.startswith("kappa")
                           else f"{100 * rows[q][s]:.1f}%" for s in config.settings))
        out.print(t)
    out.print(
        f"{dataset}: oracle test accuracy {100 * o['test_accuracy']:.2f}%, D labelled with "
        f"{o['label_queries']:,} label queries; models' test accuracy "
        f"{100 * min(accs):.2f}-{100 * max(accs):.2f}%; distinct weights per setting: "
        + ", ".join(f"{SETTING_TITLES[s]} {n}" for s, n in result.distinct_weights.items())
        + f"; {result.seconds:.1f} s"
    )
    if result.control is not None:
        out.print("control, oracle's seeds on the true labels: bit-identical to the oracle: "
                  f"{result.control['bit_identical_to_oracle']}")
    for r in result.residual or []:
        out.print(f"residual · {r['name']}: bit-identical {r['bit_identical_to_reference']}, "
                  f"max |Δw| {r['max_abs_weight_difference']:.2e}, agreement with the "
                  f"same-seed run on uniform inputs "
                  f"{100 * r['agreement_with_reference']['uniform']:.1f}%")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result.to_json(), indent=2))


class OutputView(StrEnum):
    logits = "logits"
    probabilities = "probabilities"
    top_k = "top_k"
    label = "label"


@app.command()
def serve(
    victim: Annotated[Path, typer.Argument(help="The victim to serve (.safetensors, from "
                                           "extract --save-victim).")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    model_name: Annotated[str, typer.Option(help="Name in /v2/models/{name}.")] = "victim",
    output: Annotated[OutputView, typer.Option(help="What the API returns.")]
    = OutputView.logits,
    k: Annotated[int, typer.Option(help="top_k: probabilities revealed.")] = 5,
    decimals: Annotated[int | None, typer.Option(help="Defence: round outputs to this many "
                                                 "decimals.")] = None,
    noise_sigma: Annotated[float, typer.Option(help="Defence: Gaussian noise of this standard "
                                               "deviation.")] = 0.0,
    reverse_sigmoid_beta: Annotated[float | None, typer.Option(
        help="Defence: reverse sigmoid (Lee et al. 2019) of this strength.")] = None,
    reverse_sigmoid_gamma: Annotated[float, typer.Option(help="Reverse sigmoid's γ.")] = 0.5,
    key: Annotated[list[str] | None, typer.Option(
        help="API key as SECRET or SECRET:BUDGET (rows); repeat for several.")] = None,
    keys_file: Annotated[Path | None, typer.Option(
        help='JSON list of {"key", "name", "budget", "rate", "burst"}.')] = None,
    rate_limit: Annotated[float | None, typer.Option(help="Requests per second per key.")]
    = None,
    burst: Annotated[float | None, typer.Option(help="Rate-limit bucket size.")] = None,
    max_batch: Annotated[int, typer.Option(help="Most rows per request.")] = 4096,
    max_request_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 64 * 2**20,
    input_range: Annotated[tuple[float, float] | None, typer.Option(
        help="Refuse input values outside LOW HIGH.")] = None,
    log: Annotated[Path | None, typer.Option(help="SQLite audit log of every request.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the noise defence.")] = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check the options, print the "
                                          "deployment, do not serve.")] = False,
) -> None:
    """Serve a victim over HTTP (Open Inference Protocol / KServe v2) with keys and budgets.

    Attack it with model_extraction.remote.RemoteOracle("http://HOST:PORT/v2/models/NAME").
    """
    from model_extraction.serving.launch import launch

    try:
        summary = launch(
            victim, host=host, port=port, model_name=model_name, output=output.value, k=k,
            decimals=decimals, noise_sigma=noise_sigma,
            reverse_sigmoid_beta=reverse_sigmoid_beta,
            reverse_sigmoid_gamma=reverse_sigmoid_gamma, keys=key, keys_file=keys_file,
            rate_limit=rate_limit, burst=burst, max_batch=max_batch,
            max_request_bytes=max_request_bytes, input_range=input_range, log=log, seed=seed,
            dry_run=dry_run,
        )
    except (ValueError, OSError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    if dry_run:
        out.print(summary)


@app.command()
def learn(
    dataset: Annotated[str, typer.Option(help="Victim's training data and the attacker's pool: "
                                         "digits (embedded), mnist, fashion-mnist, cifar10, "
                                         "svhn.")] = "digits",
    data_dir: Annotated[Path | None, typer.Option(help="Directory holding the datasets.")]
    = None,
    arch: Annotated[str, typer.Option(help="Victim and substitute: mlp, cnn or wrn-28-2 (the "
                                      "paper's).")] = "mlp",
    width: Annotated[int | None, typer.Option(help="Hidden units (mlp) or channels (cnn).")]
    = None,
    victim: Annotated[Path | None, typer.Option(help="Load this saved victim (.safetensors) "
                                                "instead of training one.")] = None,
    victim_epochs: Annotated[int | None, typer.Option(help="Epochs of a victim trained here "
                                                      "(default: >= 3000 steps).")] = None,
    output: Annotated[str, typer.Option(help="What the oracle reveals: probabilities, top_k, "
                                        "label (or logits).")] = "label",
    k: Annotated[int, typer.Option(help="top_k: probabilities revealed (WSL-5: 5).")] = 5,
    budget: Annotated[int, typer.Option(help="Queries: pool inputs labelled by the oracle.")]
    = 250,
    method: Annotated[str, typer.Option(help="supervised or mixmatch.")] = "mixmatch",
    rotation: Annotated[bool, typer.Option(help="Add the rotation loss (supervised).")] = False,
    steps: Annotated[int, typer.Option(help="Training steps.")] = 1000,
    lambda_u: Annotated[float | None, typer.Option(
        help="MixMatch's unlabeled-loss weight (default: the dataset's; 75 where unset).")]
    = None,
    seed: Annotated[int, typer.Option(help="Seed of the victim, the queries and training.")]
    = 0,
    test_size: Annotated[int | None, typer.Option(help="Evaluate on N random test images.")]
    = None,
    threads: Annotated[int | None, typer.Option(help="torch threads (1 is fastest on a "
                                                "shared CPU).")] = None,
    device: Annotated[str, typer.Option(help="Where the victim and the substitute train: cpu, "
                                        "cuda (an error without a GPU) or auto.")] = "cpu",
    save_victim: Annotated[Path | None, typer.Option(help="Save the victim here.")] = None,
    save_substitute: Annotated[Path | None, typer.Option(help="Save the substitute here.")]
    = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON.")]
    = None,
    progress: Annotated[bool, typer.Option(help="Show a live progress display.")] = True,
) -> None:
    """Learning-based extraction (§4, Tables 2-3): fully supervised, MixMatch or rotation loss.

    Trains a victim on the dataset (or loads one), labels BUDGET random training images through
    its oracle, trains a substitute and reports its test accuracy and fidelity (median of the
    last 20 checkpoints, as the paper).
    """
    from model_extraction.attacks.learning.command import run_learn
    from model_extraction.oracle import BudgetExhaustedError

    try:
        report = run_learn(
            dataset=dataset, data_dir=data_dir, arch=arch, width=width, victim_path=victim,
            victim_epochs=victim_epochs, output=output, k=k, budget=budget, method=method,
            rotation=rotation, steps=steps, lambda_u=lambda_u, seed=seed, test_size=test_size,
            threads=threads, device=device, save_victim=save_victim,
            save_substitute=save_substitute, progress=progress, console=console, out=out,
        )
    except (ValueError, BudgetExhaustedError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2))

def main() -> None:  # pragma: no cover
    app()
