"""Accuracy and fidelity of a substitute model, as §4 reports them (Tables 2–3).

- *accuracy*: agreement of the substitute's prediction with the true label;
- *fidelity*: agreement with the victim's prediction (the attacker's goal in §3);
- top-5 variants (Table 2): the true label, or the victim's top-1 label, is among the
  substitute's five largest logits; reported only when there are more than 5 classes;
- Table 3 reports, per run, the median over the last 20 checkpoints (as MixMatch does):
  :func:`median_of_last`.

The victim's labels on the test set are the evaluator's, not the attacker's: they are computed
once, outside the oracle, and cost no query.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import nn

from model_extraction.evaluation import agreement
from model_extraction.training import predict

__all__ = [
    "Checkpoint",
    "EvaluationSet",
    "Metrics",
    "evaluate",
    "median_of_last",
    "topk_agreement",
]


def topk_agreement(logits: ArrayLike | torch.Tensor, labels: ArrayLike, k: int) -> float:
    """Fraction of rows whose ``labels`` entry is among the ``k`` largest ``logits``.

    With ``k = 1`` this is :func:`model_extraction.evaluation.agreement` of the argmax.
    """
    z = logits if isinstance(logits, torch.Tensor) else torch.tensor(np.asarray(logits))
    y = torch.tensor(np.asarray(labels), dtype=torch.int64)
    if z.ndim != 2 or y.shape != (len(z),):
        raise ValueError(f"expected (n, K) logits and (n,) labels; got {tuple(z.shape)}, "
                         f"{tuple(y.shape)}")
    if not 1 <= k <= z.shape[1]:
        raise ValueError(f"k must be in 1..{z.shape[1]}, got {k}")
    if len(z) == 0:
        return float("nan")
    top = z.topk(k, dim=1).indices
    return float((top == y[:, None]).any(dim=1).double().mean())


@dataclass(frozen=True)
class EvaluationSet:
    """Test images ``(n, C, H, W)`` in ``[0, 1]``, their true labels, and the victim's labels
    (``None`` when there is no victim to compare with: fidelity is then not reported)."""

    images: torch.Tensor
    labels: NDArray[np.int64]
    victim_labels: NDArray[np.int64] | None = None

    def __post_init__(self) -> None:
        images = torch.as_tensor(self.images, dtype=torch.float32)
        labels = np.asarray(self.labels, dtype=np.int64)
        if images.ndim != 4 or len(images) != len(labels) or len(images) == 0:
            raise ValueError(
                f"an evaluation set needs (n, C, H, W) images and n labels, n > 0; got "
                f"{tuple(images.shape)} and {labels.shape}"
            )
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels)
        if self.victim_labels is not None:
            v = np.asarray(self.victim_labels, dtype=np.int64).reshape(-1)
            if v.shape != labels.shape:
                raise ValueError(f"victim_labels has {v.shape}, labels {labels.shape}")
            object.__setattr__(self, "victim_labels", v)

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_victim(cls, victim: Any, images: ArrayLike, labels: ArrayLike) -> EvaluationSet:
        """Label ``images`` with ``victim`` directly (anything with ``.logits`` on flattened
        float64 rows, such as :class:`~model_extraction.victims.TorchVictim`)."""
        x = np.asarray(images, dtype=np.float32)
        logits = np.asarray(victim.logits(x.reshape(len(x), -1).astype(np.float64)))
        return cls(torch.from_numpy(x), np.asarray(labels), np.argmax(logits, axis=1))


@dataclass(frozen=True)
class Metrics:
    """Test accuracy and fidelity, top-1 and top-5 (``None`` where not defined)."""

    accuracy: float
    fidelity: float | None = None
    top5_accuracy: float | None = None
    top5_fidelity: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


@dataclass(frozen=True)
class Checkpoint:
    """The substitute's metrics after ``step`` optimizer steps."""

    step: int
    metrics: Metrics

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, **self.metrics.as_dict()}


def evaluate(
    model: nn.Module, data: EvaluationSet, *, batch_size: int = 1024,
    device: str | torch.device = "cpu",
) -> Metrics:
    """Accuracy and fidelity of ``model`` on ``data`` (eval mode, no gradient)."""
    logits = predict(model, data.images, batch_size=batch_size, device=device)
    pred = logits.argmax(dim=1).numpy()
    top5 = logits.shape[1] > 5
    fid = top5_fid = None
    if data.victim_labels is not None:
        fid = agreement(pred, data.victim_labels)
        top5_fid = topk_agreement(logits, data.victim_labels, 5) if top5 else None
    return Metrics(
        accuracy=agreement(pred, data.labels),
        fidelity=fid,
        top5_accuracy=topk_agreement(logits, data.labels, 5) if top5 else None,
        top5_fidelity=top5_fid,
    )


def median_of_last(history: list[Checkpoint], last: int = 20) -> Metrics:
    """Median of each metric over the last ``last`` checkpoints (MixMatch's and Table 3's
    way of reporting one run); all checkpoints if there are fewer."""
    if not history:
        raise ValueError("no checkpoints to summarise: give an evaluation set")
    if last < 1:
        raise ValueError(f"last must be at least 1, got {last}")
    tail = [c.metrics for c in history[-last:]]

    def med(name: str) -> float | None:
        values = [getattr(m, name) for m in tail]
        return None if values[0] is None else float(statistics.median(values))

    return Metrics(**{name: med(name) for name in Metrics.__dataclass_fields__})
