"""The rotation loss (§4.1, the "+ Rot" columns of Table 2; S4L, Zhai et al. 2019).

A self-supervised task on the *unlabeled* part of the pool: each image is rotated by a random
multiple of 90° and an auxiliary linear head on the substitute's trunk
(:meth:`~model_extraction.models.Classifier.features`) predicts which. Its cross-entropy is
added, with weight ``weight``, to the supervised cross-entropy on the queried inputs. The loop
mirrors :func:`model_extraction.training.fit` (Adam, the same augmentation, one labelled batch
per step, the same :class:`~.loop.Regularisation`), so "with" and "without rotation" differ only
in the extra loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model_extraction.models import Classifier
from model_extraction.training import Augment, seeded

from .evaluate import EvaluationSet
from .loop import Checkpointer, Progress, Regularisation, Regulariser, cycle_batches
from .query import LabelledQueries
from .supervised import Trained

__all__ = ["ROTATIONS", "RotationHead", "rotate", "train_with_rotation"]

ROTATIONS = 4
"""0°, 90°, 180° and 270°."""


def rotate(x: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    """Rotate image ``i`` of ``(n, C, H, W)`` by ``quarter_turns[i]`` × 90° (square images)."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"the rotation loss needs square images, got {tuple(x.shape[-2:])}")
    stacked = torch.stack([torch.rot90(x, r, dims=(2, 3)) for r in range(ROTATIONS)])
    return stacked[quarter_turns, torch.arange(len(x))]


class RotationHead(nn.Module):
    """A linear layer from the substitute's features to the four rotations."""

    def __init__(self, feature_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(feature_dim, ROTATIONS)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)


def train_with_rotation(
    model: Classifier,
    pool: torch.Tensor,
    labelled: LabelledQueries,
    unlabeled: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    regularisation: Regularisation | None = None,
    weight: float = 1.0,
    seed: int = 0,
    augment: Augment | None = None,
    data: EvaluationSet | None = None,
    eval_every: int = 50,
    progress: Progress | None = None,
    device: str | torch.device = "cpu",
) -> Trained:
    """Supervised cross-entropy on ``pool[labelled.indices]`` plus ``weight`` × the rotation
    loss on a batch of ``pool[unlabeled]`` per step, both through one forward pass of the
    trunk (``pool`` ``(n, C, H, W)``, square images). ``regularisation`` (default
    :class:`~.loop.Regularisation`) as in :func:`.train_supervised`: the weight decay covers
    the rotation head too, the moving average only the substitute (returned). Batches are
    drawn and augmented on the CPU, then moved to ``device``. Raises ``ValueError`` for
    ``steps < 1`` or no unlabeled input."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if len(unlabeled) == 0:
        raise ValueError("the rotation loss needs unlabeled inputs: the whole pool was queried "
                         "(use a budget smaller than the pool, or train without rotation)")
    with seeded(seed):
        head = RotationHead(model.feature_dim)
    model.to(device)
    head.to(device)
    params = [*model.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    regulariser = Regulariser(model, regularisation or Regularisation(), lr,
                              also_decay=head.parameters())
    gen = torch.Generator().manual_seed(seed)
    x_l = pool[torch.as_tensor(labelled.indices)]
    t_l = (torch.as_tensor(labelled.labels) if labelled.hard
           else torch.as_tensor(labelled.targets))
    labelled_batches = cycle_batches(torch.arange(len(x_l)), batch_size, gen)
    unlabeled_batches = cycle_batches(unlabeled, batch_size, gen)
    check = Checkpointer(data, steps, eval_every, progress, device)
    for step in range(1, steps + 1):
        model.train()
        head.train()
        idx = next(labelled_batches)
        xb, ub = x_l[idx], pool[next(unlabeled_batches)]
        if augment is not None:
            xb, ub = augment(xb, gen), augment(ub, gen)
        turns = torch.randint(0, ROTATIONS, (len(ub),), generator=gen)
        features = model.features(torch.cat([xb, rotate(ub, turns)]).to(device))
        supervised = F.cross_entropy(model.classifier(features[: len(xb)]),
                                     t_l[idx].to(device))
        rotation = F.cross_entropy(head(features[len(xb) :]), turns.to(device))
        loss = supervised + weight * rotation
        opt.zero_grad()
        loss.backward()
        opt.step()
        regulariser(step)
        check(step, regulariser.model)
    model.eval()
    result = regulariser.model
    result.eval()
    return Trained(result, check.history, steps)
