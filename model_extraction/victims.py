"""Victims for functionally-equivalent extraction: trained as the paper trains them, or random.

§6.7: one-hidden-layer fully connected ReLU networks trained with Adam for 20 epochs at batch
size 128 on MNIST (and CIFAR-10). Training runs in float32 with PyTorch; the trained weights are
then served in float64 (the threat model of §6.1 is a float64 logit oracle).
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray

from model_extraction.network import ReLUNetwork

__all__ = ["train_victim"]


def train_victim(
    x_train: NDArray[np.floating],
    y_train: NDArray[np.integer],
    hidden: int,
    *,
    num_classes: int | None = None,
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    x_test: NDArray[np.floating] | None = None,
    y_test: NDArray[np.integer] | None = None,
    metadata: dict[str, object] | None = None,
) -> ReLUNetwork:
    """Train a ``d → hidden → K`` ReLU network with Adam (the paper's recipe, §6.7).

    ``x_train`` is ``(n, d)`` (flattened, scaled as the victim will be queried), ``y_train``
    ``(n,)`` integer labels. The test accuracy, if test data is given, goes in the metadata.
    """
    x = np.asarray(x_train, dtype=np.float32)
    y = np.asarray(y_train, dtype=np.int64)
    if x.ndim != 2 or y.shape != (len(x),):
        raise ValueError(
            f"expected x of shape (n, d) and y of shape (n,); got {x.shape}, {y.shape}"
        )
    if hidden < 1 or epochs < 1 or batch_size < 1:
        raise ValueError("hidden, epochs and batch_size must be positive")
    k = int(num_classes if num_classes is not None else y.max() + 1)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, k)
    )
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x.copy()), torch.from_numpy(y.copy())
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    meta: dict[str, object] = {
        "kind": "trained", "hidden": hidden, "epochs": epochs, "batch_size": batch_size,
        "lr": lr, "seed": seed, **(metadata or {}),
    }
    net = ReLUNetwork.from_torch(model, meta)
    if x_test is not None and y_test is not None:
        acc = float(np.mean(net.predict(np.asarray(x_test, dtype=np.float64)) == y_test))
        net.metadata["test_accuracy"] = acc
    return net
