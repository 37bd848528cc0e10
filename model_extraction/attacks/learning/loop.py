"""Pieces shared by the training loops of §4: batch sampling, checkpoints and progress."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from .evaluate import Checkpoint, EvaluationSet, evaluate

__all__ = ["Checkpointer", "Progress", "cycle_batches", "eval_steps"]

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
