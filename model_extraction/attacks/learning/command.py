"""What ``model-extraction learn`` does: §4's setup on one dataset, against a local victim or a
remote API, with a progress display and a summary (the typer options are declared in
:mod:`model_extraction.cli.learn`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from model_extraction.datasets import Dataset
from model_extraction.oracle import Oracle

from .evaluate import Checkpoint, EvaluationSet
from .experiment import evaluation_split, prepare_victim
from .extract import LearningExtraction, LearningResult
from .mixmatch import MixMatchConfig, default_lambda_u

__all__ = ["arch_options", "learning_attack", "load_any_victim", "local_victim", "print_summary",
           "report", "run_learn", "test_set"]


def arch_options(arch: str, width: int | None) -> dict[str, int]:
    """``width`` as the option of ``arch``: hidden units of an mlp, channels of a cnn."""
    if width is None:
        return {}
    if arch == "mlp":
        return {"hidden": width}
    if arch == "cnn":
        return {"width": width}
    raise ValueError(f"--width applies to mlp and cnn, not {arch}")


def learning_attack(*, dataset: str, arch: str, width: int | None, method: str,
                    rotation: bool, steps: int, lambda_u: float | None, seed: int,
                    device: str) -> LearningExtraction:
    """The attack the options describe; ``ValueError`` (a missing GPU included) before any
    data is loaded or query sent."""
    return LearningExtraction(
        method=method, rotation=rotation, arch=arch,  # type: ignore[arg-type]
        arch_options=arch_options(arch, width), steps=steps, seed=seed, device=device,
        mixmatch=MixMatchConfig(lambda_u=default_lambda_u(dataset) if lambda_u is None
                                else lambda_u),
    )


def load_any_victim(path: Path) -> Any:
    """A saved victim: an image classifier (:class:`~model_extraction.victims.TorchVictim`) or
    a ReLU network (:class:`~model_extraction.network.ReLUNetwork`)."""
    from safetensors import safe_open

    from model_extraction.network import ReLUNetwork
    from model_extraction.victims import TorchVictim

    with safe_open(str(path), "np") as f:
        relu = "weight0" in f.keys()  # noqa: SIM118 (safe_open is not a mapping)
    return ReLUNetwork.load(path) if relu else TorchVictim.load(path)


def local_victim(train: Dataset, test: Dataset, attack: LearningExtraction, *,
                 path: Path | None, epochs: int | None, console: Console) -> Any:
    """The victim to attack: loaded from ``path``, or trained on ``train`` like the
    substitute's architecture (§4.2)."""
    if path is not None:
        return load_any_victim(path)
    with console.status(f"training a {attack.arch} victim on {train.name}"):
        return prepare_victim(train, test, arch=attack.arch, options=attack.arch_options,
                              epochs=epochs, seed=attack.seed, device=attack.device)


def test_set(victim: Any | None, test: Dataset, size: int | None, seed: int) -> EvaluationSet:
    """(A seeded part of) the test set; the victim's labels too when a copy of it is at hand
    (fidelity is measured only then: labelling the test set through a paid API is not)."""
    return evaluation_split(victim, test, size, seed)


def run_learn(attack: LearningExtraction, oracle: Oracle, pool: Dataset, test: EvaluationSet,
              *, budget: int, progress: bool, console: Console) -> LearningResult:
    """Label ``budget`` pool inputs through ``oracle`` and train the substitute, with a
    progress bar of steps and the last checkpoint's metrics."""
    title = f"{attack.method}{' + rotation' if attack.rotation else ''}"
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[last]}"),
        TimeElapsedColumn(), console=console, disable=not progress, transient=True,
    ) as bar:
        task = bar.add_task(title, total=None, last="")

        def report_step(step: int, total: int, checkpoint: Checkpoint | None) -> None:
            fields: dict[str, Any] = {}
            if checkpoint is not None:
                m = checkpoint.metrics
                fid = "" if m.fidelity is None else f", fidelity {100 * m.fidelity:.1f}%"
                fields["last"] = f"accuracy {100 * m.accuracy:.1f}%{fid}"
            bar.update(task, completed=step, total=total, **fields)

        # A label API does not say how many classes there are: the pool's dataset does.
        return attack.run(oracle, pool, queries=budget, test=test, progress=report_step,
                          num_classes=pool.num_classes)


def report(result: LearningResult, oracle: Oracle, *, dataset: str, victim: dict[str, Any],
           test: EvaluationSet, device: str) -> dict[str, Any]:
    """The JSON report of one run."""
    summary = result.summary()
    summary.pop("history", None)
    return {
        "dataset": dataset, "victim": victim, "attack": summary, "test_images": len(test),
        "device": device, "oracle_queries": oracle.queries,
        "oracle": getattr(oracle, "cost", {"queries": oracle.queries}),
        "history": [c.as_dict() for c in result.history],
    }


def _arch(name: str, options: dict[str, int]) -> str:
    return name + (f" ({', '.join(f'{k}={v}' for k, v in options.items())})" if options else "")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def print_summary(r: dict[str, Any], out: Console) -> None:
    """The report as a table."""
    a, v = r["attack"], r["victim"]
    m, f = a.get("metrics", {}), a.get("final", {})
    t = Table(title="Learning-based extraction (Jagielski et al. 2020, §4)", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    if "url" in v:
        t.add_row("victim", f"{v['url']}" + (" (fidelity against a local copy)"
                                             if v.get("copy") else ""))
    else:
        t.add_row("victim", f"{r['dataset']}, {_arch(v['arch'], v['options'])}, test accuracy "
                  f"{_pct(v['test_accuracy'])}")
    method = a["method"] + (" + rotation loss" if a["rotation"] else "")
    t.add_row("attack", f"{method}, substitute {_arch(a['arch'], a['arch_options'])}, "
              f"{a['steps']:,} steps")
    view = a["output"] + (f" (k = {a['k']})" if a["k"] else "")
    t.add_row("queries", f"{a['queries']:,} ({view}); the oracle counted {r['oracle_queries']:,}")
    last = f"median of the last {min(a['median_of'], a['checkpoints'])} checkpoints"
    t.add_row("accuracy", f"{_pct(m.get('accuracy'))} ({last}; final {_pct(f.get('accuracy'))})")
    if m.get("fidelity") is None:
        t.add_row("fidelity", "not measured: no copy of the victim (--victim)")
    else:
        t.add_row("fidelity", f"{_pct(m.get('fidelity'))} (final {_pct(f.get('fidelity'))})")
    if m.get("top5_accuracy") is not None:
        t.add_row("top-5 accuracy / fidelity",
                  f"{_pct(m['top5_accuracy'])} / {_pct(m['top5_fidelity'])}")
    t.add_row("test images", f"{r['test_images']:,}")
    build = v.get("seconds_to_build")
    what = "setup" if "url" in v else "victim"
    t.add_row("wall time", f"{a['seconds']:.1f} s"
              + ("" if build is None else f" ({what} {build:.1f} s)"))
    out.print(t)
