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
from scipy.cluster.hierarchy import DisjointSet

from .layers import plane_through

Array = NDArray[np.float64]

__all__ = ["Signatures", "next_layer"]

_AGREE = 1e-10  # |1 - |cos|| of two partial signatures on their common units (>= 3)


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
    """Partial signatures that agree up to scale on at least three common units, joined."""
    sets = DisjointSet(range(len(parts)))
    for i, (_, pi, ai) in enumerate(parts):
        for j in range(i + 1, len(parts)):
            common = pi & parts[j][1]
            if common.sum() < 3:
                continue
            x, y = ai[common], parts[j][2][common]
            cos = x @ y / (np.linalg.norm(x) * np.linalg.norm(y))
            if abs(abs(cos) - 1) < _AGREE:
                sets.merge(i, j)
    return [sorted(g) for g in sets.subsets()]


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
        row, seen = _join(parts, group)
        idx = np.array([parts[i][0] for i in group])
        acts = below[idx]
        bias = -float(np.median(acts @ row))
        residual = np.nan
        if seen.all() and len(idx) > acts.shape[1]:
            row, bias, residual = plane_through(acts, row)
        rows.append(row)
        biases.append(bias)
        known.append(seen)
        groups.append(members[idx])
        residuals.append(residual)
    h1 = below.shape[1]
    return Signatures(np.array(rows).reshape(-1, h1), np.array(biases),
                      np.array(known, dtype=bool).reshape(-1, h1), tuple(groups),
                      np.array(residuals))
