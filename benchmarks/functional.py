"""Reproduce Table 6 of Jagielski et al. (2020): functionally-equivalent extraction vs hidden size.

Usage::

    MODEL_EXTRACTION_DATA=path/to/data python benchmarks/functional.py            # full table
    python benchmarks/functional.py --quick --json results/functional-quick.json    # < 1 minute

The full run trains five MNIST victims per hidden size (16 ... 512, Adam, 20 epochs, batch 128)
plus one random-weight victim per size, extracts each in the chosen modes, and writes JSON and a
Markdown table. ``--quick`` uses scikit-learn's digits with h = 16 and 32.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from model_extraction.attacks.functional import extract_functional
from model_extraction.datasets import load_dataset
from model_extraction.evaluation import compare_networks
from model_extraction.network import ReLUNetwork
from model_extraction.oracle import ModelOracle
from model_extraction.sweep import (
    Cell,
    Executor,
    add_sweep_options,
    cells_dir,
    failures_markdown,
    make_executor,
    run_sweep,
    sweep_summary,
)
from model_extraction.victims import train_victim


def run_one(victim: ReLUNetwork, test_x: np.ndarray, mode: str, seed: int,
            domain: str = "box", reference: np.ndarray | None = None) -> dict:
    """One extraction: ``domain`` ``"box"`` keeps every query in ``[0, 1]^d`` (with
    ``reference`` training inputs as the attacker's unlabelled pool), ``"unbounded"`` is the
    paper's setting (any float64 input)."""
    oracle = ModelOracle(victim)
    start = time.perf_counter()
    options = {}
    if mode == "default":
        options = {"stay_in_bounds": domain == "box"}
        if domain == "box" and reference is not None:
            options["reference_inputs"] = reference
    result = extract_functional(
        oracle, mode=mode, hidden=victim.hidden if mode == "paper" else None, seed=seed,
        **options,
    )
    seconds = time.perf_counter() - start
    metrics = compare_networks(victim, result.network, test_inputs=test_x, seed=seed)
    return {
        "mode": mode,
        "domain": domain if mode == "default" else "unbounded",
        "units_crossing_box": metrics["units_crossing_box"],
        "affine_term": metrics["affine_term"],
        "self_check_max_error": result.check.get("max_error"),
        "hidden": victim.hidden,
        "parameters": victim.num_parameters,
        "victim": victim.metadata.get("kind"),
        "victim_seed": victim.metadata.get("seed"),
        "victim_test_accuracy": victim.metadata.get("test_accuracy"),
        "queries": result.queries,
        "log2_queries": float(np.log2(result.queries)),
        "queries_per_dh": result.queries / (victim.input_dim * victim.hidden),
        "fidelity_test": metrics.get("fidelity_test"),
        "fidelity_uniform": metrics["fidelity_uniform"],
        "max_abs_weight_error": metrics["max_abs_weight_error"],
        "mean_abs_weight_error": metrics["mean_abs_weight_error"],
        "mean_bits": metrics["mean_bits"],
        "worst_unit_bits": metrics["worst_unit_bits"],
        "log2_max_logit_error": metrics["log2_max_logit_error"],
        "hidden_extracted": metrics["hidden_extracted"],
        "wrong_signs": metrics["wrong_signs"],
        "seconds": seconds,
        "phase_seconds": {k: v.seconds for k, v in result.phases.items()},
    }


def victim_path(victim_dir: Path | None, vc: dict) -> Path | None:
    """Where ``--victim-dir`` keeps the trained victim of configuration ``vc``."""
    if victim_dir is None:
        return None
    name = f"{vc['dataset']}-h{vc['hidden']}-e{vc['epochs']}-seed{vc['seed']}"
    return victim_dir / f"{name}.safetensors"


def train_victim_task(vc: dict, data: tuple, victim_dir: str | None,
                      threads: int = 1) -> ReLUNetwork:
    """Train the victim ``d → h → K`` of configuration ``vc`` as the paper does (Adam, batch
    128) on ``data = (x_train, y_train, x_test, y_test, num_classes)``; saved under
    ``victim_dir`` when given. A sweep task (runs once per victim, on a worker with Ray)."""
    torch.set_num_threads(threads)
    x, y, xt, yt, classes = data
    victim = train_victim(x, y, vc["hidden"], num_classes=classes, epochs=vc["epochs"],
                          seed=vc["seed"], x_test=xt, y_test=yt,
                          metadata={"dataset": vc["dataset"]})
    path = victim_path(Path(victim_dir) if victim_dir else None, vc)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        victim.save(path)
    return victim


def extract_cell(config: dict, victim: ReLUNetwork, test_x: np.ndarray,
                 reference: np.ndarray | None) -> dict:
    """One cell of Table 6 (a sweep task): extract ``victim`` in the cell's mode and domain
    with the BLAS and torch threads limited to the cell's CPUs, so that the numbers do not
    depend on where it runs. Returns the row."""
    torch.set_num_threads(config["threads"])
    with threadpool_limits(config["threads"]):
        row = run_one(victim, test_x, config["mode"], seed=config["seed"],
                      domain=config["domain"], reference=reference)
    row["dataset"] = config["dataset"]
    return row


def table_cells(args: argparse.Namespace) -> list[Cell]:
    """The cells of the table, in the order the sequential benchmark ran them: per size, per
    victim (trained seeds ``0 ..``, then random seeds ``100 ..``), per mode and domain."""
    runs = [(m, dom) for m in args.modes
            for dom in (args.domains if m == "default" else ["unbounded"])]
    victims = [("trained", s) for s in range(args.victims)] + [
        ("random", 100 + s) for s in range(args.random_victims)]
    cells = []
    for h in args.sizes:
        for kind, seed in victims:
            for mode, domain in runs:
                config = {"table": 6, "dataset": args.dataset, "hidden": h, "victim": kind,
                          "victim_seed": seed, "epochs": args.epochs if kind == "trained"
                          else None, "mode": mode, "domain": domain,
                          "reference": args.reference if mode == "default"
                          and domain == "box" else 0, "seed": 0, "threads": 1}
                cells.append(Cell(config, num_cpus=1))
    return cells


class VictimInputs:
    """The shared inputs of the cells (``run_sweep``'s ``inputs``): each victim built once
    (loaded from ``--victim-dir``, drawn at random, or trained by one task) and the test and
    reference inputs stored once, all only when a cell that needs them runs."""

    def __init__(self, args: argparse.Namespace, executor: Executor) -> None:
        self.args, self.executor = args, executor
        self.victims: dict[tuple, object] = {}
        self.data: dict[str, object] = {}

    def _loaded(self) -> None:
        if self.data:
            return
        a = self.args
        self.train = load_dataset(a.dataset, "train", progress=False)
        self.test = load_dataset(a.dataset, "test", progress=False)
        reference = None
        if a.reference:
            pick = np.random.default_rng(1).choice(len(self.train.labels), a.reference,
                                                   replace=False)
            reference = self.train.flat()[pick]
        self.data = {"test": self.executor.put(self.test.flat()),
                     "reference": self.executor.put(reference), "no_reference": None}

    def victim(self, c: dict) -> object:
        key = (c["victim"], c["hidden"], c["victim_seed"])
        if key in self.victims:
            return self.victims[key]
        self._loaded()
        a, ex = self.args, self.executor
        if c["victim"] == "random":
            handle = ex.put(ReLUNetwork.random(self.test.flat().shape[1], c["hidden"],
                                               self.train.num_classes, seed=c["victim_seed"]))
        else:
            vc = {"dataset": c["dataset"], "hidden": c["hidden"], "epochs": c["epochs"],
                  "seed": c["victim_seed"]}
            path = victim_path(a.victim_dir, vc)
            if path is not None and path.exists():
                handle = ex.put(ReLUNetwork.load(path))
            else:
                if "train" not in self.data:
                    self.data["train"] = ex.put((
                        self.train.flat(np.float32), self.train.labels, self.test.flat(),
                        self.test.labels, self.train.num_classes))
                handle = ex.defer(train_victim_task, vc, self.data["train"],
                                  str(a.victim_dir) if a.victim_dir else None, a.threads)
        self.victims[key] = handle
        return handle

    def __call__(self, c: dict) -> tuple:
        self._loaded()
        reference = self.data["reference"] if c["reference"] else None
        return self.victim(c), self.data["test"], reference


def markdown(rows: list[dict]) -> str:
    head = ("| victim | mode | domain | h | units crossing the box (min) | units found (min) | "
            "parameters | runs | queries (median) | log2 q | q/(d·h) | "
            "fidelity test | fidelity uniform | max \\|w err\\| | mean \\|w err\\| | mean bits | "
            "worst-unit bits | seconds (median) |\n|" + "---|" * 18)
    lines = [head]
    keys = sorted({(r["victim"], r["mode"], r.get("domain", "unbounded"), r["hidden"])
                   for r in rows}, key=lambda k: (k[0], k[1], k[2], k[3]))
    for victim, mode, domain, h in keys:
        rs = [r for r in rows if (r["victim"], r["mode"], r.get("domain", "unbounded"),
                                  r["hidden"]) == (victim, mode, domain, h)]
        fid_t = [r["fidelity_test"] for r in rs if r["fidelity_test"] is not None]
        lines.append(
            f"| {victim} | {mode} | {domain} | {h} | "
            f"{min(r.get('units_crossing_box', h) for r in rs)} | "
            f"{min(r['hidden_extracted'] for r in rs)} | {rs[0]['parameters']:,} | {len(rs)} | "
            f"{statistics.median(r['queries'] for r in rs):,.0f} | "
            f"{statistics.median(r['log2_queries'] for r in rs):.2f} | "
            f"{statistics.median(r['queries_per_dh'] for r in rs):.2f} | "
            + (f"{100 * min(fid_t):.2f}% (min) | " if fid_t else "- | ")
            + f"{100 * min(r['fidelity_uniform'] for r in rs):.2f}% (min) | "
            f"{max(r['max_abs_weight_error'] for r in rs):.1e} | "
            f"{statistics.median(r['mean_abs_weight_error'] for r in rs):.1e} | "
            f"{min(r['mean_bits'] for r in rs):.1f} (min) | "
            f"{min(r['worst_unit_bits'] for r in rs):.1f} (min) | "
            f"{statistics.median(r['seconds'] for r in rs):.2f} |"
        )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="digits, h = 16 and 32, under a minute")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512])
    p.add_argument("--victims", type=int, default=5, help="trained victims per size")
    p.add_argument("--random-victims", type=int, default=1, help="random victims per size")
    p.add_argument("--modes", nargs="+", default=["default"], choices=["default", "paper"])
    p.add_argument("--domains", nargs="+", default=["box"], choices=["box", "unbounded"],
                   help="default mode: queries kept in [0, 1]^d (box) or anywhere (unbounded)")
    p.add_argument("--reference", type=int, default=1000,
                   help="box domain: training inputs given to the attacker as reference inputs "
                        "(unlabelled; 0 for none)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for training victims (1 is fastest on a shared CPU)")
    p.add_argument("--victim-dir", type=Path, default=None,
                   help="keep trained victims here (safetensors) and reuse them on later runs")
    p.add_argument("--json", type=Path, default=None, help="write rows here")
    p.add_argument("--markdown", type=Path, default=None, help="write the table here")
    add_sweep_options(p)
    return p


def print_row(record) -> None:
    """One line of JSON per finished cell (the failed ones: their error)."""
    if record.status != "ok":
        print(json.dumps({"failed": record.config, "error": record.error}), flush=True)
        return
    row = record.result
    print(json.dumps({k: row[k] for k in ("victim", "mode", "domain", "hidden",
                                         "hidden_extracted", "queries", "fidelity_test",
                                         "fidelity_uniform", "mean_bits", "worst_unit_bits",
                                         "seconds")}), flush=True)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.dataset, args.sizes, args.victims, args.random_victims = "digits", [16, 32], 2, 1
        args.modes = ["default", "paper"]
        args.domains = ["box", "unbounded"]

    torch.set_num_threads(args.threads)
    cells = table_cells(args)
    with make_executor(args.ray, num_cpus=args.ray_cpus) as executor:
        sweep = run_sweep(extract_cell, cells, executor=executor,
                          store=cells_dir(args.json, args.cells), fresh=args.fresh,
                          inputs=VictimInputs(args, executor), on_record=print_row)
    rows = sweep.results()
    table = markdown(rows) + failures_markdown(sweep)
    print(table)
    meta = {"machine": platform.platform(), "python": platform.python_version(),
            "dataset": args.dataset, "quick": args.quick,
            "sweep": sweep_summary(sweep, args.ray)}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "rows": rows,
                                         "cells": [r.summary() for r in sweep.records]},
                                        indent=2))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
