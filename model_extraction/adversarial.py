"""Adversarial examples: the fast gradient sign method (FGSM).

FGSM (Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015)
moves every input one step of size ``eps`` along the sign of the gradient of the loss with
respect to the input, ``x' = clip(x + eps · sign(∇ₓ L(f(x), y)))``. Jagielski et al. (2020, §5,
Table 4) use it with ``eps = 25/255`` against the *oracle* on the test set to build one of the
three query sets on which the fidelity of learning-based extraction is measured: inputs chosen to
sit near the oracle's decision boundaries, where differently-seeded models disagree most.

The interface follows cleverhans' ``fast_gradient_method``: without labels, the model's own
predictions are used as ``y`` (so the true labels cannot leak into the perturbation); a
targeted attack steps *down* the loss of the target class instead.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from torch import nn

__all__ = ["fgsm"]


def fgsm(
    model: nn.Module,
    x: ArrayLike | torch.Tensor,
    *,
    eps: float,
    y: ArrayLike | torch.Tensor | None = None,
    targeted: bool = False,
    clip: tuple[float, float] | None = (0.0, 1.0),
    batch_size: int = 1024,
) -> torch.Tensor:
    """FGSM adversarial examples of ``x`` against ``model`` (an L∞ step of size ``eps``).

    Parameters
    ----------
    model:
        Maps a float32 batch to ``(n, K)`` logits (evaluated in eval mode; its parameters and
        their ``.grad`` are left untouched).
    x:
        ``(n, ...)`` inputs in the shape the model takes (images ``(n, C, H, W)``), inside
        ``clip`` if clipping is on.
    eps:
        Step size in L∞ norm: no coordinate moves by more than ``eps``. The paper (§5): 25/255.
    y:
        ``(n,)`` integer labels whose loss is increased (or, if ``targeted``, the target classes
        whose loss is decreased). ``None``: the model's own predictions (cleverhans' default).
    targeted:
        Step towards ``y`` instead of away from it (requires ``y``).
    clip:
        ``(lo, hi)`` box the result is clipped to (``[0, 1]`` for images), or ``None``.
    batch_size:
        Inputs per forward/backward pass.

    Returns
    -------
    torch.Tensor
        float32 tensor of the shape of ``x``, on the CPU.
    """
    if not (isinstance(eps, numbers.Real) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite non-negative number (e.g. 25/255), got {eps!r}")
    eps = float(eps)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    xs = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x))
    xs = xs.detach().to(torch.float32).cpu()
    if xs.ndim < 2:
        raise ValueError(f"x must be a batch (n, ...) of inputs; got shape {tuple(xs.shape)}")
    if not torch.isfinite(xs).all():
        raise ValueError("x contains NaN or inf")
    if clip is not None:
        lo, hi = (float(c) for c in clip)
        if not lo < hi:
            raise ValueError(f"clip must be (lo, hi) with lo < hi, got {clip}")
        if len(xs) and (xs.min() < lo or xs.max() > hi):
            raise ValueError(
                f"x lies outside the clip box [{lo}, {hi}] (values in "
                f"[{xs.min().item():.3g}, {xs.max().item():.3g}]); scale the inputs to the "
                "box first (images: divide by 255) or pass clip=None"
            )
    labels: torch.Tensor | None = None
    if y is not None:
        labels = y if isinstance(y, torch.Tensor) else torch.from_numpy(np.array(y))
        labels = labels.detach().cpu()
        if labels.shape != (len(xs),):
            raise ValueError(f"y must have shape ({len(xs)},), got {tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"y must hold integer class labels, got dtype {labels.dtype}")
        labels = labels.to(torch.int64)
    elif targeted:
        raise ValueError("a targeted FGSM needs the target classes: pass y")

    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    out = []
    try:
        for start in range(0, len(xs), batch_size):
            xb = xs[start : start + batch_size].to(device).requires_grad_(True)
            with torch.enable_grad():
                logits = model(xb)
                if labels is None:
                    yb = logits.detach().argmax(dim=1)
                else:
                    yb = labels[start : start + batch_size].to(device)
                    if len(yb) and (yb.min() < 0 or yb.max() >= logits.shape[1]):
                        raise ValueError(
                            f"y holds classes outside [0, {logits.shape[1]}) of the model"
                        )
                loss = F.cross_entropy(logits, yb, reduction="sum")
                (grad,) = torch.autograd.grad(loss, xb)
            step = -eps if targeted else eps
            adv = xb.detach() + step * grad.sign()
            if clip is not None:
                adv = adv.clamp_(lo, hi)
            out.append(adv.cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else xs.clone()
