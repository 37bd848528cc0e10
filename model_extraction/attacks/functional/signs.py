"""Global sign recovery (§6.5) and last-layer extraction (§6.6).

A critical point fixes a hyperplane but not which side of it the ReLU is active on. Two methods:

* :func:`signs_from_jacobians` (default, no queries): every Jacobian already measured is
  ``J = Σ_i A(1)_i [unit i active] σ_i r_iᵀ``. Expressed in the basis of the recovered rows
  (``C = J R⁺``, which needs the rows to be linearly independent, as §6.1 assumes), column ``i``
  of ``C`` is ``σ_i g_i`` where unit ``i`` is active and ``0`` where it is not; which of the two
  is seen, given the side of hyperplane ``i`` the Jacobian was measured on, is the sign.
* :func:`signs_from_nullspace` (the paper's mode): from the critical point of unit ``i``, step
  along ``w_i = R⁺ e_i``, a direction that moves unit ``i``'s pre-activation and leaves every other
  unit's unchanged (it is defined up to the null space of ``R``, §6.5). Only on the active side
  does the output change: 2 queries per unit.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from model_extraction.oracle import Oracle

Array = NDArray[np.float64]

__all__ = ["fit_last_layer", "signs_from_jacobians", "signs_from_next_layer",
           "signs_from_nullspace"]


def signs_from_jacobians(
    rows: Array, biases: Array, outs: Array, points: Array, jacs: Array
) -> tuple[Array, Array]:
    """Signs ``σ`` (``±1``, shape ``(h,)``) from Jacobians ``jacs`` (``m × K × d``) at ``points``.

    ``rows`` are unit normals ``r_i`` with biases ``β_i`` (so ``y_i = r_i·x + β_i``) and ``outs``
    the ``(h, K)`` vectors ``g_i``. Returns the signs and a per-unit confidence in ``[0, 1]``
    (the worst distance of a vote from the 0/1 decision boundary, doubled).
    """
    m, k, d = jacs.shape
    # Solve C R = J for every Jacobian at once: Rᵀ Cᵀ = Jᵀ, with (m K) right-hand sides.
    coeffs = np.linalg.lstsq(rows.T, jacs.reshape(m * k, d).T, rcond=None)[0]  # (h, m K)
    c = coeffs.T.reshape(m, k, -1)
    y = points @ rows.T + biases  # (m, h)
    g2 = np.einsum("hk,hk->h", outs, outs)
    # Column i of C is σ_i g_i where unit i is active and 0 elsewhere, so its score along g_i is
    # 1 or 0 on the side y_i > 0 (σ = +1 or -1) and 0 or -1 on the side y_i < 0.
    score = np.einsum("mkh,hk->mh", c, outs) / g2
    active_if_positive = np.where(y > 0, score, 1.0 + score)  # ≈ 1 ⇒ σ = +1, ≈ 0 ⇒ σ = -1
    weight = np.abs(y) > 1e-12 * (1 + np.abs(biases))
    votes = np.where(weight, active_if_positive, 0.5)
    mean = votes.sum(0) / np.maximum(weight.sum(0), 1)
    signs = np.where(mean >= 0.5, 1.0, -1.0)
    confidence = np.abs(mean - 0.5) * 2
    return signs, confidence


def signs_from_nullspace(
    oracle: Oracle, rows: Array, points: Array, values: Array, step: float
) -> Array:
    """Paper-mode global sign recovery: 2 queries per unit from its critical point ``points[i]``.

    ``values`` are the outputs at ``points`` (already paid for).
    """
    w = np.linalg.pinv(rows)  # (d, h): rows @ w = I
    w = w / np.linalg.norm(w, axis=0, keepdims=True)
    h = rows.shape[0]
    probes = np.concatenate([points + step * w.T, points - step * w.T])
    out = np.asarray(oracle(probes), dtype=np.float64)
    up = np.linalg.norm(out[:h] - values, axis=1)
    down = np.linalg.norm(out[h:] - values, axis=1)
    return np.where(up >= down, 1.0, -1.0)


def fit_last_layer(
    weight0: Array, bias0: Array, x: Array, y: Array
) -> tuple[Array, Array, float]:
    """Least squares for ``A(1), B(1)`` from queries already answered (§6.6).

    Returns the weights ``(K, h)``, the bias ``(K,)`` and the relative residual of the fit.
    """
    hidden = np.maximum(x @ weight0.T + bias0, 0.0)
    design = np.concatenate([hidden, np.ones((len(x), 1))], axis=1)
    scale = np.maximum(np.abs(design).max(axis=0), 1e-300)
    sol, *_ = np.linalg.lstsq(design / scale, y, rcond=None)
    sol = sol / scale[:, None]
    resid = float(np.max(np.abs(design @ sol - y)) / max(float(np.max(np.abs(y))), 1e-300))
    return sol[:-1].T.copy(), sol[-1].copy(), resid


def signs_from_next_layer(rows: Array, offsets: Array, points: Array,
                          normals: Array) -> tuple[Array, NDArray[np.bool_]]:
    """Orientations of a contractive layer (``h ≤ d``) from the next layer's critical points
    (the preimage argument of Carlini et al., CRYPTO 2020, §4.4, with unit rows).

    At a critical point of a next-layer neuron the normal is ``g = Σ_{i active} v_i σ_i r_i``:
    expressed in the basis of the ``rows`` ``(h, d)`` (unique when they are independent), its
    coefficient on row ``i`` is non-zero exactly where unit ``i`` is active. Which side of
    hyperplane ``i`` the point lies on then says the sign; every point votes. ``points`` and
    ``normals`` are ``(m, d)``. Returns the signs ``(h,)`` and which points were consistent with
    the layer (normal inside the rows' span; the others belong to no next-layer neuron).

    Raises ``ValueError`` for an expansive layer (``h > d``): the coefficients are then not
    unique, and another method (neuron wiggle, Canales-Martínez et al., EUROCRYPT 2024) is needed.
    """
    h, d = rows.shape
    if h > d:
        raise ValueError(f"sign recovery by preimages needs a contractive layer (h <= d); this "
                         f"one has {h} units on {d} inputs")
    coef, *_ = np.linalg.lstsq(rows.T, normals.T, rcond=None)  # (h, m)
    inside = np.linalg.norm(rows.T @ coef - normals.T, axis=0) <= 1e-6
    side = np.sign(points @ rows.T + offsets).T  # (h, m)
    active = np.abs(coef) > 1e-6 * np.abs(coef).max(axis=0, keepdims=True)
    votes = np.sum(np.where(active, side, -side)[:, inside], axis=1)
    return np.where(votes >= 0, 1.0, -1.0), inside
