"""Black-box extraction of deep ReLU networks: the CRYPTO 2020 shapes and an expansive layer.

Usage::

    python benchmarks/deep.py --json deep.json   # 10-10-10-1, 40-20-10-1, 80-40-20-1, 100-20-40-10
    python benchmarks/deep.py --quick            # one random 10-10-10-1 victim, under a minute
    python benchmarks/deep.py --shapes 10-10-10-1 --seeds 0 1 2 --log   # phases as they go
    MODEL_EXTRACTION_DATA=path/to/data python benchmarks/deep.py --shapes --mnist 32-32 \\
        --reach 40 --max-lines 1024 --victim-dir victims    # a trained 784-32-32-10 victim
    python benchmarks/deep.py --shapes 40-20-1 --attack one-layer   # the one-layer attack
    python benchmarks/deep.py --shapes 40-20-1 --attack deep-phases # no one-layer hypothesis
    python benchmarks/deep.py --box -1 1         # every query inside [-1, 1]^d (an API's box)

Each row: a random victim (He-scaled Gaussian weights), or an MNIST victim trained the paper's
way (Adam, 20 epochs, batch 128; cached in ``--victim-dir``), extracted by
``model_extraction.attacks.functional.extract_deep`` through its float64 logit oracle; queries
(log2), wall time, self-check error, fidelity on 10,000 uniform points of ``[-2, 2]^d`` and the
bits of precision of each hidden layer (worst unit found; a width found below the victim's
means units were not found), measured against the victim afterwards;
an MNIST victim's fidelity is also measured on its 10,000 test images. With ``--box LO HI``
every query stays inside ``[LO, HI]^d`` (``input_bounds=``; MNIST victims also get
``--reference`` training images as ``reference_inputs=``), and the uniform fidelity is
measured on that box.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import platform
import time
from itertools import product
from pathlib import Path

import numpy as np

from model_extraction.attacks.functional import (
    ExtractionError,
    extract_deep,
    extract_functional,
)
from model_extraction.evaluation import compare_networks, layer_precision
from model_extraction.network import ReLUNetwork
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

SHAPES = ["10-10-10-1", "40-20-10-1", "80-40-20-1", "100-20-40-10"]
CHECK_POINTS = inspect.signature(extract_deep).parameters["check_points"].default  # its default
log = logging.getLogger("deep")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shapes", nargs="*", default=SHAPES,
                   help="d-h1-...-hL-K of random victims")
    p.add_argument("--mnist", nargs="*", default=[], help="h1-...-hL of trained MNIST victims")
    p.add_argument("--quick", action="store_true",
                   help="one random 10-10-10-1 victim, seed 0 (a smoke run)")
    p.add_argument("--reach", type=float, default=None, help="how far lines are searched")
    p.add_argument("--max-lines", type=int, default=256,
                   help="lines searched before a victim is refused (extract_deep's max_lines)")
    p.add_argument("--check-points", type=int, default=CHECK_POINTS,
                   help="fresh queries of each self-check (extract_deep's check_points)")
    p.add_argument("--attack", choices=["deep", "deep-phases", "one-layer"], default="deep",
                   help="extract_deep (any depth; it tests the one-hidden-layer hypothesis "
                        "first), its deep phases alone (one_layer=False), or the "
                        "one-hidden-layer attack (extract_functional in the paper's setting, "
                        "its own defaults: --reach and --max-lines do not apply) to compare "
                        "with on d-h-K victims")
    p.add_argument("--box", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="the input box every query stays in (extract_deep's input_bounds)")
    p.add_argument("--reference", type=int, default=0,
                   help="with --box: MNIST training images given as reference_inputs")
    p.add_argument("--victim-dir", type=Path, default=None, help="cache of trained victims")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="victim seeds")
    p.add_argument("--attack-seeds", type=int, nargs="+", default=[0],
                   help="the attack's seed= (which lines are drawn), each victim once each")
    p.add_argument("--json", type=Path, default=None, help="write the rows here")
    p.add_argument("--log", action="store_true",
                   help="print each phase of each extraction as it starts (seconds, queries)")
    add_sweep_options(p)
    return p


def mnist_victim(widths: str, seed: int, cache: Path | None) -> tuple[ReLUNetwork, np.ndarray]:
    """An MNIST victim ``784-h1-h2-10`` trained with Adam (20 epochs, batch 128), and the test
    images; loaded from ``cache`` when trained before."""
    from model_extraction.datasets import load_dataset
    from model_extraction.victims import train_victim

    train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    hidden = tuple(int(h) for h in widths.split("-"))
    path = None if cache is None else cache / f"mnist-{widths}-seed{seed}.safetensors"
    if path is not None and path.exists():
        return ReLUNetwork.load(path), test.flat()
    victim = train_victim(train.flat(np.float32), train.labels, hidden, num_classes=10,
                          epochs=20, seed=seed, x_test=test.flat(), y_test=test.labels)
    if path is not None:
        victim.save(path)
    return victim, test.flat()


def run_one(name: str, victim: ReLUNetwork, seed: int, reach: float | None,
            test: np.ndarray | None = None, max_lines: int = 256,
            check_points: int = CHECK_POINTS, attack: str = "deep", attack_seed: int = 0,
            box: tuple[float, float] | None = None, reference: np.ndarray | None = None) -> dict:
    oracle = ModelOracle(victim)
    started = time.perf_counter()
    row: dict = {"victim": name, "seed": seed, "attack": attack, "attack_seed": attack_seed,
                 "parameters": victim.num_parameters,
                 "test_accuracy": victim.metadata.get("test_accuracy")}

    def phase(phase: str, queries: int, units: int, _: object) -> None:
        log.info("%s seed %d: %7.1f s, %d queries: %s (%d units)", name, seed,
                 time.perf_counter() - started, queries, phase, units)

    bounds = tuple(box) if box is not None else (0.0, 1.0) if test is not None else (-2.0, 2.0)
    try:
        if attack == "one-layer":
            own = {} if check_points == CHECK_POINTS else {"check_points": check_points}
            result = extract_functional(oracle, stay_in_bounds=box is not None,
                                        input_bounds=bounds, reference_inputs=reference,
                                        seed=attack_seed, progress=phase, **own)  # its own check
        else:
            result = extract_deep(oracle, seed=attack_seed, reach=reach, max_lines=max_lines,
                                  check_points=check_points, progress=phase,
                                  one_layer=attack == "deep", input_bounds=box,
                                  reference_inputs=reference)
    except ExtractionError as err:
        return {**row, "error": str(err), "queries": oracle.queries,
                "seconds": time.perf_counter() - started}
    seconds = time.perf_counter() - started
    metrics = compare_networks(victim, result.network, input_bounds=bounds, test_inputs=test)
    bits = ([layer["worst_bits"] for layer in layer_precision(victim, result.network)]
            if victim.depth == result.network.depth else [])
    tested = result.phases.get("one-layer hypothesis")  # refuted: what testing it cost
    return {**row, "queries": result.queries, "log2_queries": float(np.log2(result.queries)),
            "hypothesis_queries": None if tested is None else tested.queries,
            "seconds": seconds, "lines": result.lines,
            "widths": list(result.network.widths), "widths_found": list(result.network.widths),
            "self_check_max_error": result.check["max_error"],
            "fidelity_uniform": metrics["fidelity_uniform"],
            "fidelity_test": metrics.get("fidelity_test"),
            "layer_worst_bits": bits, "min_layer_bits": min(bits) if bits else None,
            "unseen_weights": len(result.network.metadata.get("unseen_weights", [])),
            "guessed_signs": len(result.network.metadata.get("guessed_signs", []))}


def deep_cell(c: dict, victim: ReLUNetwork, test: np.ndarray | None,
              reference: np.ndarray | None = None) -> dict:
    """One extraction: a sweep cell (in-process or a Ray task)."""
    return run_one(c["victim"], victim, c["seed"], c["reach"], test, c.get("max_lines", 256),
                   c.get("check_points", CHECK_POINTS), c.get("attack", "deep"),
                   c.get("attack_seed", 0), c.get("box"), reference)


def _checks(args: argparse.Namespace, attack_seed: int) -> dict:
    """The self-check's size, the attack and its seed in a cell's config, when not the defaults
    (the cells of earlier runs keep their keys)."""
    return ({} if args.check_points == CHECK_POINTS else {"check_points": args.check_points}
            ) | ({} if args.attack == "deep" else {"attack": args.attack}
                 ) | ({} if attack_seed == 0 else {"attack_seed": attack_seed}
                 ) | ({} if args.box is None else {"box": list(args.box)}
                      ) | ({} if not args.reference else {"reference": args.reference})


def _cells(args: argparse.Namespace, executor) -> tuple[list[Cell], dict[str, tuple]]:
    """The cells, and each one's victim and test inputs (random victims are drawn in the cell's
    worker from their seed; MNIST victims are trained or loaded once, here)."""
    cells, inputs = [], {}
    for shape in args.shapes:
        d, *widths, k = (int(s) for s in shape.split("-"))
        for seed, attack_seed in product(args.seeds, args.attack_seeds):
            cell = Cell({"table": "deep", "victim": shape, "seed": seed, "reach": args.reach,
                         "max_lines": args.max_lines, **_checks(args, attack_seed)})
            cells.append(cell)
            inputs[cell.key] = (executor.defer(_random_victim, d, tuple(widths), k, seed), None,
                                None)
    for widths in args.mnist:
        for seed in args.seeds:
            victim, test = mnist_victim(widths, seed, args.victim_dir)
            shared = (executor.put(victim), executor.put(test),
                      executor.put(_reference_images(args.reference, seed)))
            for attack_seed in args.attack_seeds:
                cell = Cell({"table": "deep", "victim": f"MNIST 784-{widths}-10", "seed": seed,
                             "reach": args.reach, "max_lines": args.max_lines,
                             **_checks(args, attack_seed)})
                cells.append(cell)
                inputs[cell.key] = shared
    return cells, inputs


def _reference_images(n: int, seed: int) -> np.ndarray | None:
    """``n`` MNIST training images (drawn with ``seed``) the attacker holds, or ``None``."""
    if not n:
        return None
    from model_extraction.datasets import load_dataset

    train = load_dataset("mnist", "train").flat()
    return train[np.random.default_rng(seed).choice(len(train), n, replace=False)]


def _random_victim(d: int, widths: tuple[int, ...], k: int, seed: int) -> ReLUNetwork:
    return ReLUNetwork.random(d, widths, k, seed=seed)


def _line(r: dict) -> str:
    seed = r["seed"] if not r.get("attack_seed") else f"{r['seed']} (attack {r['attack_seed']})"
    if "error" in r:
        return (f"| {r['victim']} | {seed} | refused after {r['queries']:,} queries: "
                f"{r['error'][:80]} ||||||")
    test = "-" if r["fidelity_test"] is None else f"{100 * r['fidelity_test']:.2f}%"
    bits = ", ".join(f"{b:.1f}" for b in r["layer_worst_bits"]) or "-"
    if r.get("unseen_weights"):  # set to 0: the bits of the last layer show it
        n = r["unseen_weights"]
        bits += f" ({n} last-layer weight{'s' if n > 1 else ''} never seen)"
    if r.get("guessed_signs"):  # statistical: the self-check vouched for the model
        n = r["guessed_signs"]
        bits += f" ({n} sign{'s' if n > 1 else ''} guessed)"
    return (f"| {r['victim']} | {seed} | {r['widths_found']} | 2^{r['log2_queries']:.1f} | "
            f"{r['seconds']:.1f} s | {r['self_check_max_error']:.1e} | "
            f"{100 * r['fidelity_uniform']:.2f}% | {test} | {bits} |")


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.check_points < 1 or args.max_lines < 1:
        parser.error("--check-points and --max-lines must be at least 1")
    if args.box is not None and not args.box[1] > args.box[0]:
        parser.error("--box LO HI needs LO < HI")
    if args.reference and (args.box is None or args.reference < 2):
        parser.error("--reference N needs --box (the images must lie in it) and N >= 2")
    if args.log:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.quick:
        args.shapes, args.mnist, args.seeds, args.attack_seeds = ["10-10-10-1"], [], [0], [0]
    with make_executor(args.ray, num_cpus=args.ray_cpus) as executor:
        cells, inputs = _cells(args, executor)
        sweep = run_sweep(deep_cell, cells, executor=executor,
                          inputs=lambda c: inputs[Cell(c).key],
                          store=cells_dir(args.json, args.cells), fresh=args.fresh)
    rows = [r.result for r in sweep.records if r.status == "ok"]
    own = args.attack == "one-layer" and args.check_points == CHECK_POINTS
    size = "its default number of" if own else f"{args.check_points}"
    where = ("" if args.box is None else f", every query inside [{args.box[0]:g}, "
             f"{args.box[1]:g}]^d" + (f" ({args.reference} reference images)"
                                     if args.reference else ""))
    print(f"{args.attack} attack, self-check on {size} fresh points{where}:\n")
    print("| victim | seed | widths found | queries | wall time | self-check | fidelity "
          "(uniform) | fidelity (test) | worst bits per layer |\n" + "|---" * 9 + "|")
    print("\n".join(_line(r) for r in rows) + failures_markdown(sweep))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": platform.platform(), "rows": rows,
                                         "sweep": sweep_summary(sweep, args.ray)}, indent=2))


if __name__ == "__main__":
    main()
