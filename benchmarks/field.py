"""Functional extraction against APIs as deployed: an input box, probabilities, odd victims.

Each case is a victim behind an oracle that records every query; the attack runs through the
public API (``extract_functional(oracle, input_dim=, input_bounds=, seed=)``) and the row says
what came back: an error (its type and first line) or a model, with its fidelity on the test
set and on 10,000 uniform inputs of the box, the sign agreement for one output, and how many
queries left the box.

Usage::

    python benchmarks/field.py --json field.json                      # digits cases, ~1 minute
    MODEL_EXTRACTION_DATA=path/to/data python benchmarks/field.py --mnist --reference 1000 \\
        --victim-dir victims
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from model_extraction.attacks.functional import extract_functional
from model_extraction.datasets import load_dataset
from model_extraction.network import ReLUNetwork, decisions
from model_extraction.oracle import LogitDifferenceOracle, ModelOracle
from model_extraction.victims import train_victim


class Recorder:
    """A logit function that counts the rows it is asked for outside ``[lo, hi]^d``."""

    def __init__(self, fn, bounds: tuple[float, float]) -> None:
        self.fn, self.bounds, self.outside, self.rows = fn, bounds, 0, 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        lo, hi = self.bounds
        self.rows += len(x)
        self.outside += int(np.sum(np.any((x < lo) | (x > hi), axis=1)))
        return self.fn(x)


def run_case(name: str, victim, output: str, test_x: np.ndarray | None,
             reference: np.ndarray | None = None, seed: int = 0) -> dict:
    bounds = (0.0, 1.0)
    recorder = Recorder(victim.logits, bounds)
    oracle = ModelOracle(recorder, output=output, input_dim=victim.input_dim)
    if output == "probabilities":
        oracle = LogitDifferenceOracle(oracle)
    row: dict = {"case": name, "output": output, "d": victim.input_dim, "h": victim.hidden,
                 "K": victim.num_outputs, "reference_inputs": 0 if reference is None
                 else len(reference)}
    start = time.perf_counter()
    try:
        options = {} if reference is None else {"reference_inputs": reference}
        result = extract_functional(oracle, input_dim=victim.input_dim, input_bounds=bounds,
                                    seed=seed, **options)
    except Exception as err:  # the row records what a user would see
        row.update(error=f"{type(err).__name__}: {str(err).splitlines()[0][:300]}",
                   queries=recorder.rows)
    else:
        net = result.network
        uniform = np.random.default_rng(seed).uniform(*bounds, (10_000, victim.input_dim))
        row.update(queries=result.queries, hidden_extracted=net.hidden,
                   fidelity_uniform=float(np.mean(decisions(victim.logits(uniform))
                                                  == decisions(net.logits(uniform)))))
        if test_x is not None:
            row["fidelity_test"] = float(np.mean(decisions(victim.logits(test_x))
                                                 == decisions(net.logits(test_x))))
        row["notes"] = list(result.notes)[:5]
    row["seconds"] = time.perf_counter() - start
    row["queries_outside_box"] = recorder.outside
    return row


class NotOneLayer:
    """A victim that is not a one-hidden-layer ReLU network on ``[0, 1]^d``: a random
    30-20-10-3 network (``kind="deep"``), or a 30-12-4 one behind an API that clips its inputs
    to ``[0.25, 0.75]`` (``kind="clipped"``). The attack must refuse it."""

    def __init__(self, kind: str, seed: int = 0) -> None:
        self.kind, self.input_dim, self.hidden = kind, 30, None
        rng = np.random.default_rng(seed)
        self.layers = [(rng.standard_normal((20, 30)) * 0.4, rng.standard_normal(20) * 0.1),
                       (rng.standard_normal((10, 20)) * 0.4, rng.standard_normal(10) * 0.1),
                       (rng.standard_normal((3, 10)), np.zeros(3))]
        self.net = ReLUNetwork.random(30, 12, 4, seed=seed + 1)
        self.num_outputs = 3 if kind == "deep" else 4

    def logits(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "clipped":
            return self.net.logits(np.clip(x, 0.25, 0.75))
        for i, (w, b) in enumerate(self.layers):
            x = x @ w.T + b
            x = np.maximum(x, 0.0) if i < len(self.layers) - 1 else x
        return x


def crelu_victim(seed: int = 0) -> ReLUNetwork:
    """``Linear(64, 8)``, ``cat(relu(z), relu(-z))``, ``Linear(16, 10)``: mirrored unit pairs."""
    base = ReLUNetwork.random(64, 8, 10, seed=seed)
    rng = np.random.default_rng(seed + 1)
    w1 = rng.standard_normal((10, 16)) * 0.5
    return ReLUNetwork(np.concatenate([base.weight0, -base.weight0]),
                       np.concatenate([base.bias0, -base.bias0]), w1, base.bias1,
                       {"kind": "crelu", "seed": seed})


def trained(dataset: str, h: int, seed: int, victim_dir: Path | None,
            reference: int = 0) -> tuple:
    """A trained victim, its test inputs, and ``reference`` training inputs (the attacker's
    unlabelled pool; ``None`` for 0)."""
    train = load_dataset(dataset, "train", progress=False)
    test = load_dataset(dataset, "test", progress=False)
    pool = None
    if reference:
        pick = np.random.default_rng(1).choice(len(train.labels), reference, replace=False)
        pool = train.flat()[pick]
    path = None if victim_dir is None else victim_dir / f"{dataset}-h{h}-e20-seed{seed}.safetensors"
    if path is not None and path.exists():
        return ReLUNetwork.load(path), test.flat(), pool
    net = train_victim(train.flat(np.float32), train.labels, h, num_classes=train.num_classes,
                       epochs=20, seed=seed, x_test=test.flat(), y_test=test.labels,
                       metadata={"dataset": dataset})
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        net.save(path)
    return net, test.flat(), pool


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mnist", action="store_true", help="add trained MNIST victims h = 32, 128")
    p.add_argument("--victim-dir", type=Path, default=None, help="cache trained victims here")
    p.add_argument("--reference", type=int, default=0,
                   help="also run the MNIST cases with this many training images as the "
                        "attacker's reference inputs")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    cases: list[tuple] = []
    for h in (16, 32, 64):
        cases.append((f"digits h={h}", *trained("digits", h, 0, args.victim_dir), "probabilities"))
    cases.append(("crelu 64-16-10", crelu_victim(), None, None, "logits"))
    cases.append(("random 10-30-1", ReLUNetwork.random(10, 30, 1, seed=0), None, None, "logits"))
    cases.append(("digits h=64 logits", *trained("digits", 64, 0, args.victim_dir), "logits"))
    cases.append(("two hidden layers 30-20-10-3", NotOneLayer("deep"), None, None, "logits"))
    cases.append(("inputs clipped to [0.25, 0.75]", NotOneLayer("clipped"), None, None,
                  "logits"))
    if args.mnist:
        for h in (32, 128):
            cases.append((f"mnist h={h}", *trained("mnist", h, 0, args.victim_dir),
                          "probabilities"))
            if args.reference:
                cases.append((f"mnist h={h} + reference",
                              *trained("mnist", h, 0, args.victim_dir, args.reference),
                              "probabilities"))
    rows = []
    for name, net, tx, pool, output in cases:
        row = run_case(name, net, output, tx, pool)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
