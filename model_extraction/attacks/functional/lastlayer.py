"""The last hidden layer's orientations and the logit layer of a deep network, by least squares
on answers the attack holds or buys (no 2^h search).

With the last hidden layer's rows known up to sign, the logits are affine in its activations
only when every orientation is right: a neuron kept the wrong way round computes
``ReLU(-z) = ReLU(z) - z``, off by ``z``, which is affine in the layer *below*. So the logits are
fitted on ``[ReLU(z), a_below, 1]`` (exact for any orientations); the coefficients on
``a_below`` are ``-Σ_{ν flipped} A_ν v_ν``, a linear system for which neurons are flipped. The
flipped ones are turned, and the logit layer fitted again on ``[ReLU(z), 1]`` alone. Where
that is not exact (a unit of the layer active wherever the points were taken, or orientations
the logits leave open), :func:`fit_with_affine` keeps the affine term in ``a_below``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]

__all__ = ["fit_with_affine", "flipped_units", "orient_and_fit"]


_OUTLIER = 10.0  # a residual this many times the median stands out
_FLOOR = 1e-9  # relative residuals below this never stand out (float64 round-off)
_TRIM = 0.05  # the largest share of points dropped


def _fit(features: Array, y: Array) -> tuple[Array, float]:
    """Least squares, trimmed of the points that stand out; the coefficients and the largest
    relative residual over the points kept."""
    scale = max(1.0, float(np.max(np.abs(y))))
    kept = np.ones(len(y), dtype=bool)
    for _ in range(4):
        coef, *_ = np.linalg.lstsq(features[kept], y[kept], rcond=None)
        residuals = np.max(np.abs(features @ coef - y), axis=1) / scale
        out = residuals > max(_OUTLIER * float(np.median(residuals[kept])), _FLOOR)
        if not (out & kept).any() or out.sum() > _TRIM * len(y):
            break
        kept = ~out
    return coef, float(residuals[kept].max())


def _any_orientation(below: Array, z: Array, y: Array) -> tuple[Array, float]:
    """The logits ``y`` fitted on ``[ReLU(z), below, 1]``, exact for any orientation of the
    layer whose pre-activations are ``z``: the coefficients and the largest residual."""
    return _fit(np.hstack([np.maximum(z, 0), below, np.ones((len(below), 1))]), y)


def fit_with_affine(below: Array, rows: Array, biases: Array,
                    y: Array) -> tuple[Array, Array, Array, float]:
    """The logits ``y`` ``(n, K)`` fitted on ``[ReLU(z), below, 1]``, ``z = below @ rows.T +
    biases``: exact for any orientation of ``rows`` ``(h, h_below)`` when they are the last
    hidden layer, whatever its units that never change state where ``below`` ``(n, h_below)``
    was taken (each affine in the layer below there). Returns the logit weights ``(K, h)`` and
    biases ``(K,)``, the affine term ``(K, h_below)`` (the network's ``skip``) and the largest
    residual relative to ``max(1, max |y|)``: small exactly when the layer ``rows`` is the last
    and no unit of it that changes state there is missing."""
    coef, residual = _any_orientation(below, below @ rows.T + biases, y)
    h, h_below = len(rows), below.shape[1]
    return coef[:h].T, coef[h + h_below], coef[h : h + h_below].T, residual


def flipped_units(outs: Array, rows: Array, affine: Array) -> Array:
    """Which units of a hidden layer are kept the wrong way round, from the affine term they
    leave: ``outs`` ``(K, h)`` are the units' logit weights (the logits' jumps across their
    hyperplanes), ``rows`` ``(h, h_below)``, and ``affine`` ``(K, h_below)`` the logits' affine
    term in the layer below, ``-Σ_{ν flipped} outs_ν rows_νᵀ`` (a unit ``ν`` kept the wrong way
    round computes ``ReLU(-z) = ReLU(z) - z``). Returns ``(h,)`` least-squares coefficients,
    1 for a flipped unit and 0 for the others where the system fixes them (``h ≤ K h_below``
    and the ``outs_ν rows_νᵀ`` independent); a coefficient far from both is left open."""
    h = len(rows)
    system = np.stack([-(outs[:, v, None] * rows[v][None, :]).ravel() for v in range(h)], axis=1)
    flipped, *_ = np.linalg.lstsq(system, affine.ravel(), rcond=None)
    return np.asarray(flipped, dtype=np.float64)


def orient_and_fit(below: Array, rows: Array, biases: Array,
                   y: Array) -> tuple[Array, Array, Array, Array, float]:
    """Orient the last hidden layer and fit the logit layer.

    ``below`` ``(n, h_below)``: activations of the layer below at ``n`` inputs; ``rows``
    ``(h, h_below)``, ``biases`` ``(h,)``: the last hidden layer, orientation arbitrary; ``y``
    ``(n, K)``: the logits there. Returns the oriented rows and biases, the logit weights
    ``(K, h)`` and biases ``(K,)``, and the largest residual relative to ``max(1, max |y|)``.
    Neurons whose orientation the system leaves undecided (a coefficient far from 0 and 1) are
    tried both ways, one at a time, keeping the better fit.
    """
    n, h = len(below), len(rows)
    z = below @ rows.T + biases
    coef, _ = _any_orientation(below, z, y)
    a, b = coef[:h].T, coef[h : h + below.shape[1]].T  # (K, h), (K, h_below)
    flipped = flipped_units(a, rows, b)
    signs = np.where(flipped > 0.5, -1.0, 1.0)

    def fit(s: Array) -> tuple[Array, float]:
        return _fit(np.hstack([np.maximum(z * s, 0), np.ones((n, 1))]), y)

    coef, residual = fit(signs)
    for v in np.flatnonzero(np.minimum(np.abs(flipped), np.abs(flipped - 1)) > 0.1):
        trial = signs.copy()
        trial[v] = -trial[v]
        other, res = fit(trial)
        if res < residual:
            signs, coef, residual = trial, other, res
    return rows * signs[:, None], biases * signs, coef[:h].T, coef[h], residual
