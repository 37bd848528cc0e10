"""Pieces shared by the training loops of §4: batch sampling, checkpoints, progress, and the
regularisers every method gets (:class:`Regularisation`: decoupled weight decay and a moving
average of the weights, as MixMatch's reference implementation and its fully supervised
baselines use them; Berthelot et al. 2019, §4 and Appendix B)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .evaluate import Checkpoint, EvaluationSet, evaluate

__all__ = ["Checkpointer", "Progress", "Regularisation", "Regulariser", "cycle_batches",
           "eval_steps", "update_ema"]

Progress = Callable[[int, int, "Checkpoint | None"], None]
"""``progress(step, total_steps, checkpoint)``: called after every step; ``checkpoint`` is the
evaluation made at that step, or ``None``."""


def cycle_batches(
    indices: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """Endless batches of ``batch_size`` entries of ``indices``: successive random permutations,
    concatenated, so every entry is seen once per pass even when there are fewer entries than
    a batch (250 labels, batches of 64)."""
    if len(indices) == 0:
        raise ValueError("cannot draw batches from an empty set")
    buffer = indices[:0]
    while True:
        while len(buffer) < batch_size:
            buffer = torch.cat([buffer, indices[torch.randperm(len(indices),
                                                               generator=generator)]])
        yield buffer[:batch_size]
        buffer = buffer[batch_size:]


def eval_steps(total: int, every: int) -> set[int]:
    """The steps at which a run of ``total`` steps evaluates: every ``every`` steps and the last."""
    if every < 1:
        raise ValueError(f"eval_every must be at least 1, got {every}")
    return set(range(every, total + 1, every)) | {total}


class Checkpointer:
    """Evaluates the model at the steps of :func:`eval_steps` and reports progress.

    Call it after every optimizer step with the model to evaluate (MixMatch passes its moving
    average). With no evaluation set it only reports progress.
    """

    def __init__(
        self, data: EvaluationSet | None, total: int, every: int,
        progress: Progress | None = None, device: str | torch.device = "cpu",
    ) -> None:
        self.data = data
        self.device = device
        self.total = total
        self.due = eval_steps(total, every) if data is not None else set()
        self.progress = progress
        self.history: list[Checkpoint] = []

    def __call__(self, step: int, model: nn.Module) -> None:
        checkpoint = None
        if step in self.due:
            assert self.data is not None
            checkpoint = Checkpoint(step, evaluate(model, self.data, device=self.device))
            self.history.append(checkpoint)
        if self.progress is not None:
            self.progress(step, self.total, checkpoint)


@dataclass(frozen=True)
class Regularisation:
    """The regularisers of every training loop of §4 (fully supervised, + rotation, MixMatch),
    so that the methods differ only in what they learn from.

    Attributes
    ----------
    weight_decay:
        Decoupled weight decay on the weight matrices and kernels (parameters of two or more
        dimensions; not biases nor batch-norm scales): ``w ← w·(1 − weight_decay·lr)`` after
        each optimizer step, as MixMatch's reference implementation (0.02 with its Adam at
        ``lr = 0.002``). 0 disables it.
    ema_decay:
        Decay of the exponential moving average of the weights that is evaluated and returned
        (after the warm-up ``decay_t = min(decay, (1 + t) / (10 + t))``); 0: the live model.
    """

    weight_decay: float = 0.02
    ema_decay: float = 0.999

    def __post_init__(self) -> None:
        if not self.weight_decay >= 0 or not 0 <= self.ema_decay < 1:
            raise ValueError(f"need weight_decay >= 0 and 0 <= ema_decay < 1, got "
                             f"{self.weight_decay} and {self.ema_decay}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema ← decay·ema + (1 − decay)·model`` for every parameter and every floating-point
    buffer (batch-norm running means and variances), as MixMatch's reference implementation
    averages all the model's variables; integer buffers (batch-norm's step counter) are copied.

    Averaging the running statistics as well keeps them in step with the averaged weights;
    copying the live model's statistics onto averaged weights can mismatch the two while the
    weights still move quickly, as they do through most of a short run.
    """
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.mul_(decay).add_(p.detach(), alpha=1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        if e.is_floating_point():
            e.mul_(decay).add_(b, alpha=1.0 - decay)
        else:
            e.copy_(b)


class Regulariser:
    """Applies a :class:`Regularisation` to ``model`` after each optimizer step (call it with
    the step number, counted from 1); :attr:`model` is what to evaluate and return: the moving
    average, or ``model`` itself when ``ema_decay`` is 0.

    ``also_decay`` are further parameters under the same weight decay (the rotation head).
    Raises ``ValueError`` for a learning rate that is not positive.
    """

    def __init__(self, model: nn.Module, settings: Regularisation, lr: float,
                 also_decay: Iterable[nn.Parameter] = ()) -> None:
        if not lr > 0:
            raise ValueError(f"the learning rate must be positive, got {lr}")
        self.live = model
        self.settings = settings
        self.shrink = 1.0 - settings.weight_decay * lr
        self.decayed = [p for p in [*model.parameters(), *also_decay] if p.ndim > 1]
        self.average: nn.Module | None = None
        if settings.ema_decay > 0:
            self.average = copy.deepcopy(model)
            for p in self.average.parameters():
                p.requires_grad_(False)

    @property
    def model(self) -> nn.Module:
        return self.average if self.average is not None else self.live

    @torch.no_grad()
    def __call__(self, step: int) -> None:
        if self.settings.weight_decay > 0:
            for p in self.decayed:
                p.mul_(self.shrink)
        if self.average is not None:
            decay = min(self.settings.ema_decay, (1.0 + step) / (10.0 + step))
            update_ema(self.average, self.live, decay)
