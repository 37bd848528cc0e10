"""The model family of functionally-equivalent extraction: fully connected ReLU networks.

Jagielski et al. (2020), §6.1 and Table 5, write the victim as
``O_L(x) = A(1) ReLU(A(0) x + B(0)) + B(1)`` with ``A(0) ∈ R^{d×h}`` and ``A(1) ∈ R^{h×K}``.
This module stores the same parameters in PyTorch's (out, in) layout::

    weight0 = A(0)ᵀ  (h, d)      bias0 = B(0)  (h,)
    weight1 = A(1)ᵀ  (K, h)      bias1 = B(1)  (K,)
    skip    = S      (K, d)      optional affine term: O(x) = A(1) ReLU(A(0) x + B(0)) + S x + B(1)

A deeper network (Carlini, Jagielski and Mironov, CRYPTO 2020) has ``hidden_layers`` between the
first layer and the logit layer: ``(W_i, b_i)`` of shapes ``(h_{i+1}, h_i)`` and ``(h_{i+1},)``,
each followed by a ReLU; ``weight1``/``bias1`` are then the logit layer ``(K, h_L)``. Its affine
term, if any, is in the input of the last hidden layer: ``S`` is ``(K, h_{L-1})`` and adds
``S a_{L-1}`` to the logits, ``a_{L-1}`` the activations of the layer below the last (``x``
for one hidden layer, ``h_0 = d``).

The affine term is what an extraction needs where a last-layer unit never changes state: a unit
active on the whole domain queried, a mirrored pair ``ReLU(z)``, ``ReLU(-z)`` (whose sum of
slopes is linear) and a unit kept with the opposite orientation (``ReLU(-z) = ReLU(z) - z``) all
change the function by a map affine in the last hidden layer's input only. On a box,
:meth:`ReLUNetwork.without_skip` rewrites it exactly as plain ReLU units.

Victims and extracted models are both :class:`ReLUNetwork` objects, evaluated in float64 with
numpy, saved with safetensors (never pickle), and convertible to a ``torch.nn.Module``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
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


def _linear(w: Array, b: Array | None, dtype: Any) -> Any:
    """A ``torch.nn.Linear`` holding ``w`` ``(out, in)`` and ``b`` (none: bias-free)."""
    import torch

    layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=b is not None).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(np.array(w)))
        if b is not None:
            layer.bias.copy_(torch.from_numpy(np.array(b)))
    return layer


def _with_skip(net: ReLUNetwork, dtype: Any) -> Any:
    """``to_torch`` of a network with an affine term."""
    import torch

    class SkipReLUNetwork(torch.nn.Module):
        """``below`` (the layers before the last hidden one, ``Linear → ReLU`` each; empty for
        one hidden layer), then ``Linear → ReLU → Linear`` (``hidden``, ``out``) plus a
        bias-free ``Linear`` ``skip`` from the last hidden layer's input."""

        def __init__(self) -> None:
            super().__init__()
            self.below = torch.nn.Sequential(
                *(m for w, b in net.layers[:-2] for m in (_linear(w, b, dtype), torch.nn.ReLU())))
            self.hidden = _linear(*net.layers[-2], dtype)
            self.out = _linear(net.weight1, net.bias1, dtype)
            self.skip = _linear(net.skip, None, dtype)

        def forward(self, x: Any) -> Any:
            a = self.below(x)
            return self.out(torch.relu(self.hidden(a))) + self.skip(a)

    return SkipReLUNetwork()


def _input_range(layers: Sequence[tuple[Array, Array]], d: int,
                 bounds: tuple[float, float]) -> tuple[Array, Array]:
    """Bounds on the activations after ``layers`` (ReLU after each) over the box ``bounds^d``,
    by interval arithmetic: valid, not tight."""
    low, high = np.full(d, float(bounds[0])), np.full(d, float(bounds[1]))
    for w, b in layers:
        pos, neg = np.maximum(w, 0.0), np.minimum(w, 0.0)
        low, high = (np.maximum(pos @ low + neg @ high + b, 0.0),
                     np.maximum(pos @ high + neg @ low + b, 0.0))
    return low, high


def _frozen(value: ArrayLike, name: str) -> Array:
    """A read-only float64 copy; ``ValueError`` on NaN or inf."""
    out = np.array(value, dtype=np.float64, copy=True)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} contains NaN or inf")
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class ReLUNetwork:
    """A fully connected ``d → h → K`` ReLU network in float64 (``d → h_1 → … → h_L → K`` with
    ``hidden_layers``).

    Parameters
    ----------
    weight0, bias0:
        First layer, shapes ``(h, d)`` and ``(h,)`` (the paper's ``A(0)ᵀ`` and ``B(0)``).
    weight1, bias1:
        Logit layer, shapes ``(K, h)`` and ``(K,)`` (the paper's ``A(1)ᵀ`` and ``B(1)``).
    metadata:
        Free-form JSON-serialisable description (dataset, seed, accuracy, ...), saved with it.
    skip:
        Optional affine term ``S``, shape ``(K, h_{L-1})``, added to the logits as ``a_{L-1}
        Sᵀ``, ``a_{L-1}`` the input of the last hidden layer (for one hidden layer the inputs
        ``x``, and ``S`` is ``(K, d)``); ``None`` for the plain network of §6.1.
    hidden_layers:
        For a deeper network, the ``(weight, bias)`` pairs between the first hidden layer and
        the logit layer, each ``(h_{i+1}, h_i)`` and ``(h_{i+1},)`` and followed by a ReLU;
        ``weight1`` is then ``(K, h_L)``. Empty (the default): one hidden layer.

    Raises ``ValueError`` for inconsistent shapes, NaN or inf.
    """

    weight0: Array
    bias0: Array
    weight1: Array
    bias1: Array
    metadata: dict[str, Any] = field(default_factory=dict)
    skip: Array | None = None
    hidden_layers: tuple[tuple[Array, Array], ...] = ()

    def __post_init__(self) -> None:
        names = ("weight0", "bias0", "weight1", "bias1") + (("skip",) if self.skip is not None
                                                             else ())
        arrays = {name: _frozen(getattr(self, name), name) for name in names}
        for name, value in arrays.items():
            object.__setattr__(self, name, value)
        inner = tuple((_frozen(w, f"hidden_layers[{i}] weight"),
                       _frozen(b, f"hidden_layers[{i}] bias"))
                      for i, (w, b) in enumerate(self.hidden_layers))
        object.__setattr__(self, "hidden_layers", inner)
        layers = [(arrays["weight0"], arrays["bias0"]), *inner,
                  (arrays["weight1"], arrays["bias1"])]
        width = arrays["weight0"].shape[1] if arrays["weight0"].ndim == 2 else None
        for i, (w, b) in enumerate(layers):
            if w.ndim != 2 or b.ndim != 1 or b.shape[0] != w.shape[0] or w.shape[1] != width:
                raise ValueError(
                    f"inconsistent shapes at layer {i}: weight {w.shape} and bias {b.shape} "
                    f"after a layer of width {width} (ReLUNetwork expects weight0 (h, d), bias0 "
                    "(h,), ..., weight1 (K, h_L), bias1 (K,))"
                )
            width = w.shape[0]
        if self.skip is not None:
            k, below = arrays["weight1"].shape[0], layers[-2][0].shape[1]
            if arrays["skip"].shape != (k, below):
                raise ValueError(f"skip must have shape (K, h_(L-1)) = {(k, below)} (the logits "
                                 "by the last hidden layer's input); got "
                                 f"{arrays['skip'].shape}")

    # ------------------------------------------------------------------ shapes
    @property
    def input_dim(self) -> int:
        """``d``, the number of inputs."""
        return int(self.weight0.shape[1])

    @property
    def widths(self) -> tuple[int, ...]:
        """``(h_1, ..., h_L)``, the width of each hidden layer."""
        return (int(self.weight0.shape[0]), *(int(w.shape[0]) for w, _ in self.hidden_layers))

    @property
    def depth(self) -> int:
        """``L``, the number of hidden ReLU layers."""
        return 1 + len(self.hidden_layers)

    @property
    def hidden(self) -> Any:
        """``h``, the number of hidden units of a one-hidden-layer network; the widths
        ``(h_1, ..., h_L)`` of a deeper one."""
        return self.widths[0] if self.depth == 1 else self.widths

    @property
    def num_outputs(self) -> int:
        """``K``, the number of logits."""
        return int(self.weight1.shape[0])

    @property
    def layers(self) -> tuple[tuple[Array, Array], ...]:
        """Every affine layer ``(weight, bias)``, the first hidden layer to the logit layer."""
        return ((self.weight0, self.bias0), *self.hidden_layers, (self.weight1, self.bias1))

    @property
    def num_parameters(self) -> int:
        """Number of trainable parameters: ``h(d + 1) + K(h + 1)`` for one hidden layer, every
        layer's weights and biases in general (``+ K h_{L-1}`` with ``skip``)."""
        extra = 0 if self.skip is None else self.skip.size
        return sum(w.size + b.size for w, b in self.layers) + extra

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
        """First-layer pre-activations ``x A(0) + B(0)``, shape ``(n, h_1)``."""
        return self._check_input(x) @ self.weight0.T + self.bias0

    def hidden_activations(self, x: ArrayLike) -> Array:
        """``ReLU(x A(0) + B(0))``, the first hidden layer, shape ``(n, h_1)``."""
        return np.maximum(self.preactivations(x), 0.0)

    def layer_preactivations(self, x: ArrayLike) -> list[Array]:
        """Pre-activations of every hidden layer, shapes ``(n, h_1), ..., (n, h_L)``."""
        a, out = self._check_input(x), []
        for w, b in self.layers[:-1]:
            out.append(a @ w.T + b)
            a = np.maximum(out[-1], 0.0)
        return out

    def logits(self, x: ArrayLike) -> Array:
        """The logit function ``O_L(x)`` of §6.1 (plus ``a_{L-1} Sᵀ``), shape ``(n, K)``,
        float64."""
        below = a = self._check_input(x)
        for w, b in self.layers[:-1]:
            below, a = a, np.maximum(a @ w.T + b, 0.0)
        out = a @ self.weight1.T + self.bias1
        return out if self.skip is None else out + below @ self.skip.T

    __call__ = logits

    def predict(self, x: ArrayLike) -> NDArray[np.int64]:
        """Predicted labels, shape ``(n,)``: the argmax of the logits, or for one output
        (``K = 1``, a binary classifier) ``1`` where the logit is positive, else ``0``."""
        return decisions(self.logits(x))

    def without_skip(self, input_bounds: tuple[float, float] = (0.0, 1.0)) -> ReLUNetwork:
        """A plain ReLU network of the same depth equal to this one on the box ``input_bounds``.

        Each output's affine term ``S_k a_{L-1}`` becomes one unit of the last hidden layer,
        ``ReLU(S_k a_{L-1} + c_k)`` with ``c_k`` large enough that it is active on the whole box
        (the range of ``a_{L-1}`` over the box bounded by interval arithmetic, layer by layer),
        and ``- c_k`` goes into the output bias: exact on the box, not outside it. Outputs whose
        row of ``S`` is zero add no unit. Returns ``self`` when there is no affine term.
        """
        if self.skip is None:
            return self
        if not np.all(np.isfinite(input_bounds)):
            raise ValueError(f"input_bounds must be finite to rewrite the affine term as units "
                             f"active on the whole box; got {input_bounds}")
        low, high = _input_range(self.layers[:-2], self.input_dim, input_bounds)
        rows = np.flatnonzero(np.any(self.skip != 0, axis=1))
        s = self.skip[rows]
        lowest = np.sum(np.minimum(s * low, s * high), axis=1)  # min of S_k a_{L-1} on the box
        c = np.maximum(-lowest, 0.0) + 1.0
        w1_extra = np.zeros((self.num_outputs, len(rows)))
        w1_extra[rows, np.arange(len(rows))] = 1.0
        b1 = self.bias1.copy()
        b1[rows] -= c
        layers = [*self.layers[:-2], (np.concatenate([self.layers[-2][0], s]),
                                      np.concatenate([self.layers[-2][1], c]))]
        return ReLUNetwork(
            *layers[0], np.concatenate([self.weight1, w1_extra], axis=1), b1,
            {**self.metadata, "affine_units": len(rows), "exact_on": list(input_bounds)},
            hidden_layers=tuple(layers[1:]),
        )

    # ----------------------------------------------------------------- torch
    def to_torch(self, dtype: Any = None) -> Any:
        """A ``Sequential(Linear, ReLU, ..., Linear)`` with these weights (float64 by default);
        with an affine term, a module whose ``forward`` adds ``skip`` (a bias-free ``Linear``)
        of the last hidden layer's input."""
        import torch

        dtype = torch.float64 if dtype is None else dtype
        if self.skip is not None:
            return _with_skip(self, dtype)
        modules = [m for w, b in self.layers for m in (_linear(w, b, dtype), torch.nn.ReLU())]
        return torch.nn.Sequential(*modules[:-1])

    @classmethod
    def from_torch(cls, module: Any, metadata: dict[str, Any] | None = None) -> ReLUNetwork:
        """Build from a ``Sequential(Linear, ReLU, ..., Linear)`` (or any module whose leaves are
        Linear and ReLU layers in that order), or from the module :meth:`to_torch` makes for a
        network with an affine term."""
        import torch

        def arr(t: Any) -> Array:
            return t.detach().to("cpu", torch.float64).numpy()

        skip = getattr(module, "skip", None)
        if isinstance(skip, torch.nn.Linear) and skip.bias is None:
            below = list(getattr(module, "below", ()))
            kinds = [type(m) for m in below] == [torch.nn.Linear, torch.nn.ReLU] * (len(below) // 2)
            top = [getattr(module, name, None) for name in ("hidden", "out")]
            if not kinds or not all(isinstance(m, torch.nn.Linear) and m.bias is not None
                                    for m in [*below[::2], *top]):
                raise ValueError("from_torch expects the module to_torch makes for a network "
                                 "with an affine term (below: Linear, ReLU, ...; hidden, out: "
                                 f"Linear with bias; skip: Linear without); got {module!r}")
            first, *inner = [(arr(m.weight), arr(m.bias)) for m in [*below[::2], module.hidden]]
            return cls(*first, arr(module.out.weight), arr(module.out.bias),
                       dict(metadata or {}), skip=arr(skip.weight), hidden_layers=tuple(inner))
        linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
        others = [
            m
            for m in module.modules()
            if len(list(m.children())) == 0 and not isinstance(m, torch.nn.Linear | torch.nn.ReLU)
            and not isinstance(m, torch.nn.Flatten)
        ]
        if len(linears) < 2 or others:
            raise ValueError(
                "from_torch expects Linear -> ReLU -> ... -> Linear (ReLU hidden layers); got "
                f"{module!r}"
            )
        first, *inner, last = ((arr(m.weight), arr(m.bias)) for m in linears)
        return cls(*first, *last, dict(metadata or {}), hidden_layers=tuple(inner))

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
        for i, (w, b) in enumerate(self.hidden_layers):
            tensors[f"hidden_layers.{i}.weight"] = np.ascontiguousarray(w)
            tensors[f"hidden_layers.{i}.bias"] = np.ascontiguousarray(b)
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
        inner = []
        while f"hidden_layers.{len(inner)}.weight" in tensors:
            i = len(inner)
            inner.append((tensors[f"hidden_layers.{i}.weight"], tensors[f"hidden_layers.{i}.bias"]))
        return cls(
            tensors["weight0"], tensors["bias0"], tensors["weight1"], tensors["bias1"], metadata,
            skip=tensors.get("skip"), hidden_layers=tuple(inner),
        )

    # ------------------------------------------------------------- builders
    @classmethod
    def random(
        cls,
        input_dim: int,
        hidden: int | Sequence[int],
        num_outputs: int = 10,
        *,
        seed: int = 0,
        metadata: dict[str, Any] | None = None,
    ) -> ReLUNetwork:
        """A random-weight victim (Gaussian weights with He scaling, biases N(0, 0.1²)), for
        scale tests. ``hidden`` is the width of the one hidden layer, or the widths
        ``(h_1, ..., h_L)`` of a deeper network."""
        widths = (hidden,) if isinstance(hidden, int | np.integer) else tuple(hidden)
        if not widths or min(input_dim, num_outputs, *widths) < 1:
            raise ValueError("input_dim, every hidden width and num_outputs must be positive")
        rng = np.random.default_rng(seed)
        sizes = (input_dim, *(int(h) for h in widths))
        layers = []
        for fan_in, fan_out in zip(sizes, sizes[1:], strict=False):
            w = rng.standard_normal((fan_out, fan_in)) * np.sqrt(2.0 / fan_in)
            layers.append((w, rng.standard_normal(fan_out) * 0.1))
        w1 = rng.standard_normal((num_outputs, sizes[-1])) * np.sqrt(2.0 / sizes[-1])
        b1 = rng.standard_normal(num_outputs) * 0.1
        meta = {"kind": "random", "seed": seed, **(metadata or {})}
        return cls(*layers[0], w1, b1, meta, hidden_layers=tuple(layers[1:]))
