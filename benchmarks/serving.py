"""What serving costs an attack: rows per second in process and over HTTP, and network share.

Usage::

    python benchmarks/serving.py                                  # full run (a few minutes)
    python benchmarks/serving.py --quick --json results/serving-quick.json     # < 1 minute

Measures, on this machine, with the server (``model_extraction.serving``) in a background
thread on 127.0.0.1:

* ``throughput``: rows per second of a victim's oracle, in process (``ModelOracle``), over
  HTTP with batching (``RemoteOracle``, many rows per request), and over HTTP one row per
  request; medians over repeats (``time.perf_counter``).
* ``fe_over_http``: functionally-equivalent extraction (§6) of a digits victim through the
  server: fidelity, queries (and the same attack's queries in process), wall time, and the
  share of the attack's time spent waiting on the network.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from model_extraction.attacks.functional import extract_functional
from model_extraction.datasets import load_dataset
from model_extraction.evaluation import compare_networks
from model_extraction.network import ReLUNetwork
from model_extraction.oracle import ModelOracle, Oracle
from model_extraction.remote import RemoteOracle
from model_extraction.serving import ServerThread, create_app
from model_extraction.victims import train_victim


def rows_per_second(make: Any, x: np.ndarray, repeats: int) -> float:
    """Median rows/s of ``make()(x)`` over ``repeats`` runs (a fresh oracle each time), after
    one untimed warm-up run (BLAS threads, connections, caches)."""
    warm = make()
    warm(x)
    if isinstance(warm, RemoteOracle):
        warm.close()
    rates = []
    for _ in range(repeats):
        oracle: Oracle = make()
        start = time.perf_counter()
        oracle(x)
        rates.append(len(x) / (time.perf_counter() - start))
        if isinstance(oracle, RemoteOracle):
            oracle.close()
    return statistics.median(rates)


def throughput(victim: ReLUNetwork, rows: int, single_rows: int, batch: int,
               concurrency: int, repeats: int) -> list[dict[str, Any]]:
    x = np.random.default_rng(0).uniform(0, 1, (rows, victim.input_dim))
    out = [{"mode": "in-process", "rows": rows,
            "rows_per_second": rows_per_second(lambda: ModelOracle(victim), x, repeats)}]
    with ServerThread(create_app(victim)) as server:
        url = f"{server.url}/v2/models/victim"
        out.append({"mode": "http-batched", "rows": rows, "batch_size": batch,
                    "concurrency": concurrency, "rows_per_second": rows_per_second(
                        lambda: RemoteOracle(url, batch_size=batch, concurrency=concurrency),
                        x, repeats)})
        out.append({"mode": "http-single", "rows": single_rows, "batch_size": 1,
                    "concurrency": concurrency, "rows_per_second": rows_per_second(
                        lambda: RemoteOracle(url, batch_size=1, concurrency=concurrency),
                        x[:single_rows], repeats)})
    for r in out:
        r["victim"] = f"{victim.input_dim}-{victim.hidden}-{victim.num_outputs}"
    return out


def fe_over_http(victim: ReLUNetwork, test_x: np.ndarray, repeats: int) -> dict[str, Any]:
    in_process = extract_functional(ModelOracle(victim), seed=0)
    runs = []
    with ServerThread(create_app(victim)) as server:
        for _ in range(repeats):
            with RemoteOracle(f"{server.url}/v2/models/victim") as oracle:
                start = time.perf_counter()
                result = extract_functional(oracle, seed=0)
                seconds = time.perf_counter() - start
            runs.append((seconds, oracle.network_seconds, oracle.requests, result))
    seconds, network, requests, result = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
    metrics = compare_networks(victim, result.network, test_inputs=test_x, seed=0)
    return {
        "victim": f"digits {victim.input_dim}-{victim.hidden}-{victim.num_outputs}",
        "fidelity": metrics["fidelity_test"],
        "fidelity_uniform": metrics["fidelity_uniform"],
        "queries": result.queries,
        "queries_in_process": in_process.queries,
        "requests": requests,
        "seconds": seconds,
        "seconds_in_process": in_process.seconds,
        "network_seconds": network,
        "network_share": network / seconds,
        "repeats": repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    quick = args.quick
    repeats = args.repeats or (3 if quick else 5)

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    digits_victim = train_victim(train.flat(np.float32), train.labels, 16 if quick else 32,
                                 num_classes=train.num_classes, epochs=5 if quick else 20,
                                 seed=0)
    results: dict[str, Any] = {"quick": quick, "machine": platform.platform(),
                               "python": platform.python_version()}
    big = digits_victim if quick else ReLUNetwork.random(784, 128, 10, seed=0)
    results["throughput"] = throughput(
        big, rows=4096 if quick else 20_000, single_rows=200 if quick else 1000,
        batch=1024, concurrency=2, repeats=repeats,
    )
    results["fe_over_http"] = fe_over_http(digits_victim, test.flat(), repeats)

    for r in results["throughput"]:
        print(f"{r['mode']:>13}: {r['rows_per_second']:>12,.0f} rows/s  ({r['victim']})")
    fe = results["fe_over_http"]
    print(f"FE over HTTP ({fe['victim']}): fidelity {100 * fe['fidelity']:.2f}%, "
          f"{fe['queries']:,} queries (in process {fe['queries_in_process']:,}), "
          f"{fe['requests']} requests, {fe['seconds']:.2f} s (in process "
          f"{fe['seconds_in_process']:.2f} s), {100 * fe['network_share']:.0f}% waiting "
          "on the network")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
