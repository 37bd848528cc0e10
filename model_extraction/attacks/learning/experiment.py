"""The experimental setup of §4.2, shared by the ``learn`` command and ``benchmarks/learning.py``.

The paper trains the victim on a dataset's labelled training set and gives the attacker the same
training images without labels as its pool (Table 3); accuracy and fidelity are measured on the
test set. :func:`prepare_victim` trains (or loads) such a victim with this project's training
loop, and :func:`evaluation_split` labels (part of) the test set with it for the evaluation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from model_extraction.datasets import Dataset
from model_extraction.victims import TorchVictim, train_image_victim

from .evaluate import EvaluationSet

__all__ = ["VICTIM_MIN_STEPS", "evaluation_split", "prepare_victim", "victim_epochs"]

VICTIM_MIN_STEPS = 3000
"""Victims train for whole epochs and at least this many Adam steps (batch 64): 4 epochs of
MNIST, 128 of the 1,500 digits."""


def victim_epochs(n: int, batch_size: int = 64, min_steps: int = VICTIM_MIN_STEPS) -> int:
    """Epochs of ``n`` examples needed for at least ``min_steps`` steps (at least 2)."""
    return max(2, math.ceil(min_steps / math.ceil(n / batch_size)))


def prepare_victim(
    train: Dataset,
    test: Dataset | None = None,
    *,
    arch: str = "mlp",
    options: dict[str, int] | None = None,
    epochs: int | None = None,
    lr: float = 2e-3,
    batch_size: int = 64,
    seed: int = 0,
    cache: str | Path | None = None,
    device: str = "cpu",
) -> TorchVictim:
    """Train a victim on ``train`` (Adam, ``epochs`` default :func:`victim_epochs`), or load it
    from ``cache`` if that file exists and was trained the same way (then ``cache`` is
    written after training). The test accuracy goes in the metadata. ``device`` is where it
    trains (not part of the recipe); it is served from the CPU."""
    epochs = epochs if epochs is not None else victim_epochs(len(train), batch_size)
    recipe_options = dict(options or {})
    if arch == "cnn":  # a file cached before SmallCNN had batch norm must not pass for one
        recipe_options.setdefault("batchnorm", 1)
    recipe: dict[str, Any] = {"dataset": train.name, "arch": arch, "options": recipe_options,
                              "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed}
    path = Path(cache) if cache is not None else None
    if path is not None and path.exists():
        victim = TorchVictim.load(path)
        if victim.metadata.get("recipe") == recipe:
            return victim
    x_test = test.to_float() if test is not None else None
    y_test = test.labels if test is not None else None
    victim = train_image_victim(
        train.to_float(), train.labels, arch=arch, num_classes=train.num_classes, epochs=epochs,
        batch_size=batch_size, lr=lr, init_seed=seed, order_seed=seed, x_test=x_test,
        y_test=y_test, options=dict(options or {}),
        metadata={"dataset": train.name, "recipe": recipe}, device=device,
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        victim.save(path)
    return victim


def evaluation_split(
    victim: Any, test: Dataset, size: int | None = None, seed: int = 0
) -> EvaluationSet:
    """The test set (or a seeded random ``size`` of it), with true and victim labels; without
    a ``victim`` (``None``: a remote one, whose labels would be paid queries) true labels only,
    and fidelity is then not measured."""
    idx = np.arange(len(test))
    if size is not None and size < len(test):
        idx = np.sort(np.random.default_rng(seed).choice(len(test), size, replace=False))
    part = test.subset(idx)
    if victim is None:
        return EvaluationSet(part.to_float(), part.labels)
    return EvaluationSet.from_victim(victim, part.to_float(), part.labels)
