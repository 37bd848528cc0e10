"""Signatures of a deeper layer: each neuron's weights in the basis of the layer below
(Carlini et al., CRYPTO 2020, §4.3; partial signatures joined across regions).

At a critical point ``x`` of a neuron of layer 2, the normal is ``Σ_{i ∈ P(x)} v_i r_i`` where
``P(x)`` is the set of first-layer units active at ``x`` and ``r_i`` their (oriented, unit)
rows: the coefficients in that basis are the neuron's weights on ``P(x)``, up to one scale. A
unit inactive at ``x`` is invisible there, so each critical point gives a *partial* signature;
partial signatures that agree (up to scale) on their common units belong to one neuron and are
joined. Finally every neuron's row and bias are refitted as the hyperplane, in the space of
first-layer activations, through all of its critical points: ``v · h1(x) + b = 0`` holds exactly
there, whatever ``P(x)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .planes import pinned_plane
from .prefix import Prefix

Array = NDArray[np.float64]

__all__ = ["Signatures", "coefficients", "complete_rows", "distinct_neurons", "next_layer"]

_AGREE = 1e-10  # |1 - |cos|| of two partial signatures on their common units (>= 3)
_SPAN = 1e-6  # relative residual of a normal that lies in the span of the basis
_BLOCK = 512  # partial signatures compared with all others at once
_RANK = 1e-8  # smallest singular value of a basis, relative to its largest, still independent
# smallest singular value of a layer's unit rows that still makes them independent neurons: a
# neuron further up, seen in one region (a sliver of it, for a rare one), is a combination of
# the rows there up to its measurement error (2e-7 seen); a square random layer's own rows
# come under 1e-6 about once in 10^4 draws (1e-5: 0.07% at 32 x 32)
_DEPENDENT = 1e-6


@dataclass(frozen=True)
class Signatures:
    """Rows ``(h2, h1)`` and biases ``(h2,)`` of a layer on the activations below it
    (orientation arbitrary), which units each row is known on ``(h2, h1)``, the critical points
    of each, and the plane fits' relative residuals ``(h2,)``."""

    rows: Array
    biases: Array
    known: NDArray[np.bool_]
    members: tuple[NDArray[np.int64], ...]
    residuals: Array

    def subset(self, mask: NDArray[np.bool_]) -> Signatures:
        """The neurons where ``mask`` ``(h,)`` is true."""
        return Signatures(self.rows[mask], self.biases[mask], self.known[mask],
                          tuple(m for m, keep in zip(self.members, mask, strict=True) if keep),
                          self.residuals[mask])


def _partials(below: Array, coef: Array) -> list[tuple[int, NDArray[np.bool_], Array]]:
    """(point, active units, unit-norm coefficients) of each point whose coefficients vanish off
    its active units (the others are no neuron of this layer, or were measured badly)."""
    out = []
    for k, (p, a) in enumerate(zip(below > 0, coef, strict=True)):
        scale = np.abs(a).max()
        if scale > 0 and np.all(np.abs(a[~p]) <= 1e-6 * scale):
            out.append((k, p, np.where(p, a, 0.0) / np.linalg.norm(a)))
    return out


def _groups(parts: list[tuple[int, NDArray[np.bool_], Array]]) -> list[list[int]]:
    """Partial signatures that agree up to scale on at least three common units, joined (all
    pairs compared by matrix products, ``_BLOCK`` rows at a time)."""
    if not parts:
        return []
    act = np.array([p for _, p, _ in parts], dtype=np.float64)  # (n, h) indicators
    vec = np.array([a for _, _, a in parts])  # zero off each one's active units
    square = vec * vec
    pairs = []
    for start in range(0, len(parts), _BLOCK):
        block = slice(start, start + _BLOCK)
        common = act[block] @ act.T
        # on the common units: a_i · a_j, |a_i|², |a_j|²
        dot, mine, theirs = vec[block] @ vec.T, square[block] @ act.T, act[block] @ square.T
        with np.errstate(divide="ignore", invalid="ignore"):
            cos = dot / np.sqrt(mine * theirs)
        i, j = np.nonzero((common >= 3) & (np.abs(np.abs(cos) - 1) < _AGREE))
        pairs.append(np.stack([i + start, j])[:, i + start < j])
    i, j = np.concatenate(pairs, axis=1)
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(len(parts), len(parts)))
    _, labels = connected_components(graph, directed=False)
    return [np.flatnonzero(labels == g).tolist() for g in np.unique(labels)]


def _join(parts: list[tuple[int, NDArray[np.bool_], Array]],
          group: list[int]) -> tuple[Array, Array]:
    """One row from partial signatures: each rescaled to agree with what is known, in order of
    decreasing support. Returns the row and where it is known."""
    order = sorted(group, key=lambda i: -parts[i][1].sum())
    row, known = parts[order[0]][2].copy(), parts[order[0]][1].copy()
    for _ in range(2):
        for i in order[1:]:
            _, p, a = parts[i]
            common = p & known
            if common.any():
                lam = (a[common] @ row[common]) / (a[common] @ a[common])
                row[p & ~known] = lam * a[p & ~known]
                known |= p
    return row, known


def first_coordinates(prefix: Prefix, normals: Array) -> Array:
    """Normals ``(m, d)`` in the basis of the first layer's rows: ``(h1, m)``."""
    return np.linalg.lstsq(prefix.layers[0][0].T, normals.T, rcond=None)[0]


def _fit_row(acts: Array, row: Array, seen: NDArray[np.bool_]) -> tuple[Array, float, float]:
    """A completed row, its bias and plane-fit residual from its points' activations below
    ``acts`` ``(m, h)``: the hyperplane through them when the row is known everywhere and they
    pin it down (:func:`.planes.pinned_plane`), else ``row`` with the median bias (residual
    NaN). Points of one offset can all have the same units inactive, though the row is known
    from others: every row on those units passes through them (on random 30-12-16-8-1 seed 0,
    28 points of a third-layer neuron with two second-layer units off at all of them gave the
    row ``-0.39 e_0 + 0.92 e_9`` and bias 0, which passed the flatness test, pass after
    pass)."""
    if seen.all() and len(acts) > acts.shape[1]:
        fitted = pinned_plane(acts, row)
        if fitted is not None:
            return fitted
    return row, -float(np.median(acts @ row)), np.nan


def coefficients(prefix: Prefix, points: Array,
                 normals: Array) -> tuple[Array, NDArray[np.bool_]]:
    """Each critical point's normal in the basis of the gradients of the prefix's top units
    active there: ``(m, h_T)`` coefficients (0 on inactive units), and which points have them.

    A point of a neuron above the prefix has its normal in that span, with unique coefficients
    when the active units' gradients are independent; points where they are not (more active
    units than the layers below let through), or whose normal is outside the span (a point of
    the prefix itself, or a bad measurement), are left out. ``points``, ``normals``: ``(m, d)``.
    """
    beta = first_coordinates(prefix, normals)
    ok = np.linalg.norm(prefix.layers[0][0].T @ beta - normals.T, axis=0) <= _SPAN
    pres, jac = prefix.local(points)
    coef = np.zeros((len(points), len(pres[-1][0]) if len(points) else 0))
    for k in np.flatnonzero(ok):
        active = pres[-1][k] > 0
        basis = jac[-1][k][active]  # (a, h1)
        s = np.linalg.svd(basis, compute_uv=False) if active.any() else np.zeros(1)
        if not active.any() or s[-1] <= _RANK * s[0]:
            ok[k] = False
            continue
        c, *_ = np.linalg.lstsq(basis.T, beta[:, k], rcond=None)
        ok[k] = np.linalg.norm(basis.T @ c - beta[:, k]) <= _SPAN * np.linalg.norm(beta[:, k])
        coef[k, active] = c
    return coef, ok


def _by_offset(below: Array, row: Array, idx: NDArray[np.int64]) -> list[NDArray[np.int64]]:
    """The points ``idx`` of one joined signature ``row``, split by offset ``row · a`` into
    parallel hyperplanes, those of two points or more. A point of a neuron further up, where
    the only unit it reads that is active in between is this one, has this neuron's normal
    but lies on a parallel hyperplane: such points may outnumber the neuron's own (a unit
    active almost everywhere is seldom crossed), and each hyperplane is a candidate of its
    own (the flatness test then tells the neuron)."""
    value = below[idx] @ row
    tol = 1e-6 * np.linalg.norm(below[idx], axis=1) * np.linalg.norm(row)
    order = np.argsort(value)
    cut = np.flatnonzero(np.diff(value[order]) > np.maximum(tol[order][1:], tol[order][:-1]))
    return [idx[part] for part in np.split(order, cut + 1) if len(part) >= 2]


def next_layer(below: Array, coef: Array, members: NDArray[np.int64]) -> Signatures:
    """The neurons of the next layer from its critical points.

    ``below`` ``(m, h1)``: the activations of the layer below at each critical point;
    ``coef`` ``(m, h1)``: each point's normal in the basis of that layer's oriented rows;
    ``members`` ``(m,)``: the points' indices (kept in :attr:`Signatures.members`). Neurons seen
    at a single point are left out (too little to vouch for them).
    """
    parts = _partials(below, coef)
    rows, biases, known, groups, residuals = [], [], [], [], []
    for group in _groups(parts):
        if len(group) < 2:
            continue
        joined, seen = _join(parts, group)
        for idx in _by_offset(below, joined, np.array([parts[i][0] for i in group])):
            row, bias, residual = _fit_row(below[idx], joined, seen)
            rows.append(row)
            biases.append(bias)
            known.append(seen)
            groups.append(members[idx])
            residuals.append(residual)
    h1 = below.shape[1]
    return Signatures(np.array(rows).reshape(-1, h1), np.array(biases),
                      np.array(known, dtype=bool).reshape(-1, h1), tuple(groups),
                      np.array(residuals))


def _fill(row: Array, known: NDArray[np.bool_], basis: Array, beta: Array,
          active: NDArray[np.bool_]) -> Array | None:
    """The entries of ``row`` unknown and active at one point, from its normal's first-layer
    coordinates ``beta`` ``(h1,)`` and the gradients ``basis`` ``(h_T, h1)`` there, when the
    point is one of this neuron's: ``basis[known]ᵀ row[known] + basis[new]ᵀ r = λ β`` is solved
    for ``r`` and ``λ`` and must hold exactly with equations to spare; else ``None``."""
    new, old = active & ~known, active & known
    rank = np.linalg.matrix_rank(basis[active], tol=_RANK * np.abs(basis).max())
    if not new.any() or not old.any() or rank < new.sum() + 2:
        return None
    lhs = np.hstack([basis[new].T, -beta[:, None]])
    rhs = -basis[old].T @ row[old]
    sol, *_ = np.linalg.lstsq(lhs, rhs, rcond=None)
    if np.linalg.norm(lhs @ sol - rhs) > _SPAN * np.linalg.norm(rhs) or abs(sol[-1]) == 0:
        return None
    out = row.copy()
    out[new] = sol[:-1]
    return out


def complete_rows(layer: Signatures, prefix: Prefix, points: Array, normals: Array,
                  candidates: NDArray[np.int64]) -> Signatures:
    """Rows of ``layer`` completed from critical points whose own coefficients are not unique
    (more units active in the top layer than the layers below let through: :func:`coefficients`
    leaves them out): such a point still fixes the entries a partial row lacks, if its normal
    is consistent with the entries the row has (CRYPTO 2020, §4.3, with the rank deficiency
    solved against the known part). ``points``, ``normals``: every critical point ``(n, d)``;
    ``candidates``: the indices to try. A row completed is refitted through its points."""
    if not len(candidates) or layer.known.all():
        return layer
    beta = first_coordinates(prefix, normals[candidates])
    pres, jac = prefix.local(points[candidates])
    active = pres[-1] > 0
    rows, known, members = layer.rows.copy(), layer.known.copy(), list(layer.members)
    biases, residuals = layer.biases.copy(), layer.residuals.copy()
    for j in np.flatnonzero(~known.all(axis=1)):
        added = []
        for i in np.flatnonzero((active & ~known[j]).any(axis=1)):
            filled = _fill(rows[j], known[j], jac[-1][i], beta[:, i], active[i])
            if filled is not None:
                rows[j], known[j] = filled, known[j] | active[i]
                added.append(candidates[i])
        if added:
            members[j] = np.concatenate([members[j], added])
            if known[j].all():
                rows[j], biases[j], residuals[j] = _fit_row(
                    prefix.top(points[members[j]]), rows[j], known[j])
    return Signatures(rows, biases, known, tuple(members), residuals)


def distinct_neurons(rows: Array, biases: Array, seen: Array) -> NDArray[np.int64]:
    """The indices of the rows ``(m, h)``, biases ``(m,)`` (a layer's neurons, refined) that are
    neurons, ``seen`` ``(m,)`` times each (their critical points):

    - one of each set of rows equal up to a positive or negative scale (one neuron whose
      partial signatures were joined into two rows: one hyperplane is one neuron to any query);
    - where the layer is contractive (``m ≤ h``), none that is a linear combination of the
      others: a neuron's weights are independent of its layer's other neurons, while a neuron
      further up, seen in one region where the units it reads are all in one state, is a
      combination of those units' rows there and passes for flat. Of the rows of each
      dependency, the one seen least often is dropped (the deeper neuron shows only in that
      region; the neurons it reads show everywhere).

    An expansive layer (``m > h``) is left as it is: its rows are dependent anyway.
    """
    both = np.hstack([rows, biases[:, None]])
    unit = both / np.linalg.norm(both, axis=1, keepdims=True)
    keep: list[int] = []
    for i in range(len(unit)):
        if all(abs(unit[i] @ unit[j]) < 1 - 1e-9 for j in keep):
            keep.append(i)
    while 1 < len(keep) <= rows.shape[1]:
        direction = rows[keep] / np.linalg.norm(rows[keep], axis=1, keepdims=True)
        left, sv, _ = np.linalg.svd(direction)
        if sv[-1] >= _DEPENDENT * sv[0]:
            break
        weight = np.abs(left[:, -1])  # the combination of rows that vanishes
        involved = np.flatnonzero(weight > 1e-3 * weight.max())
        keep.pop(int(involved[np.argmin(np.asarray(seen)[np.array(keep)[involved]])]))
    return np.array(keep, dtype=np.int64)
