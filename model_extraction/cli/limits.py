"""``model-extraction limits``: the limits of learning-based extraction (§5, Table 4)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from .common import (
    DataDir,
    Dataset,
    JsonPath,
    Progress_,
    console,
    load_data,
    results,
    write_json,
)


class LimitsArch(StrEnum):
    mlp = "mlp"
    cnn = "cnn"


def limits(
    dataset: Annotated[Dataset, typer.Option(help="digits (embedded) or fashion-mnist (the "
                                             "paper's).")] = Dataset.digits,
    data_dir: DataDir = None,
    arch: Annotated[LimitsArch, typer.Option(help="mlp or cnn.")] = LimitsArch.mlp,
    width: Annotated[int | None, typer.Option(min=1, help="Hidden units (mlp, default 256) or base "
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
    json_path: JsonPath = None,
    progress: Progress_ = True,
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

    arch = arch.value
    width = width or (256 if arch == "mlp" else 32)
    config = LimitsConfig(
            arch=arch, options={"hidden" if arch == "mlp" else "width": width}, epochs=epochs,
            lr=lr, models_per_setting=models, eps=eps, n_uniform=uniform,
            oracle_init_seed=oracle_init_seed, oracle_order_seed=oracle_sgd_seed,
            seed_base=seed_base, train_size=train_size, test_size=test_size, threads=threads,
            init_ulps=init_ulps,
        )
    config.validate()
    dataset = dataset.value
    train, test = load_data(dataset, "train", data_dir), load_data(dataset, "test", data_dir)
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
    out = results(json_path)
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
    write_json(json_path, result.to_json())
