"""Reproduce Table 4 of Jagielski et al. (2020): the limits of learning-based extraction (§5).

Usage::

    python benchmarks/limits.py --data-dir path/to/data \\
        --json results/limits-fashion-mnist.json --markdown results/limits-fashion-mnist.md
    python benchmarks/limits.py --quick --json results/limits-quick.json    # digits, < 1 minute

The full run trains on Fashion-MNIST (60k train, 10k test) an oracle with init seed 0 and SGD
seed 0, labels the training inputs through it (the substitute set D), trains ``--models`` models
on D in each of the four seed settings and measures label agreement on the test set, FGSM
examples against the oracle (eps = 25/255) and uniform random inputs, both against the oracle
and pairwise. It then measures the residual non-determinism of this platform (more threads,
non-deterministic algorithms, a one-ulp change of the initial weights). ``--quick`` does the same
on scikit-learn's embedded digits.

``--json PATH`` writes ``{"meta", "rows", "pairwise_rows", "result"}``: ``rows`` has one row per
query set with keys ``query_set``, ``same_init_same_sgd``, ``same_sgd``, ``same_init`` and
``different`` (mean agreement with the oracle), ``pairwise_rows`` the same for pairwise
agreement, ``kappa_rows`` for Cohen's kappa with the oracle (agreement beyond chance), and
``result`` everything (seeds, accuracies and digests of every run). With ``--settings`` the rows
hold only the settings that were run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_extraction.datasets import Dataset, load_dataset
from model_extraction.limits import (
    DEFAULT_VARIANTS,
    QUERY_SETS,
    SETTING_TITLES,
    SETTINGS,
    LimitsConfig,
    LimitsExperiment,
    LimitsResult,
    RunRecord,
    summarise_setting,
)
from model_extraction.sweep import (
    Cell,
    SweepResult,
    add_sweep_options,
    cells_dir,
    failures_markdown,
    make_executor,
    run_sweep,
    sweep_summary,
)


def prepare_task(train: Dataset, test: Dataset, config: LimitsConfig) -> LimitsExperiment:
    """Train the oracle, label D and build the query sets, once for all the cells (a task)."""
    experiment = LimitsExperiment(train, test, config)
    experiment.prepare()
    return experiment


def limits_cell(cell: dict, experiment: LimitsExperiment) -> dict[str, Any]:
    """One cell of Table 4 (a sweep task) on the prepared ``experiment``: ``oracle`` (its
    record and the sizes), ``model`` (one model of a setting: its record and its predicted
    labels on every query set), ``control`` or ``residual`` (see :class:`LimitsExperiment`).
    Torch runs with the configured threads wherever the cell runs."""
    torch.set_num_threads(experiment.config.threads)
    kind = cell["cell"]
    if kind == "oracle":
        return {"oracle": experiment.oracle_info,
                "sizes": {"train": len(experiment.x_train), "test": len(experiment.x_test),
                          **{q: len(experiment.query_sets[q]) for q in ("adversarial",
                                                                        "uniform")}}}
    if kind == "model":
        record, preds = experiment.train(cell["setting"], cell["index"])
        return {"record": asdict(record), "preds": {q: p.tolist() for q, p in preds.items()}}
    if kind == "control":
        return experiment.control()
    if kind == "residual":
        return {"rows": experiment.residual(DEFAULT_VARIANTS)}
    raise ValueError(f"unknown cell kind {kind!r}")


def table_cells(config: LimitsConfig, dataset: str, residual: bool) -> list[Cell]:
    """The oracle cell, one cell per (setting, model), the control and the residual cell
    (which needs as many CPUs as its most threaded variant); GPUs when ``config.device``
    is a GPU."""
    base = {"table": 4, "dataset": dataset, "config": config.to_json()}
    gpus = 1.0 if config.device.startswith("cuda") else 0.0
    specs = [{"cell": "oracle"}] + [
        {"cell": "model", "setting": s, "index": i}
        for s in config.settings for i in range(config.models_per_setting)
    ] + [{"cell": "control"}] + ([{"cell": "residual"}] if residual else [])
    cells = []
    for spec in specs:
        cpus = config.threads
        if spec["cell"] == "residual":
            cpus = max(cpus, *(v.threads for v in DEFAULT_VARIANTS))
        cells.append(Cell({**base, **spec}, num_cpus=cpus, num_gpus=gpus))
    return cells


def assemble(config: LimitsConfig, dataset: str, sweep: SweepResult) -> LimitsResult:
    """The :class:`LimitsResult` of the finished cells, as :meth:`LimitsExperiment.run`
    computes it. Raises ``RuntimeError`` naming the failed cells if any is missing."""
    if sweep.failed:
        raise RuntimeError("cells failed (rerun the command to retry them):\n"
                           + failures_markdown(sweep))
    by = {(r.config["cell"], r.config.get("setting"), r.config.get("index")): r.result
          for r in sweep.records}
    runs, vs_oracle, kappa, pairwise, distinct = [], {}, {}, {}, {}
    for setting in config.settings:
        cells = [by["model", setting, i] for i in range(config.models_per_setting)]
        records = [RunRecord(**c["record"]) for c in cells]
        preds = [{q: np.asarray(p, dtype=np.int64) for q, p in c["preds"].items()}
                 for c in cells]
        runs += records
        vs_oracle[setting], kappa[setting], pairwise[setting], distinct[setting] = \
            summarise_setting(records, preds)
    oracle = by["oracle", None, None]
    residual = by.get(("residual", None, None))
    return LimitsResult(
        config=config, dataset=dataset, sizes=oracle["sizes"], oracle=oracle["oracle"],
        runs=runs, vs_oracle=vs_oracle, kappa_vs_oracle=kappa, pairwise=pairwise,
        distinct_weights=distinct, control=by["control", None, None],
        residual=residual["rows"] if residual else None,
        seconds=sweep.seconds + oracle["oracle"]["seconds"],
    )


def run_table(args: argparse.Namespace, config: LimitsConfig, train: Dataset,
              test: Dataset) -> tuple[LimitsResult, SweepResult]:
    """Run the cells of Table 4 not kept yet (in-process or on Ray) and assemble them."""
    cells = table_cells(config, train.name, residual=not args.no_residual)
    prepared: list[Any] = []
    with make_executor(args.ray, num_cpus=args.ray_cpus) as executor:

        def inputs(cell: dict) -> tuple[Any]:
            if not prepared:  # the oracle is trained once, only if a cell still needs it
                prepared.append(executor.defer(prepare_task, train, test, config,
                                               num_cpus=config.threads))
            return (prepared[0],)

        sweep = run_sweep(limits_cell, cells, executor=executor, inputs=inputs,
                          store=cells_dir(args.json, args.cells), fresh=args.fresh)
    return assemble(config, train.name, sweep), sweep


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="digits (embedded), 128 hidden units, 2,000 uniform inputs: < 1 minute")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="directory holding the dataset (else $MODEL_EXTRACTION_DATA, the cache)")
    p.add_argument("--arch", default="mlp", choices=["mlp", "cnn"])
    p.add_argument("--width", type=int, default=None,
                   help="hidden units (mlp, default 256) or base channels (cnn, default 32)")
    p.add_argument("--epochs", type=int, default=None, help="default 20")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--models", type=int, default=10, help="models per setting (the paper: 10)")
    p.add_argument("--uniform", type=int, default=None, help="uniform inputs (default 10,000)")
    p.add_argument("--train-size", type=int, default=None, help="first N training images only")
    p.add_argument("--test-size", type=int, default=None, help="first N test images only")
    p.add_argument("--threads", type=int, default=1, help="torch threads while training")
    p.add_argument("--init-ulps", type=int, default=0,
                   help="move each initial weight by this many float32 ulps (emulated GPU noise)")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS,
                   help="which seed settings to run (default: all four)")
    p.add_argument("--no-residual", action="store_true",
                   help="skip the residual non-determinism measurement")
    p.add_argument("--json", type=Path, default=None, help="write rows and the full result here")
    p.add_argument("--markdown", type=Path, default=None, help="write the tables here")
    add_sweep_options(p)
    args = p.parse_args(argv)
    if args.quick:
        args.dataset = "digits"
        args.width = args.width or 128
        args.uniform = args.uniform or 2000
    width = args.width or (256 if args.arch == "mlp" else 32)
    config = LimitsConfig(
        arch=args.arch, options={"hidden" if args.arch == "mlp" else "width": width},
        epochs=args.epochs or 20, lr=args.lr, models_per_setting=args.models,
        n_uniform=args.uniform or 10_000, train_size=args.train_size, test_size=args.test_size,
        threads=args.threads, init_ulps=args.init_ulps, settings=tuple(args.settings),
    )

    start = time.perf_counter()
    train = load_dataset(args.dataset, "train", data_dir=args.data_dir, progress=False)
    test = load_dataset(args.dataset, "test", data_dir=args.data_dir, progress=False)
    config.validate()
    result, sweep = run_table(args, config, train, test)
    wall = time.perf_counter() - start

    o = result.oracle
    accs = [r.test_accuracy for r in result.runs]
    summary = (
        f"{args.dataset}: {result.sizes['train']:,} train / {result.sizes['test']:,} test, "
        f"{args.arch} {width}, SGD lr {config.lr} momentum {config.momentum}, {config.epochs} "
        f"epochs, {config.models_per_setting} models per setting; oracle test accuracy "
        f"{100 * o['test_accuracy']:.2f}% ({100 * o['accuracy_on_adversarial']:.1f}% on its FGSM "
        f"examples), D labelled with {o['label_queries']:,} label queries "
        f"({100 * (1 - o['train_accuracy']):.2f}% differ from the true labels); models' test "
        f"accuracy {100 * min(accs):.2f}-{100 * max(accs):.2f}%; wall {wall:.0f} s"
    )
    share = o["majority_label_fraction"]
    summary += ("; the oracle's most frequent label covers " + ", ".join(
        f"{100 * share[q]:.1f}% of {q}" for q in QUERY_SETS) + " inputs")
    lines = [summary, "", result.markdown(), ""]
    lines.append("distinct weight vectors per setting: " + ", ".join(
        f"{SETTING_TITLES[s]} {n}/{config.models_per_setting}"
        for s, n in result.distinct_weights.items()))
    if result.control is not None:
        c = result.control
        lines.append(f"control (oracle's seeds, true labels): bit-identical to the oracle: "
                     f"{c['bit_identical_to_oracle']}")
    if result.residual:
        lines += ["", "| residual variant (same seeds, on D) | bit-identical | max \\|Δw\\| | "
                  + " | ".join(f"agreement, {q}" for q in QUERY_SETS) + " |",
                  "|---|---|---:" + "|---:" * len(QUERY_SETS) + "|"]
        for r in result.residual:
            lines.append(f"| {r['name']} | {r['bit_identical_to_reference']} | "
                         f"{r['max_abs_weight_difference']:.2e} | " + " | ".join(
                             f"{100 * r['agreement_with_reference'][q]:.1f}%" for q in QUERY_SETS)
                         + " |")
    text = "\n".join(lines) + "\n"
    print(text)

    if args.json:
        meta = {"machine": platform.platform(), "python": platform.python_version(),
                "torch": torch.__version__, "dataset": args.dataset, "quick": args.quick,
                "wall_seconds": wall, "sweep": sweep_summary(sweep, args.ray),
                "command": " ".join(["python", "benchmarks/limits.py", *(argv or sys.argv[1:])])}
        payload = {"meta": meta, "rows": result.table_rows("vs_oracle"),
                   "pairwise_rows": result.table_rows("pairwise"),
                   "kappa_rows": result.table_rows("kappa_vs_oracle"),
                   "result": result.to_json()}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
