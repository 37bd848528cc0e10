"""What ``model-extraction learn`` does: §4's setup on one dataset, with a progress display and a
summary (the typer options are declared in :mod:`model_extraction.cli`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from model_extraction.datasets import load_dataset
from model_extraction.oracle import ModelOracle
from model_extraction.training import resolve_device
from model_extraction.victims import TorchVictim

from .evaluate import Checkpoint
from .experiment import evaluation_split, prepare_victim
from .extract import LearningExtraction
from .mixmatch import MixMatchConfig, default_lambda_u

__all__ = ["arch_options", "run_learn"]


def arch_options(arch: str, width: int | None) -> dict[str, int]:
    """``width`` as the option of ``arch``: hidden units of an mlp, channels of a cnn."""
    if width is None:
        return {}
    if arch == "mlp":
        return {"hidden": width}
    if arch == "cnn":
        return {"width": width}
    raise ValueError(f"--width applies to mlp and cnn, not {arch}")


def run_learn(
    *,
    dataset: str,
    data_dir: Path | None,
    arch: str,
    width: int | None,
    victim_path: Path | None,
    victim_epochs: int | None,
    output: str,
    k: int,
    budget: int,
    method: str,
    rotation: bool,
    steps: int,
    lambda_u: float | None,
    seed: int,
    test_size: int | None,
    threads: int | None,
    device: str = "cpu",
    save_victim: Path | None,
    save_substitute: Path | None,
    progress: bool,
    console: Console,
    out: Console,
) -> dict[str, Any]:
    """Train (or load) a victim, serve it through an oracle of the chosen output, extract it,
    print a summary and return the report. ``device`` (``cpu``, ``cuda``, ``auto``; see
    :func:`~model_extraction.training.resolve_device`) is where the victim and the substitute
    train. Raises ``ValueError`` (and the oracle's errors) on bad input, a missing GPU
    included, before anything is trained."""
    device = resolve_device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    options = arch_options(arch, width)
    if lambda_u is None:
        lambda_u = default_lambda_u(dataset)
    attack = LearningExtraction(
        method=method, rotation=rotation, arch=arch, arch_options=options,  # type: ignore[arg-type]
        steps=steps, mixmatch=MixMatchConfig(lambda_u=lambda_u), seed=seed, device=device,
    )
    started = time.perf_counter()
    train = load_dataset(dataset, "train", data_dir=data_dir)
    test = load_dataset(dataset, "test", data_dir=data_dir)
    if victim_path is not None:
        victim = TorchVictim.load(victim_path)
    else:
        with console.status(f"training a {arch} victim on {dataset}"):
            victim = prepare_victim(train, test, arch=arch, options=options,
                                    epochs=victim_epochs, seed=seed, device=device)
    if save_victim is not None:
        victim.save(save_victim)
    victim_seconds = time.perf_counter() - started
    test_set = evaluation_split(victim, test, test_size, seed)
    oracle = ModelOracle(victim, output=output, k=k, budget=budget)
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[last]}"),
        TimeElapsedColumn(), console=console, disable=not progress, transient=True,
    ) as bar:
        task = bar.add_task(f"{method}{' + rotation' if rotation else ''}", total=None,
                            last="")

        def report(step: int, total: int, checkpoint: Checkpoint | None) -> None:
            fields: dict[str, Any] = {}
            if checkpoint is not None:
                m = checkpoint.metrics
                fields["last"] = f"accuracy {100 * m.accuracy:.1f}%, fidelity " \
                                 f"{100 * (m.fidelity or 0):.1f}%"
            bar.update(task, completed=step, total=total, **fields)

        result = attack.run(oracle, train, queries=budget, test=test_set, progress=report)
    if save_substitute is not None:
        result.save(save_substitute)
    summary = result.summary()
    summary.pop("history", None)
    report_dict = {
        "dataset": dataset,
        "victim": {"arch": victim.spec["arch"], "options": victim.spec.get("options", {}),
                   "test_accuracy": victim.metadata.get("test_accuracy"),
                   "seconds_to_build": victim_seconds},
        "attack": summary,
        "test_images": len(test_set),
        "device": device,
        "oracle_queries": oracle.queries,
        "history": [c.as_dict() for c in result.history],
    }
    _print_summary(report_dict, out)
    return report_dict


def _arch(name: str, options: dict[str, int]) -> str:
    return name + (f" ({', '.join(f'{k}={v}' for k, v in options.items())})" if options else "")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _print_summary(r: dict[str, Any], out: Console) -> None:
    a, v = r["attack"], r["victim"]
    m, f = a.get("metrics", {}), a.get("final", {})
    t = Table(title="Learning-based extraction (Jagielski et al. 2020, §4)", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("victim", f"{r['dataset']}, {_arch(v['arch'], v['options'])}, test accuracy "
              f"{_pct(v['test_accuracy'])}")
    method = a["method"] + (" + rotation loss" if a["rotation"] else "")
    t.add_row("attack", f"{method}, substitute {_arch(a['arch'], a['arch_options'])}, "
              f"{a['steps']:,} steps")
    view = a["output"] + (f" (k = {a['k']})" if a["k"] else "")
    t.add_row("queries", f"{a['queries']:,} ({view}); the oracle counted {r['oracle_queries']:,}")
    last = f"median of the last {min(a['median_of'], a['checkpoints'])} checkpoints"
    t.add_row("accuracy", f"{_pct(m.get('accuracy'))} ({last}; final {_pct(f.get('accuracy'))})")
    t.add_row("fidelity", f"{_pct(m.get('fidelity'))} (final {_pct(f.get('fidelity'))})")
    if m.get("top5_accuracy") is not None:
        t.add_row("top-5 accuracy / fidelity",
                  f"{_pct(m['top5_accuracy'])} / {_pct(m['top5_fidelity'])}")
    t.add_row("test images", f"{r['test_images']:,}")
    t.add_row("wall time", f"{a['seconds']:.1f} s (victim {v['seconds_to_build']:.1f} s)")
    out.print(t)
