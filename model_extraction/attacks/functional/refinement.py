"""Precision refinement of a deep extraction: more points on each hyperplane, each located by
one 2-linearity test (Algorithm 1 of Jagielski et al. 2020, in 6 queries), and the hyperplane
refitted through all of them (Carlini et al., CRYPTO 2020, §4.5: so that errors do not compound
with depth).

A first-layer hyperplane is flat: points are placed anywhere on it. A second-layer one is flat
only within a region of the first layer: points are placed near its known critical points, in
their regions, and the fit is done in the space of first-layer activations, where the
hyperplane ``v · a + b = 0`` is flat everywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from model_extraction.oracle import BudgetExhaustedError, Oracle

from .layers import plane_through

Array = NDArray[np.float64]

__all__ = ["better_plane", "crossings", "refit_first_layer", "refit_next_layer"]

_NEAR = 1e-6  # a point found this close to the estimated hyperplane lies on it


def crossings(oracle: Oracle, points: Array, directions: Array, radius: Array) -> Array:
    """Where each line ``points[i] + t · directions[i]``, ``|t| ≤ radius[i]``, crosses its one
    critical point: ``(n, d)`` points, NaN rows where the segment holds no kink or more than one
    (the 2-linearity test and two checks fail). Costs ``6 n`` queries."""
    n, d = points.shape
    r = np.broadcast_to(np.asarray(radius, dtype=np.float64), (n,))
    ts = r[:, None] * np.array([-1.0, -1.0 + 1e-3, 1.0 - 1e-3, 1.0])
    y = np.asarray(oracle((points[:, None, :] + ts[:, :, None] * directions[:, None, :])
                          .reshape(-1, d)), dtype=np.float64).reshape(n, 4, -1)
    eps = (ts[:, 1] - ts[:, 0])[:, None]
    left, right = (y[:, 1] - y[:, 0]) / eps, (y[:, 3] - y[:, 2]) / eps
    k = np.argmax(np.abs(right - left), axis=1)
    i = np.arange(n)
    # the two pieces meet where y0 + m_l (t + r) = y3 + m_r (t - r)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (y[i, 3, k] - y[i, 0, k] - r * (left[i, k] + right[i, k])) \
            / (left[i, k] - right[i, k])
    visible = np.abs(right - left)[i, k] > 1e-6 * (np.abs(left) + np.abs(right)).max(axis=1)
    t = np.where(visible & (np.abs(t) < 0.9 * r), t, np.nan)
    at = np.nan_to_num(t)
    probe = points + at[:, None] * directions
    side = points + (0.5 * (at - r))[:, None] * directions
    z = np.asarray(oracle(np.concatenate([probe, side])), dtype=np.float64)
    tol = 1e-9 * (1 + np.abs(y).max(axis=(1, 2)))
    ok = (np.max(np.abs(z[:n] - y[:, 0] - left * (at + r)[:, None]), axis=1) <= tol) \
        & (np.max(np.abs(z[n:] - y[:, 0] - left * (0.5 * (at + r))[:, None]), axis=1) <= tol)
    return np.where((ok & np.isfinite(t))[:, None], probe, np.nan)


def better_plane(points: Array, row: Array, offset: float) -> tuple[Array, float, float]:
    """The hyperplane through ``points`` ``(m, d)``, if it beats ``(row, offset)``.

    The points are split in two halves: a plane fitted on one (after dropping points far off
    it: kinks of other neurons that passed the tests) must predict the other better than the
    current estimate does, else the estimate is kept (also when the points lie in a subspace
    that leaves the hyperplane undetermined). Returns row, offset and the relative
    residual of the kept plane on the held-out half (NaN when the estimate was kept)."""
    d = points.shape[1]
    half = len(points) // 2
    if half <= d:
        return row, offset, np.nan
    fit, held = points[:half], points[half:]
    s = np.linalg.svd(np.hstack([fit, np.ones((half, 1))]), compute_uv=False)
    if s[-2] < 1e-6 * s[0]:
        return row, offset, np.nan  # the points do not pin down one hyperplane
    for _ in range(2):
        n, c, _ = plane_through(fit, row)
        off = np.abs(fit @ n + c)
        fit = fit[off <= 10 * np.median(off) + 1e-300] if len(fit) > d + 1 else fit
    n, c, _ = plane_through(fit, row)
    scale = np.abs(held).max() + 1.0
    new, old = np.median(np.abs(held @ n + c)), np.median(np.abs(held @ row + offset))
    if not new < old:
        return row, offset, np.nan
    both = np.concatenate([fit, held[np.abs(held @ n + c) <= 10 * new + 1e-300]])
    n, c, _ = plane_through(both, n)
    return n, c, float(new / scale)


def _first_task(oracle: Oracle, row: Array, offset: float, p: Array,
                scale: float) -> tuple[Array, float, float, int]:
    """One first-layer hyperplane refitted through the crossings near the points ``p`` placed
    on it; also the queries spent (for a copy of the oracle in another process)."""
    before = oracle.queries
    pts = crossings(oracle, p, np.repeat(row[None], len(p), axis=0), 1e-3 * scale)
    pts = pts[np.abs(pts @ row + offset) < _NEAR * scale]  # NaN rows drop too
    return (*better_plane(pts, row, offset), oracle.queries - before)


def _next_task(oracle: Oracle, first: tuple[Array, Array], row: Array, bias: float, p: Array,
               unit: Array, radius: Array) -> tuple[Array, float, float, int]:
    """One next-layer hyperplane refitted, in first-layer activation space, through the
    crossings along ``unit`` from ``p``; also the queries spent."""
    w1, b1 = first
    before = oracle.queries
    pts = crossings(oracle, p, unit, radius)
    acts = np.maximum(pts @ w1.T + b1, 0.0)
    near = np.abs(acts @ row + bias) < _NEAR * np.linalg.norm(acts, axis=1)
    acts = acts[near]  # a kink of another neuron, or none: dropped (NaN rows too)
    spent = oracle.queries - before
    if not np.all(acts.any(axis=0) | (row == 0)):
        return row, bias, np.nan, spent
    return (*better_plane(acts, row, bias), spent)


def _run_tasks(oracle: Oracle, task: Any, argsets: list[tuple[Any, ...]], queries: int,
               executor: Any) -> list[tuple[Array, float, float, int]]:
    """``task(oracle, *args)`` for each of ``argsets``: in order here, or as tasks of
    ``executor`` (see :mod:`model_extraction.sweep`) on copies of the oracle, whose queries
    (``queries`` in all, checked against the budget first) are then counted here."""
    if executor is None:
        return [task(oracle, *args) for args in argsets]
    if oracle.remaining is not None and queries > oracle.remaining:
        raise BudgetExhaustedError(int(oracle.budget or 0), oracle.queries, queries)
    handle = executor.put(oracle)
    results = executor.map(task, [(handle, *args) for args in argsets])
    oracle.queries += sum(r[3] for r in results)
    return results


def refit_first_layer(oracle: Oracle, rows: Array, offsets: Array, rng: np.random.Generator,
                      *, scale: float, executor: Any = None) -> tuple[Array, Array, Array]:
    """Each first-layer hyperplane refitted through ``3 (d + 1)`` points placed on it (one
    independent task per neuron: ``executor`` runs them in parallel, with the same results
    and query count). Returns the rows, offsets and the relative residual of each fit (NaN
    where the points did not beat the estimate: the hyperplane is then kept as it was)."""
    h, d = rows.shape
    argsets = []
    for i in range(h):
        p = rng.standard_normal((3 * (d + 1), d)) * scale
        p -= (p @ rows[i] + offsets[i])[:, None] * rows[i]
        argsets.append((rows[i], float(offsets[i]), p, scale))
    done = _run_tasks(oracle, _first_task, argsets, 6 * 3 * (d + 1) * h, executor)
    return (np.array([r[0] for r in done]).reshape(h, d), np.array([r[1] for r in done]),
            np.array([r[2] for r in done]))


def _onto(p: Array, w1: Array, b1: Array, row: Array, bias: float, steps: int = 3) -> Array:
    """``p`` moved onto the estimated next-layer hyperplane ``row · ReLU(w1 x + b1) + bias = 0``
    by Newton steps along its local normal (exact within one region of the first layer)."""
    for _ in range(steps):
        pre = p @ w1.T + b1
        normal = ((pre > 0) * row) @ w1
        z = np.maximum(pre, 0.0) @ row + bias
        square = np.sum(normal * normal, axis=1)
        p = p - (z / np.where(square > 0, square, np.inf))[:, None] * normal
    return p


def refit_next_layer(oracle: Oracle, first: tuple[Array, Array], rows: Array, biases: Array,
                     anchors: list[Array], rng: np.random.Generator, *, scale: float,
                     executor: Any = None) -> tuple[Array, Array, Array]:
    """Each next-layer hyperplane refitted, in first-layer activation space, through points
    placed on it: half near its critical points ``anchors[j]`` ``(m_j, d)`` (moved off the
    anchor within its region), half anywhere (for regions far apart, which pin the hyperplane
    down in every direction), each brought onto the estimate along its local normal and then
    located by a crossing test (one task per neuron, as :func:`refit_first_layer`). Returns the
    rows, biases and relative residuals (NaN where the points did not beat the estimate)."""
    w1, b1 = first
    h1, d = w1.shape
    argsets = []
    for j, anchor in enumerate(anchors):
        n = 3 * (h1 + 1)
        near = anchor[rng.integers(len(anchor), size=n - n // 2)]
        step = rng.standard_normal(near.shape)
        room = np.min(np.abs(near @ w1.T + b1), axis=1) / np.linalg.norm(w1, axis=1).max()
        near = near + 0.3 * (room / np.linalg.norm(step, axis=1))[:, None] * step
        far = rng.standard_normal((n // 2, d)) * 0.5 * scale  # where the lines start
        p = _onto(np.concatenate([near, far]), w1, b1, rows[j], biases[j])
        pre = p @ w1.T + b1
        room = np.min(np.abs(pre), axis=1) / np.linalg.norm(w1, axis=1).max()
        normal = ((pre > 0) * rows[j]) @ w1  # the local normal in input space
        length = np.linalg.norm(normal, axis=1, keepdims=True)
        unit = normal / np.where(length > 0, length, 1.0)
        argsets.append((first, rows[j], float(biases[j]), p, unit, 0.3 * room + 1e-12 * scale))
    done = _run_tasks(oracle, _next_task, argsets, 6 * 3 * (h1 + 1) * len(anchors), executor)
    return (np.array([r[0] for r in done]).reshape(rows.shape), np.array([r[1] for r in done]),
            np.array([r[2] for r in done]))
