"""Finite-difference Jacobians of the logit oracle, batched (§6.4).

Inside one linear region the victim is affine, so a forward difference is exact up to rounding:
``J e_j = (O_L(x + δ e_j) - O_L(x)) / δ``. The error is the oracle's rounding noise divided by
``δ``, so steps are as large as the region allows. Every probe is a counted oracle query.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from model_extraction.oracle import Oracle

Array = NDArray[np.float64]

__all__ = ["jacobian_columns", "jacobians", "room_from"]

_MAX_ROWS = 16_384  # rows per oracle call


def _call(oracle: Oracle, x: Array) -> Array:
    outs = [oracle(x[i : i + _MAX_ROWS]) for i in range(0, len(x), _MAX_ROWS)]
    return np.concatenate(outs, axis=0).astype(np.float64, copy=False)


def jacobian_columns(
    oracle: Oracle, points: Array, values: Array, columns: NDArray[np.int64], steps: Array
) -> Array:
    """Columns ``J[:, j]`` at ``points[p]`` for pairs ``(p, j)`` given as parallel arrays.

    ``points`` is ``(m, d)`` with known outputs ``values`` ``(m, K)``; ``columns`` ``(q, 2)`` holds
    ``(point index, input coordinate)`` pairs and ``steps`` ``(q,)`` the step of each probe.
    Returns ``(q, K)`` slopes. The true displacement after float64 rounding is used.
    """
    p, j = columns[:, 0], columns[:, 1]
    x = points[p].copy()
    base = x[np.arange(len(p)), j].copy()
    x[np.arange(len(p)), j] = base + steps
    actual = x[np.arange(len(p)), j] - base
    out = _call(oracle, x)
    return (out - values[p]) / actual[:, None]


def jacobians(oracle: Oracle, points: Array, steps: Array) -> tuple[Array, Array]:
    """Full Jacobians at each of ``points`` (``(m, d)``).

    ``steps`` is one step per point (``(m,)``) or one per point and coordinate (``(m, d)``; a
    negative step probes backwards). Costs ``m (d + 1)`` queries, in batches of at most
    ``16384 // (d + 1)`` points. Returns
    ``(values (m, K), jacobians (m, K, d))``.
    """
    m, d = points.shape
    steps = np.asarray(steps, dtype=np.float64)
    chunk = max(1, _MAX_ROWS // (d + 1))  # points per batch of probes
    if m > chunk:
        parts = [jacobians(oracle, points[s : s + chunk], steps[s : s + chunk])
                 for s in range(0, m, chunk)]
        return (np.concatenate([v for v, _ in parts]), np.concatenate([j for _, j in parts]))
    steps = np.repeat(steps, d) if steps.ndim == 1 else steps.reshape(-1)
    values = _call(oracle, points)
    cols = np.stack(np.meshgrid(np.arange(m), np.arange(d), indexing="ij"), -1).reshape(-1, 2)
    slopes = jacobian_columns(oracle, points, values, cols, steps)
    return values, slopes.reshape(m, d, -1).transpose(0, 2, 1)


def room_from(points: Array, rows: Array, biases: Array) -> tuple[Array, Array]:
    """How far each coordinate of each point may move, forwards and backwards, before it
    meets one of the hyperplanes ``rows · x + biases = 0``: ``(forward, backward)``, both
    ``(m, d)``.

    Along ``e_j`` hyperplane ``k`` is met at ``s = -y_k(x) / R[k, j]`` (``y_k`` is affine), so no
    query is spent. Chunked so that the ``(m, h, d)`` intermediate stays small.
    """
    m, d = points.shape
    forward, backward = np.full((m, d), np.inf), np.full((m, d), np.inf)
    chunk = max(1, int(2e7 // max(1, len(rows) * d)))
    for s in range(0, m, chunk):
        yk = points[s : s + chunk] @ rows.T + biases
        with np.errstate(divide="ignore", invalid="ignore"):
            hit = -yk[:, :, None] / rows[None, :, :]
        forward[s : s + chunk] = np.where(hit > 0, hit, np.inf).min(axis=1)
        backward[s : s + chunk] = np.where(hit < 0, -hit, np.inf).min(axis=1)
    return forward, backward
