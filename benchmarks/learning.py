"""Reproduce the shape of Tables 2 and 3 of Jagielski et al. (2020): learning-based extraction.

Table 3: fully supervised (FS) vs MixMatch (MM) extraction at 250 / 1000 / 4000 queries,
accuracy / fidelity on the test set (median of the last 20 checkpoints).
Table 2: what the API reveals (full probabilities, top-k probabilities, labels), with and
without the rotation loss, fully supervised, at one budget.

Usage::

    python benchmarks/learning.py --quick --json out.json          # digits, under a minute
    MODEL_EXTRACTION_DATA=path/to/data python benchmarks/learning.py \\
        --datasets mnist fashion-mnist --json results/learning.json \\
        --markdown results/learning.md --plot results/learning.png
    # several seeds: each cell becomes mean ± standard deviation
    ... --datasets mnist fashion-mnist --tables 3 --seeds 0 1 2
    # CIFAR-10 with the small CNN (options take DATASET=VALUE to set one dataset's)
    ... --datasets cifar10 --arch cnn --width 16 --victim-epochs 6 --steps 1200
    # choose a hyper-parameter on training images held out of the pool, not on the test set
    ... --datasets fashion-mnist --tables 3 --methods mixmatch --budgets 250 \\
        --validation 5000 --lambda-u 10
    # choose the augmentation (crop padding x flips) on such a validation split
    ... --datasets mnist --choose-augmentation --seeds 0 1 --json results/aug-mnist.json

For each dataset a victim is trained on the labelled training set (or loaded from
``--victim-dir``); the attacker's pool is the same training images without labels, as in §4.2
(less the ``--validation`` images, if any). Every row records its seed and wall time; the JSON
also records the command, the scale, the victims, and per cell the mean, standard deviation,
min and max over the seeds (``aggregate``).

``--choose-augmentation`` runs Table 3's cells (``--methods``, ``--budgets``: default 1000,
``--seeds``) for every crop padding of ``--crop-candidates`` and flip setting of
``--flip-candidates`` on a validation split (``--validation``, default 5000 training images
held out of the pool, labelled by the evaluator; never the test set), and prints the mean
validation accuracy of each setting and the one chosen: the highest mean over methods, budgets
and seeds (ties: less padding, no flip).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_extraction.attacks.learning import Augmentation, LearningExtraction, MixMatchConfig
from model_extraction.attacks.learning.augment import default_augmentation
from model_extraction.attacks.learning.command import arch_options
from model_extraction.attacks.learning.experiment import evaluation_split, prepare_victim
from model_extraction.attacks.learning.mixmatch import default_lambda_u
from model_extraction.datasets import load_dataset
from model_extraction.oracle import ModelOracle
from model_extraction.sweep import (
    Cell,
    add_sweep_options,
    cells_dir,
    failures_markdown,
    make_executor,
    run_sweep,
    sweep_summary,
)
from model_extraction.training import resolve_device

DEFAULTS = {"datasets": ["mnist", "fashion-mnist"], "budgets": [250, 1000, 4000],
            "table2_budget": 1000, "steps": 5000, "test_size": 2000}
QUICK = {"datasets": ["digits"], "budgets": [25, 100, 400], "table2_budget": 100,
         "steps": 800, "test_size": 0}
"""What ``--quick`` changes (options given explicitly win)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="digits, budgets 25/100/400, 800 steps: under a minute")
    p.add_argument("--datasets", nargs="+", help="default: mnist fashion-mnist")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--budgets", nargs="+", type=int, help="default: 250 1000 4000")
    p.add_argument("--methods", nargs="+", default=["supervised", "mixmatch"])
    p.add_argument("--table3-output", default="label",
                   help="what the oracle reveals in Table 3 (default: labels)")
    p.add_argument("--table2-budget", type=int, help="default: 1000")
    p.add_argument("--table2-outputs", nargs="+", default=["probabilities", "top_k", "label"])
    p.add_argument("--k", type=int, default=5, help="top-k: probabilities revealed (WSL-5)")
    p.add_argument("--tables", nargs="+", default=["3", "2"], choices=["2", "3"])
    p.add_argument("--steps", type=int, help="training steps of every run (default: 5000)")
    p.add_argument("--lambda-u", nargs="+", default=None, metavar="[DATASET=]VALUE",
                   help="MixMatch's unlabeled-loss weight (default: the dataset's, see "
                        "model_extraction.attacks.learning.mixmatch.LAMBDA_U)")
    p.add_argument("--crop-padding", nargs="+", default=None, metavar="[DATASET=]PIXELS",
                   help="random-crop padding in pixels (default: the dataset's, see "
                        "model_extraction.attacks.learning.augment.CROP_PADDING)")
    p.add_argument("--flip", nargs="+", default=None, metavar="[DATASET=]on|off",
                   help="random horizontal flips (default: the dataset's, see "
                        "model_extraction.attacks.learning.augment.FLIP_DATASETS)")
    p.add_argument("--choose-augmentation", action="store_true",
                   help="measure every crop padding x flip setting on a validation split and "
                        "print the best (see the module docstring)")
    p.add_argument("--crop-candidates", nargs="+", type=int, default=[0, 1, 2, 3],
                   help="crop paddings tried by --choose-augmentation")
    p.add_argument("--flip-candidates", nargs="+", default=["off", "on"],
                   choices=["off", "on"], help="flip settings tried by --choose-augmentation")
    p.add_argument("--arch", nargs="+", default=["mlp"], metavar="[DATASET=]ARCH",
                   help="victim and substitute: mlp, cnn, wrn-28-2; DATASET=ARCH sets one "
                        "dataset's (e.g. --arch mlp cifar10=cnn)")
    p.add_argument("--width", nargs="+", default=["256"], metavar="[DATASET=]N",
                   help="mlp hidden units / cnn channels (e.g. --width 256 cifar10=32)")
    p.add_argument("--victim-epochs", nargs="+", default=None, metavar="[DATASET=]N",
                   help="epochs of the victims trained here (default: at least 3000 steps)")
    p.add_argument("--validation", type=int, default=0, metavar="N",
                   help="hold N random training images out of the attacker's pool and measure "
                        "on them instead of the test set (to choose hyper-parameters)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--victim-seed", type=int, default=0)
    p.add_argument("--victim-dir", type=Path, default=None,
                   help="cache victims here (reused when trained the same way)")
    p.add_argument("--test-size", type=int,
                   help="random test images for the checkpoints (default 2000; 0: all)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--device", default="cpu", help="where to train: cpu, cuda, auto")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    add_sweep_options(p)
    args = p.parse_args(argv)
    if args.choose_augmentation:
        args.tables = ["3"]
        args.validation = args.validation or 5000
        args.budgets = args.budgets or [1000]
    for key, value in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, QUICK[key] if args.quick else value)
    if args.test_size == 0:
        args.test_size = None
    try:
        args.device = resolve_device(args.device)
        for key, cast in (("arch", str), ("width", int), ("lambda_u", float),
                          ("crop_padding", int), ("flip", on_off), ("victim_epochs", int)):
            setattr(args, key, per_dataset(getattr(args, key), cast))
    except ValueError as err:
        p.error(str(err))
    return args


def per_dataset(values: list[str] | None, cast: Callable[[str], Any]) -> dict[str | None, Any]:
    """``["256", "cifar10=32"]`` → ``{None: 256, "cifar10": 32}`` (``None``: every other
    dataset); ``None`` → ``{}``."""
    out: dict[str | None, Any] = {}
    for value in values or []:
        name, _, v = value.rpartition("=")
        try:
            out[name or None] = cast(v)
        except ValueError:
            raise ValueError(f"bad value {value!r}: expected [DATASET=]VALUE") from None
    return out


def on_off(value: str) -> bool:
    """``"on"`` → True, ``"off"`` → False; anything else is a ``ValueError``."""
    if value not in ("on", "off"):
        raise ValueError(f"expected on or off, got {value!r}")
    return value == "on"


def setting(args: argparse.Namespace, key: str, dataset: str) -> Any:
    """The value of a per-dataset option for ``dataset`` (``None``: the library's default)."""
    table = getattr(args, key)
    return table.get(dataset, table.get(None))


def dataset_config(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """Architecture, MixMatch weight, crop and victim epochs used for ``name``."""
    arch = setting(args, "arch", name) or "mlp"
    width = setting(args, "width", name) if arch in ("mlp", "cnn") else None
    lambda_u = setting(args, "lambda_u", name)
    return {"arch": arch, "width": width, "arch_options": arch_options(arch, width),
            "lambda_u": lambda_u if lambda_u is not None else default_lambda_u(name),
            "crop_padding": setting(args, "crop_padding", name),
            "flip": setting(args, "flip", name),
            "victim_epochs": setting(args, "victim_epochs", name)}


def augmentation(cfg: dict[str, Any], name: str, shape: tuple[int, ...]) -> Augmentation:
    """The augmentation of a run: the dataset's default, with ``--crop-padding`` / ``--flip``
    where given."""
    default = default_augmentation(shape, name)
    padding = cfg["crop_padding"] if cfg["crop_padding"] is not None else default.padding
    return Augmentation(padding, flip=cfg["flip"] if cfg["flip"] is not None else default.flip)


def run_one(victim: Any, train: Any, test_set: Any, args: argparse.Namespace,
            cfg: dict[str, Any], *, method: str, rotation: bool, output: str, queries: int,
            seed: int) -> dict[str, Any]:
    """One extraction; a row of the results."""
    oracle = ModelOracle(victim, output=output, k=args.k, budget=queries)
    augment = augmentation(cfg, train.name, tuple(victim.input_shape))
    attack = LearningExtraction(
        method=method, rotation=rotation, arch=cfg["arch"],  # type: ignore[arg-type]
        arch_options=cfg["arch_options"], steps=args.steps,
        mixmatch=MixMatchConfig(lambda_u=cfg["lambda_u"]), seed=seed, device=args.device,
        augment=augment,
    )
    result = attack.run(oracle, train, queries=queries, test=test_set)
    assert oracle.queries == queries <= oracle.budget  # the budget is never exceeded
    m, final = result.metrics(), result.final
    assert final is not None
    return {
        "dataset": train.name, "method": method, "rotation": rotation, "output": output,
        "k": args.k if output == "top_k" else None, "queries": queries, "seed": seed,
        "accuracy": m.accuracy, "fidelity": m.fidelity,
        "top5_accuracy": m.top5_accuracy, "top5_fidelity": m.top5_fidelity,
        "final_accuracy": final.accuracy, "final_fidelity": final.fidelity,
        "steps": result.steps, "checkpoints": len(result.history),
        "median_of": min(result.median_of, len(result.history)), "seconds": result.seconds,
        "victim_accuracy": victim.metadata.get("test_accuracy"),
        "evaluated_on": "validation" if args.validation else "test",
        "test_images": len(test_set), "arch": cfg["arch"], "augment": result.config["augment"],
        "crop_padding": augment.padding, "flip": augment.flip,
        "lambda_u": cfg["lambda_u"] if method == "mixmatch" else None,
        "arch_options": cfg["arch_options"],
    }


def run_dataset(name: str, args: argparse.Namespace, log: Any,
                executor: Any) -> list[dict[str, Any]]:
    """Every run of the tables on one dataset, as sweep cells (kept and resumed as
    docs/sweeps.md says); the victim is trained (or loaded) once, here."""
    cfg = dataset_config(args, name)
    train = load_dataset(name, "train", data_dir=args.data_dir)
    test = load_dataset(name, "test", data_dir=args.data_dir)
    started = time.perf_counter()
    options = "-".join(f"{k}{v}" for k, v in cfg["arch_options"].items()) or "default"
    cache = (args.victim_dir / f"{name}-{cfg['arch']}-{options}-seed{args.victim_seed}"
             ".safetensors") if args.victim_dir else None
    victim = prepare_victim(train, test, arch=cfg["arch"], options=cfg["arch_options"],
                            epochs=cfg["victim_epochs"], seed=args.victim_seed, cache=cache,
                            device=args.device)
    log(f"{name}: victim {cfg['arch']} {cfg['arch_options']} test accuracy "
        f"{100 * victim.metadata['test_accuracy']:.2f}% after "
        f"{victim.metadata['recipe']['epochs']} epochs ({time.perf_counter() - started:.0f} s)")
    pool = train
    if args.validation:
        # Hyper-parameters are chosen on images held out of the attacker's pool (never on the
        # test set): the pool loses them, and they are labelled by the evaluator, not queried.
        held = np.random.default_rng(args.victim_seed).permutation(len(train))
        pool, held_out = train.subset(np.sort(held[args.validation:])), train.subset(
            np.sort(held[: args.validation]))
        test_set = evaluation_split(victim, held_out)
        log(f"  {args.validation} training images held out for validation; pool {len(pool)}")
    else:
        test_set = evaluation_split(victim, test, args.test_size, seed=args.victim_seed)
    victim_info = {"dataset": name, "arch": cfg["arch"], "arch_options": cfg["arch_options"],
                   "epochs": victim.metadata["recipe"]["epochs"],
                   "test_accuracy": victim.metadata["test_accuracy"],
                   "lambda_u": cfg["lambda_u"], "crop_padding": cfg["crop_padding"]}
    args.victims.append(victim_info)
    specs: dict[tuple[Any, ...], tuple[dict[str, Any], list[str]]] = {}

    def want(table: str, **spec: Any) -> None:  # a run both tables need is made once
        specs.setdefault(tuple(sorted(spec.items())), (spec, []))[1].append(table)

    for seed in args.seeds:
        if "3" in args.tables:
            for method in args.methods:
                for q in args.budgets:
                    want("3", method=method, rotation=False, output=args.table3_output,
                         queries=q, seed=seed)
        if "2" in args.tables:
            for output in args.table2_outputs:
                for rotation in (False, True):
                    want("2", method="supervised", rotation=rotation, output=output,
                         queries=args.table2_budget, seed=seed)
    base = {"table": "learning", "dataset": name, "victim_seed": args.victim_seed, "cfg": cfg,
            "k": args.k, "steps": args.steps, "device": args.device,
            "validation": args.validation, "test_size": args.test_size, "threads": args.threads}
    gpus = 1.0 if str(args.device).startswith("cuda") else 0.0
    cells = [Cell({**base, "spec": spec}, num_cpus=args.threads, num_gpus=gpus)
             for spec, _ in specs.values()]
    shared: list[Any] = []

    def inputs(_: dict[str, Any]) -> tuple[Any, ...]:
        if not shared:
            shared.extend(executor.put(v) for v in (victim, pool, test_set))
        return tuple(shared)

    sweep = run_sweep(learning_cell, cells, executor=executor, inputs=inputs,
                      store=cells_dir(args.json, args.cells), fresh=args.fresh)
    args.sweeps.append(sweep)
    rows = []
    for (_, tables), record in zip(specs.values(), sweep.records, strict=True):
        if record.status == "ok":
            row = {**record.result, "tables": tables}
            rows.append(row)
            log(f"  table {'/'.join(tables)} · {row['method']}"
                f"{' + rot' if row['rotation'] else ''} · {row['output']} · {row['queries']} "
                f"queries · seed {row['seed']}: accuracy {100 * row['accuracy']:.2f}%, "
                f"fidelity {100 * row['fidelity']:.2f}% ({row['seconds']:.0f} s)")
    return rows


def learning_cell(c: dict[str, Any], victim: Any, pool: Any, test_set: Any) -> dict[str, Any]:
    """One run of Table 2 or 3: a sweep cell (in-process or a Ray task)."""
    torch.set_num_threads(c["threads"])
    a = argparse.Namespace(k=c["k"], steps=c["steps"], device=c["device"],
                           validation=c["validation"])
    return run_one(victim, pool, test_set, a, c["cfg"], **c["spec"])


SPEC_KEYS = ("dataset", "method", "rotation", "output", "queries")
"""What identifies one cell of the tables; the seeds of a cell are aggregated."""


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per cell (:data:`SPEC_KEYS` and the tables it belongs to): for accuracy and
    fidelity the mean, the sample standard deviation over seeds (0 with one seed), min, max
    and the per-seed values."""
    cells: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault(tuple(r[k] for k in SPEC_KEYS), []).append(r)
    out = []
    for key, rs in cells.items():
        entry: dict[str, Any] = dict(zip(SPEC_KEYS, key, strict=True))
        entry["tables"] = sorted({t for r in rs for t in r["tables"]})
        entry["seeds"] = [r["seed"] for r in rs]
        for metric in ("accuracy", "fidelity"):
            values = [r[metric] for r in rs]
            entry[metric] = {"mean": statistics.fmean(values),
                             "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                             "min": min(values), "max": max(values), "values": values}
        out.append(entry)
    return out


def _cell(rs: list[dict[str, Any]]) -> str:
    """``accuracy / fidelity`` in %; over several seeds ``mean ± sample std`` of each."""
    if not rs:
        return "-"
    parts = []
    for metric in ("accuracy", "fidelity"):
        values = [100 * r[metric] for r in rs]
        text = f"{statistics.fmean(values):.2f}"
        if len(values) > 1:
            text += f" ± {statistics.stdev(values):.2f}"
        parts.append(text)
    return " / ".join(parts)


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """Both tables; each cell: accuracy / fidelity (%), one run per seed; over several seeds
    the mean ± the sample standard deviation."""
    names = list(dict.fromkeys(r["dataset"] for r in rows))
    victims = {r["dataset"]: r["victim_accuracy"] for r in rows}
    seeds = len(meta["seeds"])
    where = ("validation split held out of the pool" if rows and rows[0]["evaluated_on"]
             == "validation" else "test set")
    lines = []
    t3 = [r for r in rows if "3" in r["tables"]]
    if t3:
        budgets = sorted({r["queries"] for r in t3})
        methods = list(dict.fromkeys(r["method"] for r in t3))
        lines += [f"Table 3 shape: accuracy / fidelity (%) on the {where}, median of the last "
                  f"checkpoints, oracle output `{t3[0]['output']}`"
                  + (f", mean ± standard deviation over {seeds} seeds" if seeds > 1 else "")
                  + ".", "",
                  "| dataset | victim accuracy | method | "
                  + " | ".join(f"{q} queries" for q in budgets) + " |",
                  "|---|---|---|" + "---|" * len(budgets)]
        for name in names:
            for method in methods:
                cells = [_cell([r for r in t3 if r["dataset"] == name and r["method"] == method
                                and r["queries"] == q]) for q in budgets]
                lines.append(f"| {name} | {100 * victims[name]:.2f} | "
                             f"{'FS' if method == 'supervised' else 'MM'} | "
                             + " | ".join(cells) + " |")
        lines.append("")
    t2 = [r for r in rows if "2" in r["tables"]]
    if t2:
        outputs = [o for o in meta["table2_outputs"] if any(r["output"] == o for r in t2)]
        head = []
        for o in outputs:
            label = f"top-{t2[0]['k'] or meta['k']}" if o == "top_k" else o
            head += [label, f"{label} + Rot"]
        lines += [f"Table 2 shape: fully supervised, {t2[0]['queries']} queries, accuracy / "
                  f"fidelity (%) on the {where}, top-1 (top-5 accuracy and fidelity are in the "
                  "JSON rows: `top5_accuracy`, `top5_fidelity`)"
                  + (f", mean ± standard deviation over {seeds} seeds" if seeds > 1 else "")
                  + ".", "",
                  "| dataset | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
        for name in names:
            cells = [_cell([r for r in t2 if r["dataset"] == name and r["output"] == o
                            and r["rotation"] == rot])
                     for o in outputs for rot in (False, True)]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(f"Scale: {meta['scale']}. Wall time {meta['seconds'] / 60:.1f} min on "
                 f"{meta['machine']}.")
    return "\n".join(lines) + "\n"


def choose_augmentation(rows: list[dict[str, Any]]) -> tuple[str, dict[str, dict[str, Any]]]:
    """For ``--choose-augmentation``: a markdown table of the mean validation accuracy (%) of
    every (crop padding, flip) setting per method and over all its runs, and per dataset the
    setting chosen: the highest mean over methods, budgets and seeds (ties: less padding, no
    flip)."""
    lines, choices = [], {}
    for name in dict.fromkeys(r["dataset"] for r in rows):
        rs = [r for r in rows if r["dataset"] == name]
        methods = list(dict.fromkeys(r["method"] for r in rs))
        settings = sorted({(r["crop_padding"], r["flip"]) for r in rs})
        seeds = sorted({r["seed"] for r in rs})
        budgets = sorted({r["queries"] for r in rs})
        lines += [f"{name}: validation accuracy (%), mean over seeds {seeds} and budgets "
                  f"{budgets}", "", "| crop padding | flip | " + " | ".join(methods)
                  + " | mean |", "|---|---|" + "---|" * (len(methods) + 1)]
        means = {}
        for pad, flip in settings:
            cell = [r for r in rs if (r["crop_padding"], r["flip"]) == (pad, flip)]
            per = [statistics.fmean(100 * r["accuracy"] for r in cell if r["method"] == m)
                   for m in methods]
            means[pad, flip] = statistics.fmean(100 * r["accuracy"] for r in cell)
            lines.append(f"| {pad} | {'on' if flip else 'off'} | "
                         + " | ".join(f"{v:.2f}" for v in per) + f" | {means[pad, flip]:.2f} |")
        best = max(settings, key=lambda st: (round(means[st], 6), -st[0], not st[1]))
        choices[name] = {"crop_padding": best[0], "flip": best[1], "mean": means[best]}
        lines += ["", f"chosen for {name}: crop padding {best[0]}, flip "
                  f"{'on' if best[1] else 'off'} ({means[best]:.2f}%)", ""]
    return "\n".join(lines), choices


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Accuracy (solid) and fidelity (dashed) against queries, one panel per dataset; over
    several seeds the mean, with the standard deviation as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t3 = [r for r in rows if "3" in r["tables"]]
    names = list(dict.fromkeys(r["dataset"] for r in t3))
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for method, color in (("supervised", "tab:blue"), ("mixmatch", "tab:red")):
            rs = [r for r in t3 if r["dataset"] == name and r["method"] == method]
            qs = sorted({r["queries"] for r in rs})
            if not qs:
                continue
            for key, style in (("accuracy", "-o"), ("fidelity", "--s")):
                per_q = [[100 * r[key] for r in rs if r["queries"] == q] for q in qs]
                ys = [statistics.fmean(v) for v in per_q]
                err = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in per_q]
                ax.errorbar(qs, ys, yerr=err, fmt=style, color=color, capsize=3,
                            label=f"{method} {key}")
        victim = next(r["victim_accuracy"] for r in t3 if r["dataset"] == name)
        ax.axhline(100 * victim, color="gray", lw=0.8, ls=":", label="victim accuracy")
        budgets = sorted({r["queries"] for r in t3 if r["dataset"] == name})
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(budgets, [str(q) for q in budgets])
        ax.set_xlabel("queries")
        ax.set_ylabel("%")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {message}", flush=True)

    rows: list[dict[str, Any]] = []
    args.victims, args.sweeps = [], []
    with make_executor(args.ray, num_cpus=args.ray_cpus) as executor:
        for name in args.datasets:
            if not args.choose_augmentation:
                rows += run_dataset(name, args, log, executor)
                continue
            for padding in args.crop_candidates:
                for flip in args.flip_candidates:
                    args.crop_padding, args.flip = {name: padding}, {name: flip == "on"}
                    log(f"{name}: crop padding {padding}, flip {flip}")
                    rows += run_dataset(name, args, log, executor)
    seconds = time.perf_counter() - started
    setups = "; ".join(
        f"{v['dataset']}: {v['arch']} {v['arch_options']} victim ({v['epochs']} epochs) and "
        f"substitute, MixMatch lambda_U {v['lambda_u']}, crop padding "
        f"{v['crop_padding'] if v['crop_padding'] is not None else 'the dataset default'}"
        for v in args.victims)
    evaluated = (f"{args.validation} training images held out of the pool (validation)"
                 if args.validation else f"{args.test_size or 'all'} test images")
    scale = (f"{setups}; {args.steps} steps per run (batch 64; the paper: WRN-28-2, 2^20 "
             f"steps), checkpoints every {max(1, args.steps // 50)} steps, {evaluated}, "
             f"seeds {args.seeds}")
    meta = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None
                                                       else sys.argv[1:])]),
        "scale": scale, "seeds": args.seeds, "table2_outputs": args.table2_outputs,
        "victim_seed": args.victim_seed, "k": args.k, "victims": args.victims,
        "validation": args.validation, "steps": args.steps, "threads": args.threads,
        "seconds": seconds,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip()
        + f", torch {torch.__version__}, {args.threads} thread(s), device {args.device}",
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - seconds)),
        "sweep": [sweep_summary(sweep, args.ray) for sweep in args.sweeps],
    }
    table = markdown(rows, meta) + "".join(failures_markdown(sweep) for sweep in args.sweeps)
    if args.choose_augmentation:
        text, meta["augmentation_choice"] = choose_augmentation(rows)
        table = text + "\n" + f"Scale: {meta['scale']}. Wall time {seconds / 60:.1f} min on " \
                                f"{meta['machine']}.\n"
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "aggregate": aggregate(rows),
                                         "rows": rows}, indent=2))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
