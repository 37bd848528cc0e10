"""The model family of functionally-equivalent extraction: one-hidden-layer ReLU networks.

Jagielski et al. (2020), §6.1 and Table 5, write the victim as
``O_L(x) = A(1) ReLU(A(0) x + B(0)) + B(1)`` with ``A(0) ∈ R^{d×h}`` and ``A(1) ∈ R^{h×K}``.
This module stores the same parameters in PyTorch's (out, in) layout::

    weight0 = A(0)ᵀ  (h, d)      bias0 = B(0)  (h,)
    weight1 = A(1)ᵀ  (K, h)      bias1 = B(1)  (K,)

Victims and extracted models are both :class:`ReLUNetwork` objects, evaluated in float64 with
numpy, saved with safetensors (never pickle), and convertible to a ``torch.nn.Module``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["ReLUNetwork"]

Array = NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class ReLUNetwork:
    """A fully connected ``d → h → K`` network with one ReLU hidden layer, in float64.

    Parameters
    ----------
    weight0, bias0:
        First layer, shapes ``(h, d)`` and ``(h,)`` (the paper's ``A(0)ᵀ`` and ``B(0)``).
    weight1, bias1:
        Logit layer, shapes ``(K, h)`` and ``(K,)`` (the paper's ``A(1)ᵀ`` and ``B(1)``).
    metadata:
        Free-form JSON-serialisable description (dataset, seed, accuracy, ...), saved with it.
    """

    weight0: Array
    bias0: Array
    weight1: Array
    bias1: Array
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        arrays = {}
        for name in ("weight0", "bias0", "weight1", "bias1"):
            value = np.array(getattr(self, name), dtype=np.float64, copy=True)
            value.setflags(write=False)
            arrays[name] = value
            object.__setattr__(self, name, value)
        w0, b0, w1, b1 = arrays["weight0"], arrays["bias0"], arrays["weight1"], arrays["bias1"]
        if w0.ndim != 2 or w1.ndim != 2 or b0.ndim != 1 or b1.ndim != 1:
            raise ValueError(
                "ReLUNetwork expects weight0 (h, d), bias0 (h,), weight1 (K, h), bias1 (K,); got "
                f"shapes {w0.shape}, {b0.shape}, {w1.shape}, {b1.shape}"
            )
        h, _ = w0.shape
        k = w1.shape[0]
        if b0.shape != (h,) or w1.shape != (k, h) or b1.shape != (k,):
            raise ValueError(
                f"inconsistent shapes: weight0 {w0.shape} needs bias0 ({h},) and weight1 (K, {h}); "
                f"got bias0 {b0.shape}, weight1 {w1.shape}, bias1 {b1.shape}"
            )
        for name, value in arrays.items():
            if not np.all(np.isfinite(value)):
                raise ValueError(f"{name} contains NaN or inf")

    # ------------------------------------------------------------------ shapes
    @property
    def input_dim(self) -> int:
        """``d``, the number of inputs."""
        return int(self.weight0.shape[1])

    @property
    def hidden(self) -> int:
        """``h``, the number of hidden ReLU units."""
        return int(self.weight0.shape[0])

    @property
    def num_outputs(self) -> int:
        """``K``, the number of logits."""
        return int(self.weight1.shape[0])

    @property
    def num_parameters(self) -> int:
        """Number of trainable parameters, ``h(d + 1) + K(h + 1)``."""
        return self.hidden * (self.input_dim + 1) + self.num_outputs * (self.hidden + 1)

    # ---------------------------------------------------------------- forward
    def _check_input(self, x: ArrayLike) -> Array:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(
                f"expected inputs of shape (n, {self.input_dim}); got {x.shape}. "
                "Flatten images to vectors first (e.g. x.reshape(len(x), -1))."
            )
        return x

    def preactivations(self, x: ArrayLike) -> Array:
        """Hidden pre-activations ``x A(0) + B(0)``, shape ``(n, h)``."""
        return self._check_input(x) @ self.weight0.T + self.bias0

    def hidden_activations(self, x: ArrayLike) -> Array:
        """``ReLU(x A(0) + B(0))``, shape ``(n, h)``."""
        return np.maximum(self.preactivations(x), 0.0)

    def logits(self, x: ArrayLike) -> Array:
        """The logit function ``O_L(x)`` of §6.1, shape ``(n, K)``, in float64."""
        return self.hidden_activations(x) @ self.weight1.T + self.bias1

    __call__ = logits

    def predict(self, x: ArrayLike) -> NDArray[np.int64]:
        """Predicted labels (argmax of the logits), shape ``(n,)``."""
        return np.argmax(self.logits(x), axis=1).astype(np.int64)

    # ----------------------------------------------------------------- torch
    def to_torch(self, dtype: Any = None) -> Any:
        """A ``Sequential(Linear, ReLU, Linear)`` with these weights (float64 by default)."""
        import torch

        dtype = torch.float64 if dtype is None else dtype
        h, d, k = self.hidden, self.input_dim, self.num_outputs
        module = torch.nn.Sequential(
            torch.nn.Linear(d, h), torch.nn.ReLU(), torch.nn.Linear(h, k)
        ).to(dtype)
        with torch.no_grad():
            module[0].weight.copy_(torch.from_numpy(np.array(self.weight0)))
            module[0].bias.copy_(torch.from_numpy(np.array(self.bias0)))
            module[2].weight.copy_(torch.from_numpy(np.array(self.weight1)))
            module[2].bias.copy_(torch.from_numpy(np.array(self.bias1)))
        return module

    @classmethod
    def from_torch(cls, module: Any, metadata: dict[str, Any] | None = None) -> ReLUNetwork:
        """Build from a ``Sequential(Linear, ReLU, Linear)`` (or any module with that layout)."""
        import torch

        linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
        others = [
            m
            for m in module.modules()
            if len(list(m.children())) == 0 and not isinstance(m, torch.nn.Linear | torch.nn.ReLU)
            and not isinstance(m, torch.nn.Flatten)
        ]
        if len(linears) != 2 or others:
            raise ValueError(
                "from_torch expects Linear -> ReLU -> Linear (one hidden ReLU layer); got "
                f"{module!r}"
            )

        def arr(t: Any) -> Array:
            return t.detach().to("cpu", torch.float64).numpy()

        return cls(
            arr(linears[0].weight),
            arr(linears[0].bias),
            arr(linears[1].weight),
            arr(linears[1].bias),
            dict(metadata or {}),
        )

    # ------------------------------------------------------------------- I/O
    def save(self, path: str | Path) -> Path:
        """Save as a ``.safetensors`` file (float64 tensors + JSON metadata). Returns the path."""
        from safetensors.numpy import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            "weight0": np.ascontiguousarray(self.weight0),
            "bias0": np.ascontiguousarray(self.bias0),
            "weight1": np.ascontiguousarray(self.weight1),
            "bias1": np.ascontiguousarray(self.bias1),
        }
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"model_extraction": json.dumps(self.metadata)})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ReLUNetwork:
        """Load a network written by :meth:`save`."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no saved network at {path}")
        try:
            with safe_open(str(path), framework="numpy") as f:
                tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
                meta = f.metadata() or {}
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(f"{path} is not a readable safetensors file: {err}") from err
        missing = {"weight0", "bias0", "weight1", "bias1"} - tensors.keys()
        if missing:
            raise ValueError(f"{path} lacks tensors {sorted(missing)}; not saved by ReLUNetwork?")
        metadata = json.loads(meta.get("model_extraction", "{}"))
        return cls(
            tensors["weight0"], tensors["bias0"], tensors["weight1"], tensors["bias1"], metadata
        )

    # ------------------------------------------------------------- builders
    @classmethod
    def random(
        cls,
        input_dim: int,
        hidden: int,
        num_outputs: int = 10,
        *,
        seed: int = 0,
        metadata: dict[str, Any] | None = None,
    ) -> ReLUNetwork:
        """A random-weight victim (Gaussian weights with He scaling), for scale tests."""
        if min(input_dim, hidden, num_outputs) < 1:
            raise ValueError("input_dim, hidden and num_outputs must be positive")
        rng = np.random.default_rng(seed)
        w0 = rng.standard_normal((hidden, input_dim)) * np.sqrt(2.0 / input_dim)
        b0 = rng.standard_normal(hidden) * 0.1
        w1 = rng.standard_normal((num_outputs, hidden)) * np.sqrt(2.0 / hidden)
        b1 = rng.standard_normal(num_outputs) * 0.1
        meta = {"kind": "random", "seed": seed, **(metadata or {})}
        return cls(w0, b0, w1, b1, meta)
