"""Hyperplanes fitted through points: the smallest right singular vector of ``A = [points, 1]``.

Deep extraction fits one through the crossings located on every neuron's hyperplane (thousands
of points in ``d = 784`` dimensions on a trained MNIST victim's first layer, several times a
neuron), and through the activations below its critical points. A full SVD of ``A`` costs
several times a QR factorisation, and the fit needs one vector of it. From ``_ITERATE`` columns
on, the vector is found by inverse iteration on ``AᵀA = RᵀR`` (``R`` from the QR factorisation;
two triangular solves a step), from the current estimate, which it leaves in one or two steps
when the points pin the plane down; where it does not settle (the two smallest singular values
close) or ``R`` is exactly singular, a full SVD answers. Below, a full SVD is as fast: the QR
and the triangular solves are scipy's, whose BLAS thread pool, called between numpy's, waits on
it (on two cores, a 152 × 101 QR that takes 0.2 ms alone took 4 ms between numpy products).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
from numpy.typing import NDArray

Array = NDArray[np.float64]

__all__ = ["pinned_plane", "plane_through"]

_PINNED = 1e-6  # the second smallest singular value over the largest, of a set on one plane
_SETTLED = 1e-14  # the last inverse-iteration step moved the unit vector less than this
_STEPS = 8
_ITERATE = 400  # columns of [points, 1] from which inverse iteration beats a full SVD


def plane_through(points: Array, hint: Array, offset: float = 0.0) -> tuple[Array, float, float]:
    """The hyperplane ``n · x + c = 0`` through ``points`` ``(m, d)``, ``m > d``: the smallest
    right singular vector of ``[points, 1]``, found from ``(hint, offset)`` and oriented like
    ``hint``. Returns ``n`` (unit), ``c`` and the relative residual (smallest over largest
    singular value; from ``_ITERATE`` columns on, the largest is estimated from below by a few
    power steps, so the ratio is an estimate, only reported)."""
    a = _with_ones(points)
    if a.shape[1] < _ITERATE:
        return _oriented(*_svd_smallest(a)[:3], hint)
    return _oriented(*_smallest(a, _triangle(a), np.append(hint, offset)), hint)


def pinned_plane(points: Array, hint: Array,
                 offset: float = 0.0) -> tuple[Array, float, float] | None:
    """:func:`plane_through`, or ``None`` when more than one hyperplane passes through the
    points: the second smallest singular value of ``[points, 1]`` under ``1e-6`` of the
    largest. That value is the smallest of ``[points, 1]`` with a row ``s_1 v_nᵀ`` added (the
    smallest singular vector lifted out of the way; ``R`` updated by Givens rotations),
    estimated from above by inverse iteration; near the threshold a full SVD decides."""
    a = _with_ones(points)
    if a.shape[1] < _ITERATE:
        v, small, top, second = _svd_smallest(a)
        return None if second < _PINNED * top else _oriented(v, small, top, hint)
    r = _triangle(a)
    v, small, top = _smallest(a, r, np.append(hint, offset))
    n = a.shape[1]
    lifted = scipy.linalg.qr_insert(np.eye(n), r, top * v, n, which="row",
                                    check_finite=False)[1][:n]
    second = _inverse_iteration(lifted, np.linspace(1.0, 2.0, n), settle=False)
    estimate = 0.0 if second is None else float(np.linalg.norm(lifted @ second))
    if estimate < 100 * _PINNED * top:  # near the threshold, or not measured: exactly
        s = np.linalg.svd(a, compute_uv=False)
        if s[-2] < _PINNED * s[0]:
            return None
    return _oriented(v, small, top, hint)


def _with_ones(points: Array) -> Array:
    return np.hstack([points, np.ones((len(points), 1))])


def _triangle(a: Array) -> Array:
    """``R`` ``(n, n)`` of ``a = QR`` ``(m, n)``, ``m ≥ n``."""
    return scipy.linalg.qr(a, mode="r", check_finite=False)[0][: a.shape[1]]


def _svd_smallest(a: Array) -> tuple[Array, float, float, float]:
    """By a full SVD: the smallest right singular vector of ``a`` (unit), its singular value,
    the largest and the second smallest."""
    _, s, vt = np.linalg.svd(a, full_matrices=False)
    return vt[-1], float(s[-1]), float(s[0]), float(s[-2])


def _smallest(a: Array, r: Array, start: Array) -> tuple[Array, float, float]:
    """The smallest right singular vector of ``a`` (unit), its singular value and the largest:
    by inverse iteration on ``r`` from ``start``, or a full SVD where it does not settle."""
    v = _inverse_iteration(r, start, settle=True)
    if v is None:
        return _svd_smallest(a)[:3]
    return v, float(np.linalg.norm(r @ v)), _largest_singular_value(r)


def _oriented(v: Array, small: float, top: float, hint: Array) -> tuple[Array, float, float]:
    nc = v / np.linalg.norm(v[:-1])
    if nc[:-1] @ hint < 0:
        nc = -nc
    return nc[:-1], float(nc[-1]), small / top


def _inverse_iteration(r: Array, start: Array, *, settle: bool) -> Array | None:
    """A unit vector toward the eigenvector of ``RᵀR`` with the smallest eigenvalue, by up to
    ``_STEPS`` steps of inverse iteration from ``start``; ``None`` when ``R`` is exactly
    singular or, with ``settle``, when the last step still moved it by more than
    ``_SETTLED``."""
    v = start / np.linalg.norm(start)
    moved = np.inf
    for _ in range(_STEPS):
        try:
            w = scipy.linalg.solve_triangular(
                r, scipy.linalg.solve_triangular(r, v, trans="T", check_finite=False),
                check_finite=False)
        except np.linalg.LinAlgError:
            return None
        length = float(np.linalg.norm(w))
        if not np.isfinite(length) or length == 0:
            return None
        w /= length
        moved = min(float(np.linalg.norm(w - v)), float(np.linalg.norm(w + v)))
        v = w
        if moved <= _SETTLED:
            break
    return None if settle and moved > _SETTLED else v


def _largest_singular_value(r: Array) -> float:
    """``R``'s largest singular value, from below, by 4 power steps on ``RᵀR`` (it scales a
    residual that is only reported, and a threshold that a full SVD checks when near)."""
    v = np.ones(r.shape[1]) / np.sqrt(r.shape[1])
    for _ in range(4):
        w = r.T @ (r @ v)
        length = float(np.linalg.norm(w))
        if not length > 0:
            return float(np.abs(r).max())
        v = w / length
    return float(np.linalg.norm(r @ v))
