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

from model_extraction.attacks.functional import extract_functional
from model_extraction.datasets import load_dataset
from model_extraction.evaluation import compare_networks
from model_extraction.network import ReLUNetwork
from model_extraction.oracle import ModelOracle
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


def trained_victim(args: argparse.Namespace, train, test, h: int, seed: int) -> ReLUNetwork:
    """The victim ``d → h → K`` trained as the paper does (Adam, batch 128), cached in
    ``--victim-dir`` when given."""
    path = None
    if args.victim_dir is not None:
        path = args.victim_dir / f"{args.dataset}-h{h}-e{args.epochs}-seed{seed}.safetensors"
        if path.exists():
            return ReLUNetwork.load(path)
    victim = train_victim(train.flat(np.float32), train.labels, h,
                          num_classes=train.num_classes, epochs=args.epochs, seed=seed,
                          x_test=test.flat(), y_test=test.labels,
                          metadata={"dataset": args.dataset})
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        victim.save(path)
    return victim


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


def main() -> None:
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
    args = p.parse_args()
    if args.quick:
        args.dataset, args.sizes, args.victims, args.random_victims = "digits", [16, 32], 2, 1
        args.modes = ["default", "paper"]
        args.domains = ["box", "unbounded"]

    torch.set_num_threads(args.threads)
    train = load_dataset(args.dataset, "train", progress=False)
    test = load_dataset(args.dataset, "test", progress=False)
    xte = test.flat()
    reference = None
    if args.reference:
        pick = np.random.default_rng(1).choice(len(train.labels), args.reference, replace=False)
        reference = train.flat()[pick]
    rows: list[dict] = []
    for h in args.sizes:
        victims = [
            trained_victim(args, train, test, h, s) for s in range(args.victims)
        ] + [ReLUNetwork.random(xte.shape[1], h, train.num_classes, seed=100 + s)
             for s in range(args.random_victims)]
        runs = [(m, dom) for m in args.modes for dom in (args.domains if m == "default"
                                                          else ["unbounded"])]
        for v in victims:
            for mode, domain in runs:
                row = run_one(v, xte, mode, seed=0, domain=domain, reference=reference)
                row["dataset"] = args.dataset
                rows.append(row)
                print(json.dumps({k: row[k] for k in ("victim", "mode", "domain", "hidden",
                                                     "hidden_extracted", "queries",
                                                     "fidelity_test", "fidelity_uniform",
                                                     "mean_bits", "worst_unit_bits", "seconds")}),
                      flush=True)
    table = markdown(rows)
    print(table)
    meta = {"machine": platform.platform(), "python": platform.python_version(),
            "dataset": args.dataset, "quick": args.quick}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
