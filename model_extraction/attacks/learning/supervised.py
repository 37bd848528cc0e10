"""Fully supervised extraction (§4, the "FS" rows of Table 3 and the no-rotation columns of
Table 2): train the substitute on the queried inputs alone, with the project's training loop
(:func:`model_extraction.training.fit`), on soft targets when the oracle reveals probabilities
(top-k completed as in :mod:`.query`) and on hard labels otherwise, with the same weight decay
and moving average of the weights as MixMatch (:class:`~.loop.Regularisation`)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from model_extraction.training import Augment, fit

from .evaluate import Checkpoint, EvaluationSet
from .loop import Checkpointer, Progress, Regularisation, Regulariser
from .query import LabelledQueries

__all__ = ["Trained", "train_supervised"]


class Trained(NamedTuple):
    """What a training loop hands back: the model to use (MixMatch: its moving average), the
    checkpoints, and the number of optimizer steps taken."""

    model: nn.Module
    history: list[Checkpoint]
    steps: int


def train_supervised(
    model: nn.Module,
    pool: torch.Tensor,
    labelled: LabelledQueries,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    regularisation: Regularisation | None = None,
    seed: int = 0,
    augment: Augment | None = None,
    data: EvaluationSet | None = None,
    eval_every: int = 50,
    progress: Progress | None = None,
    device: str | torch.device = "cpu",
) -> Trained:
    """Adam on cross-entropy over the labelled inputs ``pool[labelled.indices]`` (``pool``
    ``(n, C, H, W)``), with the regularisers every method gets (``regularisation``, default
    :class:`~.loop.Regularisation`: decoupled weight decay and the moving average of the
    weights, which is evaluated and returned), as MixMatch's fully supervised baselines.

    :func:`~model_extraction.training.fit` trains whole epochs, so the run is rounded up to
    whole passes over the labelled set: at least ``steps`` steps, at most one epoch more.
    Raises ``ValueError`` for ``steps < 1``.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    x = pool[torch.as_tensor(labelled.indices)]
    targets = (torch.as_tensor(labelled.labels) if labelled.hard
               else torch.as_tensor(labelled.targets))
    per_epoch = math.ceil(len(x) / batch_size)
    epochs = math.ceil(steps / per_epoch)
    total = epochs * per_epoch
    check = Checkpointer(data, total, eval_every, progress, device)
    model.to(device)
    regulariser = Regulariser(model, regularisation or Regularisation(), lr)

    def after_step(step: int, _loss: float) -> None:
        regulariser(step)
        check(step, regulariser.model)

    fit(model, x, targets, epochs=epochs, batch_size=batch_size, lr=lr, order_seed=seed,
        augment=augment, device=device, on_step=after_step)
    result = regulariser.model
    result.eval()
    return Trained(result, check.history, total)
