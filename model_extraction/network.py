"""The model family of functionally-equivalent extraction: one-hidden-layer ReLU networks.

Jagielski et al. (2020), §6.1 and Table 5, write the victim as
``O_L(x) = A(1) ReLU(A(0) x + B(0)) + B(1)`` with ``A(0) ∈ R^{d×h}`` and ``A(1) ∈ R^{h×K}``.
This module stores the same parameters in PyTorch's (out, in) layout::

    weight0 = A(0)ᵀ  (h, d)      bias0 = B(0)  (h,)
    weight1 = A(1)ᵀ  (K, h)      bias1 = B(1)  (K,)
    skip    = S      (K, d)      optional affine term: O(x) = A(1) ReLU(A(0) x + B(0)) + S x + B(1)

The affine term is what an extraction on a bounded input domain needs: a unit active on the whole
domain, a mirrored pair ``ReLU(z)``, ``ReLU(-z)`` (whose sum of slopes is linear) and a unit kept
with the opposite orientation (``ReLU(-z) = ReLU(z) - z``) all change the function by an affine
map only. On a box, :meth:`ReLUNetwork.without_skip` rewrites it exactly as plain ReLU units.

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

__all__ = ["ReLUNetwork", "decisions"]

Array = NDArray[np.float64]


def decisions(logits: ArrayLike) -> NDArray[np.int64]:
    """What a classifier decides from ``(n, K)`` logits: the argmax, or for ``K = 1`` (a binary
    classifier that decides by sign) ``1`` where the logit is positive and ``0`` elsewhere."""
    z = np.asarray(logits)
    if z.ndim != 2:
        raise ValueError(f"logits must have shape (n, K); got {z.shape}")
    if z.shape[1] == 1:
        return (z[:, 0] > 0).astype(np.int64)
    return np.argmax(z, axis=1).astype(np.int64)


def _with_skip(net: ReLUNetwork, dtype: Any) -> Any:
    """``to_torch`` of a network with an affine term."""
    import torch

    class SkipReLUNetwork(torch.nn.Module):
        """``Linear → ReLU → Linear`` plus a bias-free ``Linear`` skip from the input."""

        def __init__(self) -> None:
            super().__init__()
            self.hidden = torch.nn.Linear(net.input_dim, net.hidden)
            self.out = torch.nn.Linear(net.hidden, net.num_outputs)
            self.skip = torch.nn.Linear(net.input_dim, net.num_outputs, bias=False)

        def forward(self, x: Any) -> Any:
            return self.out(torch.relu(self.hidden(x))) + self.skip(x)

    module = SkipReLUNetwork().to(dtype)
    with torch.no_grad():
        for layer, w, b in ((module.hidden, net.weight0, net.bias0),
                            (module.out, net.weight1, net.bias1)):
            layer.weight.copy_(torch.from_numpy(np.array(w)))
            layer.bias.copy_(torch.from_numpy(np.array(b)))
        module.skip.weight.copy_(torch.from_numpy(np.array(net.skip)))
    return module


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
    skip:
        Optional affine term ``S``, shape ``(K, d)``, added to the logits as ``x Sᵀ``; ``None``
        for the plain network of §6.1.
    """

    weight0: Array
    bias0: Array
    weight1: Array
    bias1: Array
    metadata: dict[str, Any] = field(default_factory=dict)
    skip: Array | None = None

    def __post_init__(self) -> None:
        arrays = {}
        names = ("weight0", "bias0", "weight1", "bias1") + (("skip",) if self.skip is not None
                                                             else ())
        for name in names:
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
        if self.skip is not None and arrays["skip"].shape != (k, w0.shape[1]):
            raise ValueError(f"skip must have shape (K, d) = {(k, w0.shape[1])}; got "
                             f"{arrays['skip'].shape}")
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
        """Number of trainable parameters, ``h(d + 1) + K(h + 1)`` (``+ K d`` with ``skip``)."""
        extra = 0 if self.skip is None else self.num_outputs * self.input_dim
        return self.hidden * (self.input_dim + 1) + self.num_outputs * (self.hidden + 1) + extra

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
        """The logit function ``O_L(x)`` of §6.1 (plus ``x Sᵀ``), shape ``(n, K)``, float64."""
        x = self._check_input(x)
        out = np.maximum(x @ self.weight0.T + self.bias0, 0.0) @ self.weight1.T + self.bias1
        return out if self.skip is None else out + x @ self.skip.T

    __call__ = logits

    def predict(self, x: ArrayLike) -> NDArray[np.int64]:
        """Predicted labels, shape ``(n,)``: the argmax of the logits, or for one output
        (``K = 1``, a binary classifier) ``1`` where the logit is positive, else ``0``."""
        return decisions(self.logits(x))

    def without_skip(self, input_bounds: tuple[float, float] = (0.0, 1.0)) -> ReLUNetwork:
        """A plain ``d → h' → K`` ReLU network equal to this one on the box ``input_bounds``.

        Each output's affine term ``S_k x`` becomes one ReLU unit ``ReLU(S_k x + c_k)`` with
        ``c_k`` large enough that it is active on the whole box, and ``- c_k`` goes into the
        output bias: exact on the box, not outside it. Outputs whose row of ``S`` is zero add no
        unit. Returns ``self`` when there is no affine term.
        """
        if self.skip is None:
            return self
        lo, hi = input_bounds
        rows = np.flatnonzero(np.any(self.skip != 0, axis=1))
        s = self.skip[rows]
        lowest = np.sum(np.minimum(s * lo, s * hi), axis=1)  # min of S_k x over the box
        c = np.maximum(-lowest, 0.0) + 1.0
        w1_extra = np.zeros((self.num_outputs, len(rows)))
        w1_extra[rows, np.arange(len(rows))] = 1.0
        b1 = self.bias1.copy()
        b1[rows] -= c
        return ReLUNetwork(
            np.concatenate([self.weight0, s]), np.concatenate([self.bias0, c]),
            np.concatenate([self.weight1, w1_extra], axis=1), b1,
            {**self.metadata, "affine_units": len(rows), "exact_on": list(input_bounds)},
        )

    # ----------------------------------------------------------------- torch
    def to_torch(self, dtype: Any = None) -> Any:
        """A ``Sequential(Linear, ReLU, Linear)`` with these weights (float64 by default); with
        an affine term, a module whose ``forward`` adds ``skip(x)`` (a bias-free ``Linear``)."""
        import torch

        dtype = torch.float64 if dtype is None else dtype
        if self.skip is not None:
            return _with_skip(self, dtype)
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
        """Build from a ``Sequential(Linear, ReLU, Linear)`` (or any module with that layout),
        or from the module :meth:`to_torch` makes for a network with an affine term."""
        import torch

        def arr(t: Any) -> Array:
            return t.detach().to("cpu", torch.float64).numpy()

        skip = getattr(module, "skip", None)
        if isinstance(skip, torch.nn.Linear) and skip.bias is None:
            return cls(arr(module.hidden.weight), arr(module.hidden.bias), arr(module.out.weight),
                       arr(module.out.bias), dict(metadata or {}), skip=arr(skip.weight))
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
        if self.skip is not None:
            tensors["skip"] = np.ascontiguousarray(self.skip)
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
            tensors["weight0"], tensors["bias0"], tensors["weight1"], tensors["bias1"], metadata,
            skip=tensors.get("skip"),
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
