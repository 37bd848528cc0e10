"""Reproduce the shape of Tables 2 and 3 of Jagielski et al. (2020): learning-based extraction.

Table 3: fully supervised (FS) vs MixMatch (MM) extraction at 250 / 1000 / 4000 queries,
accuracy / fidelity on the test set (median of the last 20 checkpoints).
Table 2: what the API reveals (full probabilities, top-k probabilities, labels), with and
without the rotation loss, fully supervised, at one budget.

Usage::

    python benchmarks/learning.py --quick --json out.json          # digits, under a minute
    MODEL_EXTRACTION_DATA=../shared/data python benchmarks/learning.py \\
        --datasets mnist fashion-mnist --json results/learning.json \\
        --markdown results/learning.md --plot results/learning.png

For each dataset a victim is trained on the labelled training set (or loaded from
``--victim-dir``); the attacker's pool is the same training images without labels, as in §4.2.
Every row records its seed and wall time; the JSON also records the command and the scale.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from model_extraction.attacks.learning import Augmentation, LearningExtraction, MixMatchConfig
from model_extraction.attacks.learning.augment import FLIP_DATASETS
from model_extraction.attacks.learning.command import arch_options
from model_extraction.attacks.learning.experiment import evaluation_split, prepare_victim
from model_extraction.datasets import load_dataset
from model_extraction.oracle import ModelOracle

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
    p.add_argument("--lambda-u", type=float, default=75.0)
    p.add_argument("--crop-padding", type=int, default=None,
                   help="random-crop padding in pixels (default: the dataset's, see "
                        "model_extraction.attacks.learning.augment.CROP_PADDING)")
    p.add_argument("--arch", default="mlp", help="victim and substitute: mlp, cnn, wrn-28-2")
    p.add_argument("--width", type=int, default=256, help="mlp hidden units / cnn channels")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--victim-seed", type=int, default=0)
    p.add_argument("--victim-dir", type=Path, default=None,
                   help="cache victims here (reused when trained the same way)")
    p.add_argument("--test-size", type=int,
                   help="random test images for the checkpoints (default 2000; 0: all)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--device", default="cpu", help="where to train: cpu, cuda")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    args = p.parse_args(argv)
    for key, value in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, QUICK[key] if args.quick else value)
    if args.width is not None and args.arch not in ("mlp", "cnn"):
        args.width = None
    if args.test_size == 0:
        args.test_size = None
    return args


def run_one(victim: Any, train: Any, test_set: Any, args: argparse.Namespace, *, method: str,
            rotation: bool, output: str, queries: int, seed: int) -> dict[str, Any]:
    """One extraction; a row of the results."""
    oracle = ModelOracle(victim, output=output, k=args.k, budget=queries)
    augment: Any = "auto"
    if args.crop_padding is not None:
        augment = Augmentation(args.crop_padding, flip=train.name in FLIP_DATASETS)
    attack = LearningExtraction(
        method=method, rotation=rotation, arch=args.arch,  # type: ignore[arg-type]
        arch_options=arch_options(args.arch, args.width), steps=args.steps,
        mixmatch=MixMatchConfig(lambda_u=args.lambda_u), seed=seed, device=args.device,
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
        "test_images": len(test_set), "arch": args.arch, "augment": result.config["augment"],
        "lambda_u": args.lambda_u if method == "mixmatch" else None,
        "arch_options": arch_options(args.arch, args.width),
    }


def run_dataset(name: str, args: argparse.Namespace, log: Any) -> list[dict[str, Any]]:
    train = load_dataset(name, "train", data_dir=args.data_dir)
    test = load_dataset(name, "test", data_dir=args.data_dir)
    started = time.perf_counter()
    cache = (args.victim_dir / f"{name}-{args.arch}-{args.width}-seed{args.victim_seed}"
             ".safetensors") if args.victim_dir else None
    victim = prepare_victim(train, test, arch=args.arch,
                            options=arch_options(args.arch, args.width), seed=args.victim_seed,
                            cache=cache)
    log(f"{name}: victim {args.arch} test accuracy {100 * victim.metadata['test_accuracy']:.2f}%"
        f" ({time.perf_counter() - started:.0f} s)")
    test_set = evaluation_split(victim, test, args.test_size, seed=args.victim_seed)
    rows: list[dict[str, Any]] = []
    done: dict[tuple[Any, ...], dict[str, Any]] = {}

    def run(table: str, **spec: Any) -> None:
        key = tuple(sorted(spec.items()))
        if key in done:  # a run both tables need is made once
            done[key]["tables"].append(table)
            return
        row = run_one(victim, train, test_set, args, **spec)
        row["tables"] = [table]
        done[key] = row
        rows.append(row)
        log(f"  table {table} · {row['method']}{' + rot' if row['rotation'] else ''} · "
            f"{row['output']} · {row['queries']} queries · seed {row['seed']}: accuracy "
            f"{100 * row['accuracy']:.2f}%, fidelity {100 * row['fidelity']:.2f}% "
            f"({row['seconds']:.0f} s)")

    for seed in args.seeds:
        if "3" in args.tables:
            for method in args.methods:
                for q in args.budgets:
                    run("3", method=method, rotation=False, output=args.table3_output,
                        queries=q, seed=seed)
        if "2" in args.tables:
            for output in args.table2_outputs:
                for rotation in (False, True):
                    run("2", method="supervised", rotation=rotation, output=output,
                        queries=args.table2_budget, seed=seed)
    return rows


def _cell(rs: list[dict[str, Any]]) -> str:
    if not rs:
        return "-"
    acc = statistics.median(r["accuracy"] for r in rs)
    fid = statistics.median(r["fidelity"] for r in rs)
    return f"{100 * acc:.2f} / {100 * fid:.2f}"


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """Both tables; each cell: accuracy / fidelity (%), median over seeds."""
    names = list(dict.fromkeys(r["dataset"] for r in rows))
    victims = {r["dataset"]: r["victim_accuracy"] for r in rows}
    seeds = len(meta["seeds"])
    lines = []
    t3 = [r for r in rows if "3" in r["tables"]]
    if t3:
        budgets = sorted({r["queries"] for r in t3})
        methods = list(dict.fromkeys(r["method"] for r in t3))
        lines += [f"Table 3 shape: accuracy / fidelity (%) on the test set, median of the last "
                  f"checkpoints, oracle output `{t3[0]['output']}`"
                  + (f", median over {seeds} seeds" if seeds > 1 else "") + ".", "",
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
                  f"fidelity (%), top-1 (with 10 classes top-5 is near 100%).", "",
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


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Accuracy (solid) and fidelity (dashed) against queries, one panel per dataset."""
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
                ys = [100 * statistics.median(r[key] for r in rs if r["queries"] == q)
                      for q in qs]
                ax.plot(qs, ys, style, color=color, label=f"{method} {key}")
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
    for name in args.datasets:
        rows += run_dataset(name, args, log)
    seconds = time.perf_counter() - started
    scale = (f"{args.arch} {arch_options(args.arch, args.width)} victim and substitute, "
             f"{args.steps} steps per run (batch 64; the paper: WRN-28-2, 2^20 steps), "
             f"checkpoints every {max(1, args.steps // 50)} steps, MixMatch lambda_U "
             f"{args.lambda_u}, crop padding "
             f"{args.crop_padding if args.crop_padding is not None else 'per dataset'}, "
             f"{args.test_size or 'all'} test images, seeds {args.seeds}")
    meta = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None
                                                       else sys.argv[1:])]),
        "scale": scale, "seeds": args.seeds, "table2_outputs": args.table2_outputs,
        "victim_seed": args.victim_seed, "k": args.k,
        "steps": args.steps, "threads": args.threads, "seconds": seconds,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip()
        + f", torch {torch.__version__}, {args.threads} thread(s), device {args.device}",
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - seconds)),
    }
    table = markdown(rows, meta)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
