"""The supervised training loop shared by victims, substitutes (§4) and the seed study (§5).

The two sources of randomness that §5 separates are controlled separately: the initialisation
(:func:`seeded` around :func:`~model_extraction.models.build_model`) and the batch order and
augmentation (``order_seed`` of :func:`fit`). :func:`deterministic` asks PyTorch for
deterministic kernels; whatever non-determinism is left (thread scheduling, GPU atomics) is what
the limits experiment measures.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from torch import nn

__all__ = ["DEVICES", "Augment", "deterministic", "fit", "predict", "resolve_device", "seeded"]

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
"""An augmentation: a batch and the generator to draw its randomness from → a batch."""


DEVICES = ("cpu", "cuda", "auto")
"""What a ``--device`` option takes (``cuda:N`` names one GPU)."""


def resolve_device(name: str) -> str:
    """The torch device to train on: ``"cpu"``, ``"cuda"`` (or ``"cuda:N"``), or ``"auto"``
    (``"cuda"`` when a GPU is visible, else ``"cpu"``).

    Raises ``ValueError`` with the reason for any other name, and for ``cuda`` when torch sees
    no GPU (a CPU-only build, no driver) or no GPU of that index, before any work is done.
    """
    key = name.strip().lower()
    if key == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if key == "cpu":
        return "cpu"
    if key == "cuda" or key.startswith("cuda:"):
        index = key.partition(":")[2]
        if index and not index.isdigit():
            raise ValueError(f"bad device {name!r}: the GPU index must be a number (cuda:0)")
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for but torch sees no CUDA GPU here "
                             f"(torch {torch.__version__}, CUDA build: "
                             f"{torch.version.cuda or 'none'}); use --device cpu or auto")
        if index and int(index) >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} GPU(s) visible")
        return key
    raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)} (or cuda:N)")


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global generator seeded to ``seed``, then restore it.

    Used around model construction so that ``init_seed`` alone fixes the initial weights.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def deterministic(enabled: bool = True) -> Iterator[None]:
    """Ask PyTorch for deterministic algorithms inside the block (an error where none exists)."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _as_tensor(x: ArrayLike | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x))
    return t.to(dtype)


def fit(
    model: nn.Module,
    x: ArrayLike | torch.Tensor,
    targets: ArrayLike | torch.Tensor,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: Literal["adam", "sgd"] = "adam",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    order_seed: int = 0,
    augment: Augment | None = None,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[int, float], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` on ``x`` with cross-entropy and return the mean loss of each epoch.

    Parameters
    ----------
    x:
        ``(n, ...)`` inputs the model accepts (images ``(n, C, H, W)`` in ``[0, 1]``).
    targets:
        ``(n,)`` integer labels, or ``(n, K)`` probability vectors (soft labels: the full
        probability output of an oracle, §4).
    order_seed:
        Seeds the batch order and the augmentation; with the same initial weights, the same
        data and the same ``order_seed`` two runs differ only by platform non-determinism.
    augment:
        Applied to each batch, drawing its randomness from the same generator.
    on_epoch:
        Called as ``on_epoch(epoch, mean_loss)`` after each epoch.
    on_step:
        Called as ``on_step(step, loss)`` after each optimizer step (``step`` counts from 1
        over the whole run); the model is put back in training mode after it returns, so it
        may evaluate the model (checkpoints of §4's learning-based extraction).
    """
    xs = _as_tensor(x, torch.float32)
    t = targets if isinstance(targets, torch.Tensor) else torch.from_numpy(np.array(targets))
    soft = t.ndim == 2
    t = t.to(torch.float32 if soft else torch.int64)
    if len(xs) != len(t) or len(xs) == 0:
        raise ValueError(f"x and targets must be non-empty and match: {len(xs)} vs {len(t)}")
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be positive")
    model.to(device)
    params = model.parameters()
    opt: torch.optim.Optimizer
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    gen = torch.Generator().manual_seed(order_seed)
    history = []
    step = 0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(xs), generator=gen)
        total = 0.0
        for start in range(0, len(xs), batch_size):
            idx = order[start : start + batch_size]
            xb = xs[idx]
            if augment is not None:
                xb = augment(xb, gen)
            loss = F.cross_entropy(model(xb.to(device)), t[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            step += 1
            if on_step is not None:
                on_step(step, loss.item())
                model.train()
        history.append(total / len(xs))
        if on_epoch is not None:
            on_epoch(epoch, history[-1])
    model.eval()
    return history


@torch.no_grad()
def predict(
    model: nn.Module, x: ArrayLike | torch.Tensor, *, batch_size: int = 1024,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in eval mode, batched; a float32 CPU tensor."""
    xs = _as_tensor(x, torch.float32)
    model.eval()
    outs = [model(xs[i : i + batch_size].to(device)).float().cpu()
            for i in range(0, len(xs), batch_size)]
    return torch.cat(outs) if outs else torch.zeros(0)
