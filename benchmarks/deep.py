"""Black-box extraction of two-hidden-layer ReLU networks: the CRYPTO 2020 shapes.

Usage::

    python benchmarks/deep.py --json deep.json            # 10-10-10-1, 40-20-10-1, 80-40-20-1
    python benchmarks/deep.py --shapes 10-10-10-1 --seeds 0 1 2

Each row: a random victim (He-scaled Gaussian weights) extracted by
``model_extraction.attacks.functional.extract_deep`` through its float64 logit oracle; queries
(log2), wall time, self-check error, fidelity on 10,000 uniform points of ``[-2, 2]^d`` and the
bits of precision of each hidden layer (worst unit), measured against the victim afterwards.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from model_extraction.attacks.functional import ExtractionError, extract_deep
from model_extraction.evaluation import compare_networks
from model_extraction.network import ReLUNetwork
from model_extraction.oracle import ModelOracle

SHAPES = ["10-10-10-1", "40-20-10-1", "80-40-20-1"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=SHAPES, help="d-h1-h2-K of each victim")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="victim seeds")
    p.add_argument("--json", type=Path, default=None, help="write the rows here")
    return p


def run_one(shape: str, seed: int) -> dict:
    d, h1, h2, k = (int(s) for s in shape.split("-"))
    victim = ReLUNetwork.random(d, (h1, h2), k, seed=seed)
    oracle = ModelOracle(victim)
    started = time.perf_counter()
    row: dict = {"shape": shape, "seed": seed, "parameters": victim.num_parameters}
    try:
        result = extract_deep(oracle, seed=0)
    except ExtractionError as err:
        return {**row, "error": str(err), "queries": oracle.queries,
                "seconds": time.perf_counter() - started}
    metrics = compare_networks(victim, result.network, input_bounds=(-2.0, 2.0))
    return {**row, "queries": result.queries, "log2_queries": float(np.log2(result.queries)),
            "seconds": time.perf_counter() - started, "lines": result.lines,
            "widths_found": list(result.network.widths),
            "self_check_max_error": result.check["max_error"],
            "fidelity_uniform": metrics["fidelity_uniform"],
            "layer_worst_bits": [layer["worst_bits"] for layer in metrics.get("layers", [])]}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    rows = []
    print("| victim | seed | widths found | queries | wall time | self-check | fidelity | "
          "worst bits per layer |\n|---|---|---|---|---|---|---|---|")
    for shape in args.shapes:
        for seed in args.seeds:
            r = run_one(shape, seed)
            rows.append(r)
            if "error" in r:
                print(f"| {shape} | {seed} | refused after {r['queries']:,} queries: "
                      f"{r['error'][:80]} |||||")
                continue
            print(f"| {shape} | {seed} | {r['widths_found']} | 2^{r['log2_queries']:.1f} | "
                  f"{r['seconds']:.1f} s | {r['self_check_max_error']:.1e} | "
                  f"{100 * r['fidelity_uniform']:.2f}% | "
                  f"{', '.join(f'{b:.1f}' for b in r['layer_worst_bits'])} |", flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": platform.platform(), "rows": rows},
                                        indent=2))


if __name__ == "__main__":
    main()
