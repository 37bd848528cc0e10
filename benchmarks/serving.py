"""What serving costs an attack: rows per second in process and over HTTP, and network share.

Usage::

    python benchmarks/serving.py                                  # full run (a few minutes)
    python benchmarks/serving.py --quick --json results/serving-quick.json     # < 1 minute
    python benchmarks/serving.py --load --json results/serving-load.json       # ~2 minutes

Measures, on this machine, with the server (``model_extraction.serving``) in a background
thread on 127.0.0.1:

* ``throughput``: rows per second of a victim's oracle, in process (``ModelOracle``), over
  HTTP with batching (``RemoteOracle``, many rows per request), and over HTTP one row per
  request; medians over repeats (``time.perf_counter``).
* ``fe_over_http``: functionally-equivalent extraction (§6) of a digits victim through the
  server: fidelity, queries (and the same attack's queries in process), wall time, and the
  share of the attack's time spent waiting on the network.
* ``--load`` (only this): ``model-extraction serve`` in its own process (with an audit log),
  then (1) sustained throughput and p50/p99 latency of 8 concurrent clients sending 64-row
  requests, (2) the latency of 1-row requests on an idle server, and (3) the latency of the
  same 1-row requests while another process sends one request of 200,000 rows (three times).
  The server, the big client and the small clients are separate processes, so no client's
  work holds the server's interpreter lock. ``--server-pythonpath`` serves another checkout
  (a "before" measurement with the same command).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydantic_core

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


# ----------------------------------------------------------------------------- load
LOAD_DIMS = (10, 64, 10)
"""The load victim: 10 inputs, 64 hidden units, 10 classes (a 200,000-row request is 39 MB)."""

BIG_CLIENT = """
import sys, time, httpx, numpy as np, pydantic_core
url, rows, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
x = np.random.default_rng(1).uniform(-1, 1, (rows, d))
body = pydantic_core.to_json({"inputs": [{"name": "input", "datatype": "FP64",
                                         "shape": [rows, d], "data": x.ravel().tolist()}]})
with httpx.Client(timeout=600) as client:
    for _ in range(int(sys.argv[4])):
        print("sending", flush=True)
        start = time.perf_counter()
        resp = client.post(url, content=body, headers={"content-type": "application/json"})
        print("done", resp.status_code, time.perf_counter() - start, flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(victim: Path, log: Path, pythonpath: str | None,
                  max_batch: int) -> tuple[subprocess.Popen[bytes], str]:
    """``model-extraction serve`` in a child process; returns it and its model URL."""
    port = _free_port()
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    cmd = [sys.executable, "-c", "from model_extraction.cli import app; app()", "serve",
           str(victim), "--port", str(port), "--max-batch", str(max_batch),
           "--max-request-bytes", str(256 * 2**20), "--log", str(log)]
    # cwd: not this checkout, whose package would shadow the one on ``pythonpath``
    proc = subprocess.Popen(cmd, env=env, cwd=victim.parent, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                return proc, f"{base}/v2/models/victim/infer"
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the server did not start: {proc.stderr.read().decode()[-2000:]}")


def _body(rows: int, d: int, seed: int) -> bytes:
    x = np.random.default_rng(seed).uniform(-1, 1, (rows, d))
    return pydantic_core.to_json({"inputs": [{"name": "input", "datatype": "FP64",
                                              "shape": [rows, d], "data": x.ravel().tolist()}]})


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"n": len(ms), "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())}


def _post_loop(url: str, bodies: list[bytes], stop: threading.Event,
               latencies: list[float]) -> None:
    """Send the bodies round-robin until ``stop``; record each request's latency (s)."""
    headers = {"content-type": "application/json"}
    with httpx.Client(timeout=60) as client:
        i = 0
        while not stop.is_set():
            start = time.perf_counter()
            resp = client.post(url, content=bodies[i % len(bodies)], headers=headers)
            latencies.append(time.perf_counter() - start)
            if resp.status_code != 200:
                raise RuntimeError(f"{resp.status_code}: {resp.text[:200]}")
            i += 1


def sustained(url: str, d: int, clients: int, rows: int, seconds: float) -> dict[str, Any]:
    """``clients`` threads sending ``rows``-row requests for ``seconds``: rate and latency."""
    bodies = [_body(rows, d, seed) for seed in range(16)]
    stop = threading.Event()
    lat: list[list[float]] = [[] for _ in range(clients)]
    threads = [threading.Thread(target=_post_loop, args=(url, bodies, stop, lat[i]))
               for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    every = [s for part in lat for s in part]
    return {"clients": clients, "rows_per_request": rows, "seconds": wall,
            "requests_per_second": len(every) / wall,
            "rows_per_second": len(every) * rows / wall, **_percentiles(every)}


def small_latency(url: str, d: int, count: int) -> dict[str, Any]:
    """Latency of ``count`` sequential 1-row requests on an otherwise idle server."""
    bodies = [_body(1, d, seed) for seed in range(16)]
    lat: list[float] = []
    headers = {"content-type": "application/json"}
    with httpx.Client(timeout=60) as client:
        for i in range(count):
            start = time.perf_counter()
            client.post(url, content=bodies[i % 16], headers=headers).raise_for_status()
            lat.append(time.perf_counter() - start)
    return _percentiles(lat)


def _read_line(stream: Any, into: list[str]) -> None:
    into.append(stream.readline())


def during_big(url: str, d: int, big_rows: int, repeats: int) -> dict[str, Any]:
    """1-row latency while a child process sends ``repeats`` requests of ``big_rows`` rows."""
    child = subprocess.Popen([sys.executable, "-c", BIG_CLIENT, url, str(big_rows), str(d),
                              str(repeats)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    bodies = [_body(1, d, seed) for seed in range(16)]
    lat: list[float] = []
    big: list[tuple[int, float]] = []
    headers = {"content-type": "application/json"}
    with httpx.Client(timeout=120) as client:
        for _ in range(repeats):
            if child.stdout.readline().strip() != "sending":
                raise RuntimeError("the big client failed")
            done: list[str] = []
            reader = threading.Thread(target=_read_line, args=(child.stdout, done))
            reader.start()
            i = 0
            while not done:
                start = time.perf_counter()
                client.post(url, content=bodies[i % 16], headers=headers).raise_for_status()
                lat.append(time.perf_counter() - start)
                i += 1
            reader.join()
            _, status, seconds = done[0].split()
            big.append((int(status), float(seconds)))
    child.wait()
    return {"big_rows": big_rows, "big_requests": [{"status": s, "seconds": t} for s, t in big],
            **_percentiles(lat)}


def load(pythonpath: str | None, quick: bool) -> dict[str, Any]:
    """The ``--load`` measurements against ``serve`` in a child process."""
    d, hidden, k = LOAD_DIMS
    big_rows = 50_000 if quick else 200_000
    with tempfile.TemporaryDirectory() as tmp:
        victim = Path(tmp) / "victim.safetensors"
        ReLUNetwork.random(d, hidden, k, seed=0).save(victim)
        proc, url = _start_server(victim, Path(tmp) / "audit.sqlite", pythonpath, big_rows)
        try:
            small_latency(url, d, 50)  # warm-up
            out = {"victim": f"{d}-{hidden}-{k}", "server_pythonpath": pythonpath,
                   "sustained_8_clients": sustained(url, d, 8, 64, 5.0 if quick else 15.0),
                   "small_idle": small_latency(url, d, 300 if quick else 1000),
                   "small_during_big": during_big(url, d, big_rows, 2 if quick else 3)}
        finally:
            proc.terminate()
            proc.wait(30)
    idle, busy = out["small_idle"], out["small_during_big"]
    out["p99_during_big_over_idle"] = busy["p99_ms"] / idle["p99_ms"]
    return out


def print_load(r: dict[str, Any]) -> None:
    s, idle, busy = r["sustained_8_clients"], r["small_idle"], r["small_during_big"]
    print(f"load ({r['victim']}): 8 clients x 64 rows: {s['requests_per_second']:,.0f} req/s, "
          f"{s['rows_per_second']:,.0f} rows/s, p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms")
    print(f"1-row idle: p50 {idle['p50_ms']:.2f} ms, p99 {idle['p99_ms']:.2f} ms")
    bigs = ", ".join(f"{b['status']} in {b['seconds']:.2f} s" for b in busy["big_requests"])
    print(f"1-row during {busy['big_rows']:,}-row requests ({bigs}): p50 {busy['p50_ms']:.2f} ms,"
          f" p99 {busy['p99_ms']:.2f} ms, max {busy['max_ms']:.1f} ms "
          f"({r['p99_during_big_over_idle']:.1f}x idle p99)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--load", action="store_true", help="only the load measurements")
    parser.add_argument("--server-pythonpath", default=None,
                        help="PYTHONPATH of the served checkout (--load; default: this one)")
    args = parser.parse_args()
    quick = args.quick
    if args.load:
        results = {"quick": quick, "machine": platform.platform(), "cpus": os.cpu_count(),
                   "python": platform.python_version(),
                   "load": load(args.server_pythonpath, quick)}
        print_load(results["load"])
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2))
        return
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
