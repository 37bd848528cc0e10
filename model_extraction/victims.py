"""Victims: the models an attacker queries through an oracle.

- :func:`train_victim`: §6.7's one-hidden-layer ReLU networks, trained with Adam for 20 epochs
  at batch size 128 on MNIST (and CIFAR-10), in float32 with PyTorch, then served in float64
  (the threat model of §6.1 is a float64 logit oracle).
- :class:`TorchVictim` / :func:`train_image_victim`: image classifiers (a small CNN,
  WideResNet-28-2) for learning-based extraction (§4) and the seed study (§5). A victim has
  ``logits(x)`` on flattened float64 rows, so :class:`~model_extraction.oracle.ModelOracle`
  serves it with any output policy.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from safetensors.torch import load_file, save_file

from model_extraction.models import Classifier, build_model
from model_extraction.network import ReLUNetwork
from model_extraction.training import fit, predict, seeded

__all__ = ["MIN_VICTIM_STEPS", "TorchVictim", "train_image_victim", "train_victim",
           "victim_epochs"]

MIN_VICTIM_STEPS = 2400
"""Adam steps a §6 victim gets at least: the paper's 20 epochs on MNIST are 9,380 steps; 20
epochs of the 1,500 embedded digits would be 240, too few to train (the 64-32-10 victim of
``model-extraction extract``: 85.9% test accuracy with ``--epochs 20``, 91.2% with the default
200)."""


def victim_epochs(n: int, batch_size: int = 128) -> int:
    """Epochs of ``n`` training examples: the paper's 20, or more for at least
    :data:`MIN_VICTIM_STEPS` steps on a small dataset."""
    return max(20, -(-MIN_VICTIM_STEPS // -(-n // batch_size)))


def train_victim(
    x_train: NDArray[np.floating],
    y_train: NDArray[np.integer],
    hidden: int | Sequence[int],
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
    """Train a ``d → hidden → K`` ReLU network with Adam (the paper's recipe, §6.7); ``hidden``
    is one width, or the widths ``(h_1, ..., h_L)`` of a deeper network.

    ``x_train`` is ``(n, d)`` (flattened, scaled as the victim will be queried), ``y_train``
    ``(n,)`` integer labels. The test accuracy, if test data is given, goes in the metadata.
    """
    x = np.asarray(x_train, dtype=np.float32)
    y = np.asarray(y_train, dtype=np.int64)
    if x.ndim != 2 or y.shape != (len(x),):
        raise ValueError(
            f"expected x of shape (n, d) and y of shape (n,); got {x.shape}, {y.shape}"
        )
    widths = (hidden,) if isinstance(hidden, int | np.integer) else tuple(hidden)
    if not widths or min(widths) < 1 or epochs < 1 or batch_size < 1:
        raise ValueError("every hidden width, epochs and batch_size must be positive")
    k = int(num_classes if num_classes is not None else y.max() + 1)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    sizes = (x.shape[1], *widths, k)
    layers: list[torch.nn.Module] = []
    for fan_in, fan_out in zip(sizes, sizes[1:], strict=False):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
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
        "kind": "trained", "hidden": hidden if len(widths) == 1 else list(widths),
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, **(metadata or {}),
    }
    net = ReLUNetwork.from_torch(model, meta)
    if x_test is not None and y_test is not None:
        acc = float(np.mean(net.predict(np.asarray(x_test, dtype=np.float64)) == y_test))
        net.metadata["test_accuracy"] = acc
    return net


class TorchVictim:
    """A trained image classifier seen as a function of flattened float64 rows.

    ``logits(x)`` takes ``(n, C·H·W)`` rows (what an oracle receives), reshapes them to
    ``input_shape`` and returns ``(n, K)`` float64 logits. ``spec`` records how to rebuild the
    architecture (:func:`~model_extraction.models.build_model`), so :meth:`save` and
    :meth:`load` round-trip through safetensors with no pickle.
    """

    def __init__(self, model: Classifier, spec: dict[str, Any],
                 metadata: dict[str, Any] | None = None) -> None:
        self.model = model.eval()
        self.spec = dict(spec)
        self.input_shape: tuple[int, int, int] = tuple(spec["input_shape"])  # type: ignore[assignment]
        self.num_classes = int(spec["num_classes"])
        self.input_dim = int(np.prod(self.input_shape))
        self.metadata: dict[str, Any] = dict(metadata or {})

    def images(self, x: NDArray[Any]) -> torch.Tensor:
        """Rows ``(n, d)`` (or images) as a float32 ``(n, C, H, W)`` tensor."""
        return torch.as_tensor(np.asarray(x), dtype=torch.float32).reshape(-1, *self.input_shape)

    def logits(self, x: NDArray[Any]) -> NDArray[np.float64]:
        """Float64 logits of a batch of flattened inputs."""
        return predict(self.model, self.images(x)).double().numpy()

    def predict(self, x: NDArray[Any]) -> NDArray[np.int64]:
        """Predicted labels."""
        return np.argmax(self.logits(x), axis=1)

    def save(self, path: str | Path) -> None:
        """Write the weights and the spec to a safetensors file."""
        meta = {"spec": json.dumps(self.spec), "metadata": json.dumps(self.metadata)}
        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> TorchVictim:
        """Read a victim written by :meth:`save`."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "spec" not in meta:
            raise ValueError(f"{path} is not a TorchVictim file (no 'spec' in its metadata)")
        spec = json.loads(meta["spec"])
        state = load_file(str(path))
        options = dict(spec.get("options", {}))
        if spec["arch"] == "cnn" and "batchnorm" not in options and not any(
            name.endswith("running_mean") for name in state
        ):  # saved before SmallCNN had batch norm (then the only kind)
            options["batchnorm"] = 0
            spec["options"] = options
        model = build_model(spec["arch"], spec["input_shape"], spec["num_classes"], **options)
        model.load_state_dict(state)
        return cls(model, spec, json.loads(meta.get("metadata", "{}")))


def train_image_victim(
    x_train: NDArray[Any],
    y_train: NDArray[np.integer],
    *,
    arch: str = "cnn",
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: str = "adam",
    init_seed: int = 0,
    order_seed: int = 0,
    x_test: NDArray[Any] | None = None,
    y_test: NDArray[np.integer] | None = None,
    options: dict[str, int] | None = None,
    metadata: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> TorchVictim:
    """Train an image classifier to serve as a victim.

    ``x_train`` is ``(n, C, H, W)`` float in ``[0, 1]`` (or ``(n, d)`` with ``input_shape``).
    ``init_seed`` fixes the initial weights (drawn on the CPU) and ``order_seed`` the batch
    order (§5). It trains on ``device`` and is served from the CPU. The test accuracy, if test
    data is given, goes in the metadata.
    """
    x = np.asarray(x_train, dtype=np.float32)
    shape = tuple(input_shape) if input_shape is not None else x.shape[1:]
    if len(shape) != 3:
        raise ValueError(f"images must be (n, C, H, W) or pass input_shape; got {x.shape}")
    x = x.reshape(-1, *shape)
    y = np.asarray(y_train, dtype=np.int64)
    k = int(num_classes if num_classes is not None else y.max() + 1)
    spec = {"arch": arch, "input_shape": list(shape), "num_classes": k,
            "options": dict(options or {})}
    with seeded(init_seed):
        model = build_model(arch, shape, k, **spec["options"])
    fit(model, x, y, epochs=epochs, batch_size=batch_size, lr=lr,
        optimizer=optimizer, order_seed=order_seed, device=device)  # type: ignore[arg-type]
    model.cpu()
    meta = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": optimizer,
            "init_seed": init_seed, "order_seed": order_seed, **(metadata or {})}
    victim = TorchVictim(model, spec, meta)
    if x_test is not None and y_test is not None:
        victim.metadata["test_accuracy"] = float(np.mean(victim.predict(x_test) == y_test))
    return victim
