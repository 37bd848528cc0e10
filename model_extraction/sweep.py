"""Sweeps of independent experiments, in-process or on Ray, resumable cell by cell.

A table of the paper is a *sweep*: one **cell** per combination of its axes (victim × size ×
mode × seed, dataset × method × budget × seed, setting × model). This module runs the cells
of a sweep through an :class:`Executor`:

* :class:`LocalExecutor` runs them one after the other in this process (the default: the
  benchmarks behave as they always did);
* :class:`RayExecutor` submits each cell as a Ray task (``@ray.remote`` with the cell's
  ``num_cpus`` / ``num_gpus``, ``max_retries``, ``ray.wait`` to stream results back) to a
  local Ray instance or to a running cluster (``ray.init(address=...)``). Ray is optional:
  ``pip install 'model-extraction[distributed]'``.

:func:`run_sweep` keys every cell by a stable hash of its configuration (:func:`cell_key`),
keeps each finished cell as one JSON file (:class:`CellStore`, written atomically), and on a
rerun runs only the cells that have no file yet; a cell that raises on both of its attempts is
recorded as failed with its error and the sweep goes on. Values that many cells need (a
trained victim, a dataset) are shared with :meth:`Executor.put` (a value) or
:meth:`Executor.defer` (computed once, by the first cell that needs it locally, by one Ray
task on Ray) instead of being rebuilt per cell.

An attack phase made of independent tasks (the per-neuron work of deep extraction) can use
the same executors without the store: :meth:`Executor.map` returns the results in order and
raises the first error, so the in-process and the Ray runs compute the same thing.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import math
import os
import signal
import sys
import tempfile
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Cell",
    "CellRecord",
    "CellStore",
    "Executor",
    "LocalExecutor",
    "Outcome",
    "RayExecutor",
    "SweepResult",
    "add_sweep_options",
    "cell_key",
    "cells_dir",
    "failures_markdown",
    "make_executor",
    "run_sweep",
    "scaling",
    "sweep_summary",
]

ATTEMPTS = 2
"""How many times a cell is tried before it is reported as failed (Ray: ``max_retries=1``
with ``retry_exceptions=True``, so a worker killed mid-cell is also retried once)."""


def cell_key(config: Mapping[str, Any]) -> str:
    """A stable 16-hex-digit key of a JSON-serialisable configuration.

    The SHA-256 of its canonical JSON (sorted keys, no spaces): equal configurations have
    equal keys in every process and Python version. Raises ``TypeError`` if ``config`` is not
    JSON-serialisable (NaN is refused too: it is not equal to itself).
    """
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Cell:
    """One cell of a sweep: its configuration (JSON-serialisable; what the key hashes) and
    the resources one run of it needs (CPU cores, GPUs; fractions allowed, as in Ray)."""

    config: Mapping[str, Any]
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    @property
    def key(self) -> str:
        return cell_key(self.config)


@dataclass
class CellRecord:
    """What is kept of one cell: ``status`` is ``"ok"`` (``result`` holds the task's value)
    or ``"failed"`` (``error`` holds the last exception, one line, and ``traceback``);
    ``seconds`` is the wall time of the last attempt; ``reused`` tells whether it was read
    back from the store rather than run now."""

    key: str
    config: dict[str, Any]
    status: str
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    seconds: float = 0.0
    reused: bool = False

    def to_json(self) -> dict[str, Any]:
        """The cell's file: everything, the result included."""
        return {**self.summary(), "result": self.result, "traceback": self.traceback}

    def summary(self) -> dict[str, Any]:
        """What a benchmark's JSON keeps of the cell (no result: that is its row): key,
        configuration, status, error, wall seconds of its run, and whether it was kept."""
        return {"key": self.key, "config": self.config, "status": self.status,
                "error": self.error, "seconds": self.seconds, "reused": self.reused}


class CellStore:
    """One JSON file per cell, ``DIRECTORY/KEY.json``.

    Only finished cells count as done (:meth:`load` returns ``None`` for a failed one, so a
    rerun tries it again). Files are written to a temporary file in the same directory and
    renamed over the target (``os.replace``), so a sweep killed mid-write leaves either the
    old file or the new one, never half of one.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def load(self, key: str) -> CellRecord | None:
        """The finished record of ``key``, or ``None`` (absent, failed or unreadable)."""
        try:
            data = json.loads(self.path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if data.get("status") != "ok" or data.get("key") != key:
            return None
        return CellRecord(key=key, config=data["config"], status="ok", result=data["result"],
                          seconds=float(data.get("seconds", 0.0)), reused=True)

    def save(self, record: CellRecord) -> Path:
        """Write ``record`` atomically; returns its path. Raises ``TypeError`` if its result
        is not JSON-serialisable."""
        self.directory.mkdir(parents=True, exist_ok=True)
        text = json.dumps(record.to_json(), indent=1)
        fd, tmp = tempfile.mkstemp(prefix=f".{record.key}.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, self.path(record.key))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return self.path(record.key)


@dataclass
class Outcome:
    """The end of one task: ``index`` into the submitted argument sets, and either ``value``
    (``ok``) or ``error`` (one line) and ``traceback``; ``seconds`` of its last attempt."""

    index: int
    ok: bool
    value: Any = None
    error: str | None = None
    traceback: str | None = None
    seconds: float = 0.0


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``(fn(*args), seconds)``: the task body on either executor."""
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


class _Deferred:
    """A value computed once, when first needed (the local side of :meth:`Executor.defer`)."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn, self.args = fn, args
        self.done, self.value = False, None

    def get(self) -> Any:
        if not self.done:
            self.value = self.fn(*(_resolve(a) for a in self.args))
            self.done, self.fn, self.args = True, None, ()  # type: ignore[assignment]
        return self.value


def _resolve(arg: Any) -> Any:
    return arg.get() if isinstance(arg, _Deferred) else arg


class Executor(ABC):
    """Where independent tasks run. Subclasses: :class:`LocalExecutor`, :class:`RayExecutor`.

    A task is ``fn(*args)`` with ``fn`` a module-level function and ``args`` plain values or
    handles from :meth:`put` / :meth:`defer` given as *top-level* arguments (a handle inside
    a list or dict is not resolved). Use it as a context manager to release what it started.
    """

    slots: int = 1
    """How many one-CPU tasks can run at once (for the progress display)."""

    @abstractmethod
    def put(self, value: Any) -> Any:
        """A handle to ``value`` that tasks receive as the value itself, stored once."""

    @abstractmethod
    def defer(self, fn: Callable[..., Any], *args: Any, num_cpus: float = 1.0,
              num_gpus: float = 0.0) -> Any:
        """A handle to ``fn(*args)``, computed once however many tasks receive it (locally
        when the first of them runs, on Ray as one task started now)."""

    @abstractmethod
    def run(self, fn: Callable[..., Any], argsets: Sequence[tuple[Any, ...]], *,
            num_cpus: float | Sequence[float] = 1.0, num_gpus: float | Sequence[float] = 0.0,
            attempts: int = ATTEMPTS) -> Iterator[Outcome]:
        """Run ``fn(*args)`` for every ``args`` of ``argsets``; yield one :class:`Outcome`
        per task as it finishes (any order). A task that raises is tried up to ``attempts``
        times in all, then yielded as a failed outcome; it never stops the other tasks (on
        Ray a task whose worker died is retried at least once whatever ``attempts``).
        Resources are one value for all tasks or one per task; ``ValueError`` if a sequence
        of them does not have one per task."""

    def map(self, fn: Callable[..., Any], argsets: Sequence[tuple[Any, ...]], *,
            num_cpus: float = 1.0, num_gpus: float = 0.0, attempts: int = 1) -> list[Any]:
        """``[fn(*args) for args in argsets]``, run as tasks; the results in order.

        For an attack phase made of independent pieces. Raises ``RuntimeError`` naming the
        first failed task (by index) and its error once all have finished.
        """
        results: list[Any] = [None] * len(argsets)
        failed: list[Outcome] = []
        for o in self.run(fn, argsets, num_cpus=num_cpus, num_gpus=num_gpus,
                          attempts=attempts):
            if o.ok:
                results[o.index] = o.value
            else:
                failed.append(o)
        if failed:
            first = min(failed, key=lambda o: o.index)
            raise RuntimeError(f"{len(failed)} of {len(argsets)} tasks failed; task "
                               f"{first.index}: {first.error}\n{first.traceback or ''}")
        return results

    def running(self, in_flight: int) -> int:
        """How many of ``in_flight`` submitted tasks are (about) running now."""
        return min(in_flight, self.slots)

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release what this executor started (nothing by default)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _per_task(value: float | Sequence[float], n: int) -> list[float]:
    if isinstance(value, int | float):
        return [float(value)] * n
    values = [float(v) for v in value]
    if len(values) != n:
        raise ValueError(f"expected one resource value per task ({n}), got {len(values)}")
    return values


def _error_line(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1]


class LocalExecutor(Executor):
    """Runs every task in this process, one after the other, in submission order."""

    slots = 1

    def put(self, value: Any) -> Any:
        return value

    def defer(self, fn: Callable[..., Any], *args: Any, num_cpus: float = 1.0,
              num_gpus: float = 0.0) -> Any:
        return _Deferred(fn, args)

    def run(self, fn: Callable[..., Any], argsets: Sequence[tuple[Any, ...]], *,
            num_cpus: float | Sequence[float] = 1.0, num_gpus: float | Sequence[float] = 0.0,
            attempts: int = ATTEMPTS) -> Iterator[Outcome]:
        for value in (num_cpus, num_gpus):  # the same checks as on Ray
            _per_task(value, len(argsets))
        for index, args in enumerate(argsets):
            outcome = Outcome(index, ok=False)
            for _ in range(max(1, attempts)):
                start = time.perf_counter()
                try:
                    value = fn(*(_resolve(a) for a in args))
                except Exception as exc:  # noqa: BLE001 - reported, the sweep goes on
                    outcome = Outcome(index, ok=False, error=_error_line(exc),
                                      traceback=traceback.format_exc(),
                                      seconds=time.perf_counter() - start)
                    continue
                outcome = Outcome(index, ok=True, value=value,
                                  seconds=time.perf_counter() - start)
                break
            yield outcome


def _import_ray() -> Any:
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise ImportError("Ray is not installed: pip install 'model-extraction[distributed]' "
                          "(or run without --ray)") from exc


class RayExecutor(Executor):
    """Runs tasks on Ray: a local instance (``address=None``: this machine's cores, or
    ``num_cpus`` of them) or a running cluster (``address="HOST:PORT"``, ``"auto"`` or
    ``"ray://HOST:PORT"``; see ``ray start --head``).

    If Ray is already initialised in this process it is used as it is and left running;
    otherwise :meth:`close` shuts down the connection (and the local instance) it started.
    Functions of modules other than ``model_extraction`` (a benchmark script, a test) are
    sent by value, so the workers need only this package installed. Raises ``ImportError``
    if Ray is not installed, and what ``ray.init`` raises if the cluster cannot be reached.
    """

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 num_gpus: int | None = None) -> None:
        self.ray = _import_ray()
        self.owned = not self.ray.is_initialized()
        self._on_term = None
        if self.owned:
            options: dict[str, Any] = {"include_dashboard": False}
            if address is None:  # "local": a new instance, never a cluster found by chance
                address = "local"
                options.update(num_cpus=num_cpus, num_gpus=num_gpus)
            self.ray.init(address=address, **options)
            self._on_term = _shutdown_on_sigterm()
        self.slots = max(1, int(self.ray.cluster_resources().get("CPU", 1)))
        self._remote = self.ray.remote(_timed)
        self._registered: set[str] = set()
        self._deferred: dict[Callable[..., Any], Any] = {}

    def _by_value(self, fn: Callable[..., Any]) -> None:
        """Send ``fn``'s module by value unless the workers can import it themselves."""
        name = getattr(fn, "__module__", None) or "__main__"
        if name in self._registered or name == "__main__" or name.startswith(
                ("model_extraction", "numpy", "torch", "ray")):
            return
        module = sys.modules.get(name)
        if module is not None:
            self.ray.cloudpickle.register_pickle_by_value(module)
        self._registered.add(name)

    def put(self, value: Any) -> Any:
        return self.ray.put(value)

    def defer(self, fn: Callable[..., Any], *args: Any, num_cpus: float = 1.0,
              num_gpus: float = 0.0) -> Any:
        self._by_value(fn)
        if fn not in self._deferred:
            self._deferred[fn] = self.ray.remote(fn)
        task = self._deferred[fn].options(num_cpus=num_cpus, num_gpus=num_gpus,
                                          max_retries=ATTEMPTS - 1, retry_exceptions=True)
        return task.remote(*args)

    def run(self, fn: Callable[..., Any], argsets: Sequence[tuple[Any, ...]], *,
            num_cpus: float | Sequence[float] = 1.0, num_gpus: float | Sequence[float] = 0.0,
            attempts: int = ATTEMPTS) -> Iterator[Outcome]:
        self._by_value(fn)
        cpus, gpus = _per_task(num_cpus, len(argsets)), _per_task(num_gpus, len(argsets))
        pending = {}
        for index, args in enumerate(argsets):
            ref = self._remote.options(
                num_cpus=cpus[index], num_gpus=gpus[index], max_retries=max(1, attempts - 1),
                retry_exceptions=attempts > 1, name=f"{getattr(fn, '__name__', 'task')}[{index}]",
            ).remote(fn, *args)
            pending[ref] = index
        # Abandoned (an interrupted sweep), the tasks still pending are left to finish, their
        # results unread; Ray stops them when this driver exits. Cancelling them races with
        # their completion inside Ray and can abort the driver (a RAY_CHECK in its task
        # manager, ray-project/ray#54798; seen here in a test run).
        while pending:
            ready, _ = self.ray.wait(list(pending), num_returns=1)
            for ref in ready:
                yield self._outcome(pending.pop(ref), ref)

    def _outcome(self, index: int, ref: Any) -> Outcome:
        try:
            value, seconds = self.ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - reported, the sweep goes on
            cause = getattr(exc, "cause", None) or exc
            return Outcome(index, ok=False, error=_error_line(cause), traceback=str(exc))
        return Outcome(index, ok=True, value=value, seconds=seconds)

    def close(self) -> None:
        """Shut down the Ray connection (and local instance) this executor started."""
        if self.owned and self.ray.is_initialized():
            self.ray.shutdown()
        if self.owned and self._on_term is not None:
            signal.signal(signal.SIGTERM, self._on_term)
        self.owned = False


def _shutdown_on_sigterm() -> Any:
    """Make SIGTERM raise ``SystemExit`` in the main thread, so that a sweep killed with
    ``kill`` leaves through ``close`` and stops the local Ray instance it started (Ray's
    agents would outlive it otherwise). Returns the previous handler (``None`` off the main
    thread, where nothing is changed)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, stop)


def make_executor(ray: str | None = None, *, num_cpus: int | None = None) -> Executor:
    """The executor a benchmark's ``--ray`` option asks for: ``None`` (option absent) is
    in-process, ``"local"`` (the option without a value) a local Ray instance, anything else
    the address of a running cluster."""
    if ray is None:
        return LocalExecutor()
    return RayExecutor(None if ray == "local" else ray, num_cpus=num_cpus)


@dataclass
class SweepResult:
    """Every cell of a sweep, in the order the cells were given."""

    records: list[CellRecord]
    ran: int = 0
    """Cells run by this call (the others were read back from the store)."""
    seconds: float = 0.0
    store: Path | None = None

    @property
    def failed(self) -> list[CellRecord]:
        return [r for r in self.records if r.status != "ok"]

    @property
    def reused(self) -> int:
        return sum(r.reused for r in self.records)

    def results(self) -> list[Any]:
        """The values of the finished cells, in cell order (failed cells left out)."""
        return [r.result for r in self.records if r.status == "ok"]


@dataclass
class _Progress:
    """The progress display: cells done, running, queued and failed (rich, on stderr)."""

    total: int
    reused: int
    executor: Executor
    enabled: bool = True
    done: int = 0
    failed: int = 0
    bar: Any = field(default=None, repr=False)
    task: Any = field(default=None, repr=False)

    def describe(self, in_flight: int) -> str:
        running = self.executor.running(in_flight)
        return (f"cells: {self.done} done ({self.reused} kept), {running} running, "
                f"{in_flight - running} queued, {self.failed} failed")

    @contextlib.contextmanager
    def show(self) -> Iterator[_Progress]:
        if not self.enabled:
            yield self
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(),
                            console=Console(stderr=True), transient=False)
        with self.bar:
            self.task = self.bar.add_task(self.describe(self.total - self.done),
                                          total=self.total, completed=self.done)
            yield self

    def update(self, in_flight: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, description=self.describe(in_flight))


def run_sweep(fn: Callable[..., Any], cells: Sequence[Cell], *, executor: Executor | None = None,
              store: CellStore | str | os.PathLike[str] | None = None,
              inputs: Callable[[Mapping[str, Any]], tuple[Any, ...]] | None = None,
              fresh: bool = False, progress: bool = True,
              on_record: Callable[[CellRecord], None] | None = None) -> SweepResult:
    """Run ``fn(config, *inputs(config))`` for every cell not finished yet.

    ``fn`` is a module-level function returning a JSON-serialisable value (the cell's result).
    ``inputs(config)`` gives the extra arguments of a cell (handles from ``executor.put`` or
    ``executor.defer``, built only for cells that run: a victim is not trained for a table
    whose cells are all kept). ``store``: keep each finished cell there and read back those
    already finished (``fresh=True`` runs them all again); ``None``: keep nothing.
    ``on_record`` is called with each record as it finishes (in finishing order). Cells with
    the same key are run once. Returns the records in cell order; failed cells are in it with
    their error. Raises ``ValueError`` for a configuration that is not JSON-serialisable.
    """
    start = time.perf_counter()
    executor = executor or LocalExecutor()
    if store is not None and not isinstance(store, CellStore):
        store = CellStore(store)
    unique = list({c.key: c for c in cells}.values())
    records: dict[str, CellRecord] = {}
    if store is not None and not fresh:
        for c in unique:
            kept = store.load(c.key)
            if kept is not None:
                records[c.key] = kept
    todo = [c for c in unique if c.key not in records]
    argsets = [(dict(c.config), *(inputs(c.config) if inputs else ())) for c in todo]
    display = _Progress(len(unique), len(records), executor, enabled=progress)
    display.done = len(records)
    with display.show():
        in_flight = len(todo)
        display.update(in_flight)
        for o in executor.run(fn, argsets, num_cpus=[c.num_cpus for c in todo],
                              num_gpus=[c.num_gpus for c in todo]):
            cell = todo[o.index]
            record = CellRecord(cell.key, dict(cell.config), "ok" if o.ok else "failed",
                                result=o.value, error=o.error, traceback=o.traceback,
                                seconds=o.seconds)
            if store is not None:
                store.save(record)
            records[cell.key] = record
            in_flight -= 1
            display.done += 1
            display.failed += not o.ok
            display.update(in_flight)
            if on_record is not None:
                on_record(record)
    return SweepResult([records[c.key] for c in cells], ran=len(todo),
                       seconds=time.perf_counter() - start,
                       store=store.directory if isinstance(store, CellStore) else None)


def cells_dir(json_path: str | os.PathLike[str] | None,
              explicit: str | os.PathLike[str] | None) -> Path | None:
    """Where a benchmark keeps its cells: ``explicit`` (``--cells DIR``) if given, else next
    to its ``--json`` output (``a.json`` → ``a.cells/``), else nowhere (``None``)."""
    if explicit is not None:
        return Path(explicit)
    if json_path is None:
        return None
    p = Path(json_path)
    return p.with_name(p.stem + ".cells")


def scaling(seconds: Iterable[float], workers: Sequence[int]) -> list[dict[str, float]]:
    """How the wall time of a sweep whose cells take ``seconds`` (one CPU each) scales with
    ``N`` workers, from the measured cell times, not a guess.

    For each ``N``: the total cell time ``T``, the lower bound ``max(T / N, longest cell)``,
    and the makespan of longest-first greedy scheduling (what a queue of independent tasks on
    ``N`` equal workers achieves, within 4/3 of the optimum). Shared setup (training the
    victims) and per-task overhead are not included.
    """
    costs = sorted((float(s) for s in seconds), reverse=True)
    total = math.fsum(costs)
    rows = []
    for n in workers:
        loads = [0.0] * n
        for c in costs:
            i = loads.index(min(loads))
            loads[i] += c
        rows.append({"workers": n, "total_seconds": total,
                     "lower_bound_seconds": max(total / n, costs[0] if costs else 0.0),
                     "greedy_seconds": max(loads) if costs else 0.0})
    return rows


def failures_markdown(sweep: SweepResult) -> str:
    """A Markdown list of the failed cells (configuration and error), or ``""`` if none."""
    if not sweep.failed:
        return ""
    lines = ["", f"**{len(sweep.failed)} failed cell(s)** (rerun the command to retry them):", ""]
    for r in sweep.failed:
        config = ", ".join(f"{k} {v}" for k, v in r.config.items())
        lines.append(f"- {config}: `{r.error}`")
    return "\n".join(lines) + "\n"


def sweep_summary(sweep: SweepResult, ray: str | None = None) -> dict[str, Any]:
    """For a benchmark's JSON ``meta``: where the cells ran, how many there are, were run now,
    kept from an earlier run and failed, the cell directory and the wall seconds."""
    return {"executor": "in-process" if ray is None else f"ray ({ray})",
            "cells": len(sweep.records), "ran": sweep.ran, "kept": sweep.reused,
            "failed": len(sweep.failed), "cells_dir": str(sweep.store) if sweep.store else None,
            "seconds": sweep.seconds}


def add_sweep_options(parser: Any) -> None:
    """Add a benchmark's sweep options to an ``argparse`` parser: ``--ray [ADDRESS]``,
    ``--ray-cpus N``, ``--cells DIR`` and ``--fresh`` (see docs/sweeps.md)."""
    g = parser.add_argument_group("sweep (see docs/sweeps.md)")
    g.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run the cells as Ray tasks: alone, on a local Ray instance; with an "
                        "address (HOST:PORT, auto), on that running cluster")
    g.add_argument("--ray-cpus", type=int, default=None,
                   help="CPUs of the local Ray instance (default: all of this machine's)")
    g.add_argument("--cells", type=Path, default=None,
                   help="keep one JSON per finished cell here (default: next to --json, "
                        "a.json -> a.cells/); a rerun runs only the missing cells")
    g.add_argument("--fresh", action="store_true", help="rerun cells already kept")
