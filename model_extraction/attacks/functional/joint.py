"""Signatures solved jointly across critical points whose own coefficients are not unique
(Carlini et al., CRYPTO 2020, §4.3).

Where more units of the top layer are active than the layers below let through, the
gradients of the active units are dependent, and one critical point's normal does not fix the
next-layer neuron's weights: ``Σ_{k active} v_k g_k(x) = λ β(x)`` leaves ``v`` free on a null
space. A neuron active almost everywhere crosses zero only where most units below are active,
so *every* one of its critical points may be like that (no partial signature to start from).
Each point still gives linear equations in ``(v, b)``: the normal's component off ``β`` must
vanish, and the point lies on the hyperplane, ``v · a_T(x) + b = 0``. A few points of one
neuron together fix ``(v, b)`` on the units active at any of them. Which points belong
together is not known: random triples are solved (RANSAC), and a triple whose system has a
one-dimensional null space is a candidate; the points consistent with it join (four or more,
with twice as many equations as unknowns between them), and the row is solved again from all
of them. A candidate that agrees with a row already known, where both are known, extends it.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from .linalg import thin_svd
from .prefix import Prefix
from .signatures import Signatures, first_coordinates

Array = NDArray[np.float64]

__all__ = ["joint_rows"]

_NULL = 1e-6  # smallest singular value of a triple's system, relative: a solution
_GAP = 1e-3  # second smallest, relative: the solution is unique (on the units covered)
_FITS = 1e-6  # a point's equations at a unit-norm solution: the point is the neuron's
_TRIES = 2000


def _systems(prefix: Prefix, points: Array, normals: Array) -> tuple[list[Array], Array]:
    """Each point's equations in ``(v, b)`` ``(k_i, h_T + 1)``, orthonormal rows, and the top
    units active there ``(m, h_T)``."""
    beta = first_coordinates(prefix, normals)  # (h1, m)
    pres, jac = prefix.local(points)
    active = pres[-1] > 0
    acts = np.maximum(pres[-1], 0.0)
    out = []
    for i in range(len(points)):
        b = beta[:, i] / max(float(np.linalg.norm(beta[:, i])), 1e-300)
        grads = (jac[-1][i] * active[i][:, None]).T  # (h1, h_T): v ↦ Σ v_k g_k
        off = grads - np.outer(b, b @ grads)  # its component off the measured normal
        if np.isfinite(off).all():
            _, s, vt = thin_svd(off)
            rows = vt[s > 1e-9 * max(s[0], 1e-300)]
        else:  # a normal not measured: the point lies on the hyperplane, no more
            rows = np.zeros((0, off.shape[1]))
        plane = np.append(acts[i], 1.0)
        out.append(np.vstack([np.hstack([rows, np.zeros((len(rows), 1))]),
                              plane / np.linalg.norm(plane)]))
    return out, active


def _solve(eqs: list[Array], cover: NDArray[np.bool_]) -> Array | None:
    """The unit ``(v, b)`` on the ``cover`` units (zero elsewhere) that the stacked equations
    fix, or ``None`` when they fix none or more than one (or are not finite)."""
    cols = np.append(cover, True)
    stacked = np.vstack([e[:, cols] for e in eqs])
    if len(stacked) < cols.sum() or not np.isfinite(stacked).all():
        return None
    _, s, vt = thin_svd(stacked)
    if s[-1] > _NULL * s[0] or s[-2] < _GAP * s[0]:
        return None
    sol = np.zeros(len(cols))
    sol[cols] = vt[-1]
    return sol


def _fits(eqs: list[Array], active: NDArray[np.bool_], sol: Array,
          known: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Which points' equations a unit ``sol`` known on ``known`` (zero elsewhere) satisfies,
    its missing entries on units active at a point solved for there (a point with fewer
    than three equations to spare is not claimed)."""
    out = np.zeros(len(eqs), dtype=bool)
    for i, (e, act) in enumerate(zip(eqs, active, strict=True)):
        lacking = np.append(act & ~known, False)
        residual = e @ np.where(lacking, 0.0, sol)
        if lacking.any():
            if len(e) - lacking.sum() < 3:
                continue
            y, *_ = np.linalg.lstsq(e[:, lacking], -residual, rcond=None)
            residual = residual + e[:, lacking] @ y
        out[i] = np.linalg.norm(residual) <= _FITS
    return out


def _agrees(row: Array, bias: float, known: NDArray[np.bool_], new: Array,
            cover: NDArray[np.bool_]) -> float | None:
    """The scale that maps ``new`` ``(v, b)`` onto the row where both are known (three units
    or more), or ``None`` when they are not one neuron."""
    common = known & cover
    if common.sum() < 3:
        return None
    mine, theirs = np.append(row[common], bias), np.append(new[:-1][common], new[-1])
    lam = (mine @ theirs) / (theirs @ theirs)
    if np.linalg.norm(mine - lam * theirs) > _FITS * np.linalg.norm(mine):
        return None
    return float(lam)


def joint_rows(layer: Signatures, prefix: Prefix, points: Array, normals: Array,
               candidates: NDArray[np.int64], rng: np.random.Generator) -> Signatures:
    """``layer`` with the rows solved jointly from the ``candidates`` (indices into
    ``points``, ``normals`` ``(n, d)``: critical points whose coefficients are not unique)
    that no row of ``layer`` explains: a row that agrees with one of ``layer`` where both are
    known extends it, any other is a new row known on the units active at any of its points;
    four points or more must agree on each."""
    if len(candidates) < 4:
        return layer
    eqs, active = _systems(prefix, points[candidates], normals[candidates])
    rows, biases, known = list(layer.rows), list(layer.biases), list(layer.known)
    members, residuals = list(layer.members), list(layer.residuals)
    free = np.ones(len(candidates), dtype=bool)
    for row, bias, seen in zip(rows, biases, known, strict=True):
        sol = np.append(np.where(seen, row, 0.0), bias)
        free &= ~_fits(eqs, active, sol / np.linalg.norm(sol), seen)
    for _ in range(_TRIES):
        if free.sum() < 4:
            break
        sol, cover, agree = _candidate(eqs, active, free, rng)
        if sol is None:
            continue
        free[agree] = False
        for j in range(len(rows)):
            lam = _agrees(rows[j], biases[j], known[j], sol, cover)
            if lam is not None:
                rows[j] = np.where(known[j], rows[j], lam * sol[:-1])
                known[j] = known[j] | cover
                members[j] = np.concatenate([members[j], candidates[agree]])
                break
        else:
            scale = np.linalg.norm(sol[:-1])
            rows.append(sol[:-1] / scale)
            biases.append(sol[-1] / scale)
            known.append(cover)
            members.append(candidates[agree])
            residuals.append(np.nan)
    h = layer.rows.shape[1]
    return Signatures(np.array(rows).reshape(-1, h), np.array(biases),
                      np.array(known, dtype=bool).reshape(-1, h), tuple(members),
                      np.array(residuals))


def _candidate(eqs: list[Array], active: NDArray[np.bool_], free: NDArray[np.bool_],
               rng: np.random.Generator) -> tuple[Array | None, NDArray[np.bool_], Array]:
    """One RANSAC try among the ``free`` points: the unit ``(v, b)`` that three random ones
    fix, solved again from the four or more that agree with it (with twice as many equations
    as unknowns between them: points that give few equations each can agree on a wrong
    solution), the units it is known on and those points; ``(None, …)`` when the try fails."""
    triple = rng.choice(np.flatnonzero(free), 3, replace=False)
    cover = active[triple].any(axis=0)
    sol = _solve([eqs[i] for i in triple], cover)
    if sol is None:
        return None, cover, triple
    agree = np.flatnonzero(_fits(eqs, active, sol, cover) & free)
    if len(agree) < 4 or sum(len(eqs[i]) for i in agree) < 2 * (cover.sum() + 1):
        return None, cover, agree  # too few equations to vouch for it
    return _solve([eqs[i] for i in agree], cover), cover, agree
