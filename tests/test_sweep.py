"""Sweeps: cell keys, the cell store, failures, resuming, and Ray against in-process.

The Ray tests share one local Ray instance with 2 CPUs (module fixture); one more starts a
real head node as a separate process (``ray start --head --block`` on 127.0.0.1, a free port)
and runs the functional benchmark through ``--ray ADDRESS`` from another process, then stops
that node's process group. They are skipped when Ray is not installed (the ``test`` extra
installs it).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model_extraction.sweep import (
    Cell,
    CellRecord,
    CellStore,
    LocalExecutor,
    RayExecutor,
    cell_key,
    cells_dir,
    make_executor,
    run_sweep,
    scaling,
)

ROOT = Path(__file__).resolve().parents[1]
HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="ray is not installed "
                               "(pip install -e '.[test]' or '.[distributed]')")
SMALL_TABLE = ["--dataset", "digits", "--sizes", "16", "--victims", "1", "--random-victims",
               "1", "--epochs", "3", "--modes", "default", "paper", "--domains", "box",
               "unbounded", "--reference", "200"]
"""A Table 6 of 6 cells (a trained and a random victim, h = 16, three runs each): seconds."""
COMPARED = ("queries", "fidelity_test", "fidelity_uniform", "max_abs_weight_error",
            "mean_abs_weight_error", "mean_bits", "worst_unit_bits", "hidden_extracted",
            "wrong_signs", "victim_test_accuracy")


def square(config: dict, offset: int = 0) -> dict:
    """A cell: ``x * x + offset``; raises for ``x == 3``; notes each attempt in ``log``."""
    if config.get("log"):
        with open(config["log"], "a", encoding="utf-8") as f:
            f.write(f"{config['x']}\n")
    if config["x"] == 3:
        raise ValueError("three is refused")
    return {"x": config["x"], "y": config["x"] ** 2 + offset}


class Stop(Exception):
    pass


def cells(n: int, log: Path | None = None) -> list[Cell]:
    return [Cell({"x": x, "log": str(log) if log else None}) for x in range(n)]


def attempts(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def load_benchmark(name: str):
    """``benchmarks/NAME.py`` as a module registered in ``sys.modules`` (Ray sends its
    functions by value)."""
    module_name = f"bench_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def rows_by_cell(path: Path) -> dict[tuple, dict]:
    rows = json.loads(path.read_text())["rows"]
    return {(r["victim"], r["victim_seed"], r["hidden"], r["mode"], r["domain"]): r
            for r in rows}


# -- without Ray ---------------------------------------------------------------------------


def test_cell_key_depends_on_content_not_order() -> None:
    assert cell_key({"a": 1, "b": [1, 2]}) == cell_key({"b": [1, 2], "a": 1})
    assert cell_key({"a": 1}) != cell_key({"a": 2})
    assert cell_key({"a": 1}) != cell_key({"a": 1.5})
    assert len(cell_key({})) == 16
    with pytest.raises(ValueError):
        cell_key({"a": float("nan")})


def test_store_keeps_finished_cells_only(tmp_path: Path) -> None:
    store = CellStore(tmp_path / "cells")
    ok = CellRecord(cell_key({"x": 1}), {"x": 1}, "ok", result={"y": 0.1 + 0.2})
    bad = CellRecord(cell_key({"x": 2}), {"x": 2}, "failed", error="ValueError: no")
    store.save(ok)
    store.save(bad)
    assert store.load(ok.key).result == {"y": 0.1 + 0.2}  # floats round-trip exactly
    assert store.load(bad.key) is None  # a failed cell is tried again
    assert store.load(cell_key({"x": 3})) is None
    assert sorted(p.name for p in store.directory.iterdir()) == sorted(
        [f"{ok.key}.json", f"{bad.key}.json"])  # no temporary file left behind
    store.path(ok.key).write_text('{"key": "trunc')  # a damaged file counts as missing
    assert store.load(ok.key) is None


def test_cells_dir_from_json_or_explicit(tmp_path: Path) -> None:
    assert cells_dir(tmp_path / "a.json", None) == tmp_path / "a.cells"
    assert cells_dir(tmp_path / "a.json", tmp_path / "c") == tmp_path / "c"
    assert cells_dir(None, None) is None


def test_failing_cell_is_reported_after_two_attempts_and_others_finish(tmp_path: Path) -> None:
    log = tmp_path / "attempts"
    result = run_sweep(square, cells(5, log), store=tmp_path / "cells", progress=False)
    assert [r.status for r in result.records] == ["ok", "ok", "ok", "failed", "ok"]
    assert result.failed[0].error == "ValueError: three is refused"
    assert attempts(log).count(3) == 2
    assert [r["y"] for r in result.results()] == [0, 1, 4, 16]


def test_interrupted_sweep_reruns_only_missing_cells(tmp_path: Path) -> None:
    log, store = tmp_path / "attempts", tmp_path / "cells"
    todo = [c for c in cells(8, log) if c.config["x"] != 3]
    seen: list[CellRecord] = []

    def stop_after_three(record: CellRecord) -> None:
        seen.append(record)
        if len(seen) == 3:
            raise Stop

    with pytest.raises(Stop):
        run_sweep(square, todo, store=store, progress=False, on_record=stop_after_three)
    first = attempts(log)
    assert len(first) == 3
    result = run_sweep(square, todo, store=store, progress=False)
    rerun = attempts(log)[len(first):]
    assert sorted(rerun) == sorted(c.config["x"] for c in todo if c.config["x"] not in first)
    assert (result.ran, result.reused, len(result.failed)) == (4, 3, 0)
    again = run_sweep(square, todo, store=store, progress=False)
    assert (again.ran, again.reused) == (0, 7)
    assert again.results() == result.results()


def test_deferred_value_is_computed_once_and_only_when_needed() -> None:
    calls: list[int] = []

    def build(n: int) -> int:
        calls.append(n)
        return 10 * n

    ex = LocalExecutor()
    handle = ex.defer(build, 4)
    assert calls == []
    values = ex.map(square, [({"x": 1}, handle), ({"x": 2}, handle)])
    assert values == [{"x": 1, "y": 41}, {"x": 2, "y": 44}] and calls == [4]


def test_map_raises_naming_the_failed_task() -> None:
    with pytest.raises(RuntimeError, match="task 1: ValueError: three is refused"):
        LocalExecutor().map(square, [({"x": 2},), ({"x": 3},)])


def test_scaling_from_cell_costs() -> None:
    rows = scaling([4.0, 3.0, 3.0, 2.0], [1, 2, 8])
    assert [r["greedy_seconds"] for r in rows] == [12.0, 6.0, 4.0]
    assert [r["lower_bound_seconds"] for r in rows] == [12.0, 6.0, 4.0]


def test_ray_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"model-extraction\[distributed\]"):
        make_executor("local")
    assert isinstance(make_executor(None), LocalExecutor)


# -- on Ray ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance with 2 CPUs for the Ray tests of this module."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False,
             logging_level="warning", log_to_driver=False)
    yield ray
    ray.shutdown()


@needs_ray
def test_ray_sweep_equals_in_process_row_for_row(local_ray, tmp_path: Path) -> None:
    bench = load_benchmark("functional")
    bench.main([*SMALL_TABLE, "--json", str(tmp_path / "b.json")])
    bench.main([*SMALL_TABLE, "--ray", "--json", str(tmp_path / "a.json")])
    assert local_ray.is_initialized()  # an instance it did not start is left running
    inproc, onray = rows_by_cell(tmp_path / "b.json"), rows_by_cell(tmp_path / "a.json")
    assert len(inproc) == 6 and inproc.keys() == onray.keys()
    for key, row in inproc.items():
        assert {k: row[k] for k in COMPARED} == {k: onray[key][k] for k in COMPARED}, key
    meta = json.loads((tmp_path / "a.json").read_text())["meta"]["sweep"]
    assert (meta["executor"], meta["ran"], meta["failed"]) == ("ray (local)", 6, 0)
    assert len(list((tmp_path / "a.cells").glob("*.json"))) == 6


@needs_ray
def test_ray_interrupted_sweep_reruns_only_missing_cells(local_ray, tmp_path: Path) -> None:
    store, todo = tmp_path / "cells", [c for c in cells(10) if c.config["x"] != 3]
    seen: list[str] = []

    def stop_after_four(record: CellRecord) -> None:
        seen.append(record.key)
        if len(seen) == 4:
            raise Stop

    with RayExecutor() as ex:
        with pytest.raises(Stop):
            run_sweep(square, todo, executor=ex, store=store, progress=False,
                      on_record=stop_after_four)
        result = run_sweep(square, todo, executor=ex, store=store, progress=False)
    ran_now = {r.key for r in result.records if not r.reused}
    assert (result.ran, result.reused) == (5, 4)
    assert ran_now == {c.key for c in todo} - set(seen)
    assert [r["y"] for r in result.results()] == [c.config["x"] ** 2 for c in todo]


@needs_ray
def test_ray_failing_cell_is_reported_and_the_others_finish(local_ray, tmp_path: Path) -> None:
    log = tmp_path / "attempts"
    with RayExecutor() as ex:
        offset = ex.put(100)
        result = run_sweep(square, cells(5, log), executor=ex, inputs=lambda c: (offset,),
                           progress=False)
    assert [r.status for r in result.records] == ["ok", "ok", "ok", "failed", "ok"]
    assert result.failed[0].error == "ValueError: three is refused"
    assert attempts(log).count(3) == 2  # retried once by Ray, then reported
    assert [r["y"] for r in result.results()] == [100, 101, 104, 116]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_ray
def test_sweep_through_a_running_head_node(tmp_path: Path) -> None:
    """``ray start --head`` as its own process, the benchmark as another, joined by address."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    port = _free_port()
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
         f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        run = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "functional.py"), *SMALL_TABLE,
             "--ray", f"127.0.0.1:{port}", "--json", str(tmp_path / "a.json")],
            env=env, capture_output=True, text=True, timeout=120)
    finally:  # stop the head node: its whole process group, which this test started
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(3)
        except subprocess.TimeoutExpired:  # ray start --block takes ~20 s to stop on SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, signal.SIGKILL)
            head.wait(10)
    assert run.returncode == 0, run.stderr[-3000:]
    meta = json.loads((tmp_path / "a.json").read_text())["meta"]["sweep"]
    assert (meta["executor"], meta["ran"], meta["failed"]) == (f"ray (127.0.0.1:{port})", 6, 0)
    bench = load_benchmark("functional")
    bench.main([*SMALL_TABLE, "--json", str(tmp_path / "b.json")])
    inproc, onray = rows_by_cell(tmp_path / "b.json"), rows_by_cell(tmp_path / "a.json")
    assert {k: [r[c] for c in COMPARED] for k, r in inproc.items()} == {
        k: [r[c] for c in COMPARED] for k, r in onray.items()}


def test_learning_benchmark_is_a_resumable_sweep(tmp_path: Path) -> None:
    """Tables 2-3 run as cells: a rerun of the same command runs none of them again."""
    bench = load_benchmark("learning")
    argv = ["--quick", "--tables", "3", "--methods", "supervised", "--budgets", "25", "50",
            "--steps", "20", "--victim-epochs", "2", "--json", str(tmp_path / "l.json")]
    bench.main(argv)
    first = json.loads((tmp_path / "l.json").read_text())
    bench.main(argv)
    again = json.loads((tmp_path / "l.json").read_text())
    assert [s["ran"] for s in first["meta"]["sweep"]] == [2]
    assert [(s["ran"], s["kept"]) for s in again["meta"]["sweep"]] == [(0, 2)]
    assert again["rows"] == first["rows"]


@needs_ray
def test_deep_extraction_phases_on_ray_equal_in_process(local_ray) -> None:
    """The per-neuron refinement of extract_deep as Ray tasks: the same network, the same
    query count (the tasks' queries are counted by the driver's oracle)."""
    from model_extraction.attacks.functional import extract_deep
    from model_extraction.network import ReLUNetwork
    from model_extraction.oracle import ModelOracle

    victim = ReLUNetwork.random(10, (10, 10), 1, seed=0)
    here = extract_deep(ModelOracle(victim), seed=0)
    with RayExecutor() as ex:
        oracle = ModelOracle(victim)
        there = extract_deep(oracle, seed=0, executor=ex)
    assert there.queries == oracle.queries == here.queries
    for (w, b), (w2, b2) in zip(here.network.layers, there.network.layers, strict=True):
        np.testing.assert_allclose(w2, w, rtol=0, atol=1e-12)
        np.testing.assert_allclose(b2, b, rtol=0, atol=1e-12)
