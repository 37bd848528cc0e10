"""MixMatch extraction (§4.2, the "MM" rows of Table 3; Berthelot et al., NeurIPS 2019).

The queried inputs are the labelled set and the rest of the pool is unlabeled. Each step
(MixMatch, Algorithm 1):

1. augment the labelled batch once and each unlabeled image ``K`` times (``K = 2``);
2. guess a label for each unlabeled image: the mean of the model's softmax over its ``K``
   augmentations, sharpened with temperature ``T = 0.5`` (``p^(1/T)``, renormalised);
3. MixUp every example with a random other one of the combined batch, with its own
   ``λ ~ Beta(α, α)`` (one draw per example, as MixMatch's reference implementation), ``α =
   0.75``, and ``λ' = max(λ, 1 − λ)`` so each mixed example stays closer to its own first
   argument;
4. loss = cross-entropy on the mixed labelled part + ``λ_U`` × mean squared error between the
   softmax and the mixed guessed labels on the unlabeled part, with ``λ_U`` ramped up linearly
   from 0 (MixMatch: 75 on CIFAR-10, 250 on SVHN).

Adam, decoupled weight decay on the weight matrices (``w ← w·(1 − wd·lr)`` after each step, as
the reference implementation), and an exponential moving average of the weights that is the
model evaluated and returned: the :class:`~.loop.Regularisation` every method of §4 gets. The
whole mixed batch goes through the network in one forward pass, so batch-norm statistics see
labelled and unlabeled data together (what MixMatch's "interleave" achieves across its split
batches). The guessing pass runs in training mode (batch statistics) but leaves the running
statistics alone, as the reference implementation does (:func:`frozen_batchnorm_statistics`),
so they follow only the batches the loss is computed on. The moving average covers the
batch-norm running statistics too (:func:`~.loop.update_ema`), and every checkpoint evaluates
it in eval mode (running statistics, no update), as :func:`~model_extraction.training.predict`
does.

This project's runs are far shorter than MixMatch's 2^20 steps, so the moving average uses the
usual warm-up ``decay_t = min(decay, (1 + t) / (10 + t))`` (:class:`~.loop.Regulariser`) and the
ramp-up is a fraction of the run rather than MixMatch's fixed 16,000 steps. With so short a
ramp-up MixMatch's own λ_U = 75 collapses on CIFAR-10 at this project's CPU scale, so its λ_U
was chosen anew on a validation split (:data:`LAMBDA_U`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model_extraction.training import Augment

from .evaluate import EvaluationSet
from .loop import Checkpointer, Progress, Regularisation, Regulariser, cycle_batches, update_ema
from .query import LabelledQueries
from .supervised import Trained

__all__ = [
    "LAMBDA_U",
    "MixMatchConfig",
    "default_lambda_u",
    "frozen_batchnorm_statistics",
    "mixup",
    "sharpen",
    "train_mixmatch",
    "update_ema",
]

LAMBDA_U: dict[str, float] = {"cifar10": 10.0, "svhn": 250.0, "fashion-mnist": 10.0}
"""The unlabeled-loss weight ``λ_U`` per dataset, as MixMatch tunes it per dataset (Berthelot
et al. 2019, §4: 75 on CIFAR-10, 250 on SVHN, the values §4.2 of the paper uses); other
datasets get :data:`DEFAULT_LAMBDA_U`.

CIFAR-10's 10 is for this project's short runs (a ramp-up over a fraction of the run), chosen
on a validation split, never on the test set; for the paper's scale (2^20 steps, WRN-28-2) pass
MixMatch's 75. With 75 and the ramp-up over the first 300 of 1,200 steps (small CNN width 16,
batch norm), the unlabeled term reaches full weight while the substitute is still at chance on
its labelled batches (cross-entropy about 2.3 at step 50), and training collapses onto one
class: every guessed label, and every test prediction, in one class from step 100 on (a
400-step diagnostic at 1,000 queries; the same with the guessing pass in eval mode or without
its batch-norm updates, so the weight is the cause). MixMatch's reference avoids this by ramping
up over 16,000 steps, when the model has long learned from its labels. Choice: 2,000 training
images held out of the attacker's pool (``benchmarks/learning.py --validation 2000``), the
CIFAR-10 victim (small CNN width 16, 6 epochs), label oracle, 1,000 queries, 1,200 steps, seed
0: validation accuracy / fidelity λ_U = 10: 49.92 / 61.90%, 25: 49.22 / 60.38% (one seed,
neither collapsed).

Fashion-MNIST's 10 was chosen on a validation split, never on the test set: 5,000 training
images held out of the attacker's pool (``benchmarks/learning.py --validation 5000``), the
784-256-10 MLP victim and substitute, label oracle, 250 queries, 5,000 steps, crop padding 2,
three seeds. Mean validation accuracy (± standard deviation over the seeds): λ_U = 3:
79.3 ± 0.4%, 10: 80.2 ± 0.2%, 25: 80.0 ± 1.1%, 75: 77.6 ± 2.9% (fully supervised, two seeds:
76.2%); without the crop λ_U = 10, 25, 75 gave 76.3%, 76.9%, 78.3% (two seeds). MNIST keeps
75, untuned: there MixMatch already wins by a wide margin."""

DEFAULT_LAMBDA_U = 75.0
"""``λ_U`` for a dataset not in :data:`LAMBDA_U` (MixMatch's on CIFAR-10)."""


def default_lambda_u(dataset: str | None) -> float:
    """``λ_U`` for ``dataset`` (:data:`LAMBDA_U`, else :data:`DEFAULT_LAMBDA_U`)."""
    return LAMBDA_U.get(dataset or "", DEFAULT_LAMBDA_U)


@dataclass(frozen=True)
class MixMatchConfig:
    """MixMatch's hyper-parameters (defaults: the paper's, as §4.2 uses them).

    Attributes
    ----------
    augmentations:
        ``K``, augmentations of each unlabeled image averaged for its guessed label.
    temperature:
        ``T`` of the sharpening.
    alpha:
        MixUp's ``Beta(α, α)`` parameter.
    lambda_u:
        Weight of the unlabeled loss after the ramp-up.
    rampup:
        Fraction of the run over which the unlabeled weight rises linearly from 0.

    The learning rate, weight decay and moving average are not MixMatch's own: every method
    gets them (``lr`` and :class:`~.loop.Regularisation` of :func:`train_mixmatch`).
    """

    augmentations: int = 2
    temperature: float = 0.5
    alpha: float = 0.75
    lambda_u: float = 75.0
    rampup: float = 0.25

    def __post_init__(self) -> None:
        if self.augmentations < 1:
            raise ValueError(f"augmentations (K) must be at least 1, got {self.augmentations}")
        if not self.temperature > 0 or not self.alpha > 0:
            raise ValueError("temperature and alpha must be positive")
        if self.lambda_u < 0 or not 0 <= self.rampup <= 1:
            raise ValueError("lambda_u must be >= 0 and rampup a fraction in [0, 1]")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """``p^(1/T)`` renormalised over the last axis (MixMatch, eq. 7)."""
    q = p ** (1.0 / temperature)
    return q / q.sum(dim=-1, keepdim=True)


def mixup(
    x: torch.Tensor, y: torch.Tensor, lam: float | torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each ``(x_i, y_i)`` of ``x`` ``(n, ...)``, ``y`` ``(n, K)`` with a random partner:
    ``λ'_i·a + (1 − λ'_i)·b``, ``λ'_i = max(λ_i, 1 − λ_i)`` (MixMatch, eqs. 8–11). ``lam`` is
    one ``λ`` for the batch or ``(n,)``, one per example (MixMatch's reference draws one per
    example). Raises ``ValueError`` for a ``lam`` of another length."""
    lam_t = torch.as_tensor(lam, dtype=x.dtype, device=x.device)
    if lam_t.ndim == 1 and len(lam_t) != len(x):
        raise ValueError(f"lam must be one value or one per example ({len(x)}), got "
                         f"{len(lam_t)}")
    lam_t = torch.maximum(lam_t, 1.0 - lam_t)
    partner = torch.randperm(len(x), generator=generator).to(x.device)
    lx = lam_t.reshape(-1, *([1] * (x.ndim - 1))) if lam_t.ndim else lam_t
    ly = lam_t.reshape(-1, *([1] * (y.ndim - 1))) if lam_t.ndim else lam_t
    return lx * x + (1 - lx) * x[partner], ly * y + (1 - ly) * y[partner]


_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@contextmanager
def frozen_batchnorm_statistics(model: nn.Module) -> Iterator[None]:
    """Forward passes inside leave the batch-norm running statistics (and step counters) of
    ``model`` as they were; in train mode they still normalise with the batch's statistics.

    MixMatch's reference implementation guesses labels in training mode but keeps only the
    statistics updates of the training forward pass (its ``skip_ops``), so the running
    statistics follow the (mixed) batches the loss is computed on, not the guessing passes.
    """
    saved = [(m, [b.detach().clone() for b in m.buffers()])
             for m in model.modules() if isinstance(m, _BATCHNORM)]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in saved:
                for b, old in zip(m.buffers(), buffers, strict=True):
                    b.copy_(old)


def train_mixmatch(
    model: nn.Module,
    pool: torch.Tensor,
    labelled: LabelledQueries,
    unlabeled: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 64,
    config: MixMatchConfig | None = None,
    lr: float = 2e-3,
    regularisation: Regularisation | None = None,
    seed: int = 0,
    augment: Augment | None = None,
    data: EvaluationSet | None = None,
    eval_every: int = 50,
    progress: Progress | None = None,
    device: str | torch.device = "cpu",
) -> Trained:
    """Train ``model`` with MixMatch on ``pool[labelled.indices]`` (``pool`` ``(n, C, H, W)``;
    targets: the oracle's answers, see :mod:`.query`) and ``pool[unlabeled]``; Adam at ``lr``
    with ``regularisation`` (default :class:`~.loop.Regularisation`); return the moving
    average. Batches are drawn and augmented on the CPU, then moved to ``device``. Raises
    ``ValueError`` for ``steps < 1`` or no unlabeled input."""
    cfg = config or MixMatchConfig()
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if len(unlabeled) == 0:
        raise ValueError("MixMatch needs unlabeled inputs: the whole pool was queried (use a "
                         "budget smaller than the pool, or the supervised method)")
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    regulariser = Regulariser(model, regularisation or Regularisation(), lr)
    x_l = pool[torch.as_tensor(labelled.indices)]
    t_l = torch.as_tensor(labelled.targets)
    labelled_batches = cycle_batches(torch.arange(len(x_l)), batch_size, gen)
    unlabeled_batches = cycle_batches(unlabeled, batch_size, gen)
    aug = augment if augment is not None else (lambda x, _g: x)
    rampup = max(1.0, cfg.rampup * steps)
    check = Checkpointer(data, steps, eval_every, progress, device)
    for step in range(1, steps + 1):
        model.train()
        idx = next(labelled_batches)
        xb, tb = aug(x_l[idx], gen).to(device), t_l[idx].to(device)
        ub = pool[next(unlabeled_batches)]
        u_aug = torch.cat([aug(ub, gen) for _ in range(cfg.augmentations)]).to(device)
        with torch.no_grad(), frozen_batchnorm_statistics(model):
            probs = F.softmax(model(u_aug), dim=1)
            guess = sharpen(probs.view(cfg.augmentations, len(ub), -1).mean(0), cfg.temperature)
        inputs = torch.cat([xb, u_aug])
        targets = torch.cat([tb, guess.repeat(cfg.augmentations, 1)])
        lam = torch.from_numpy(rng.beta(cfg.alpha, cfg.alpha, size=len(inputs)))
        mixed_x, mixed_t = mixup(inputs, targets, lam, gen)
        logits = model(mixed_x)
        n = len(xb)
        loss_x = -(mixed_t[:n] * F.log_softmax(logits[:n], dim=1)).sum(dim=1).mean()
        loss_u = F.mse_loss(F.softmax(logits[n:], dim=1), mixed_t[n:])
        weight = cfg.lambda_u * min(1.0, step / rampup)
        loss = loss_x + weight * loss_u
        opt.zero_grad()
        loss.backward()
        opt.step()
        regulariser(step)
        check(step, regulariser.model)
    model.eval()
    result = regulariser.model
    result.eval()
    return Trained(result, check.history, steps)
