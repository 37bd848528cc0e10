"""Weights never seen at a critical point, measured from where the two units are active.

A neuron's weight ``w_u`` on a unit ``u`` of the layer below is unknown when ``u`` was inactive
at every critical point of the neuron found (on a trained victim, a rare neuron and a rare unit,
seldom active together). With the rest of the row known, the neuron's pre-activation is
``z(x) = e(x) + w_u a_u(x)``, ``e`` the row with ``w_u = 0``, through the layers so far: on a line
across the estimated hyperplane where ``u`` is active (:func:`~.aim.coactive_lines`, no query),
the neuron's kink lies where ``z = 0``, so ``w_u = -e(x*) / a_u(x*)`` at the kink ``x*``. Each
kink of the line gives such a candidate; the neuron's own kinks give one value on every line,
another neuron's a value of its own: a value met on ``_VOTES`` lines, from different starts,
is the weight.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from model_extraction.oracle import Oracle

from .aim import coactive_lines
from .domain import Domain, box_of, kept_in, spread
from .prefix import Prefix, placed_on
from .search import Line, search_line

Array = NDArray[np.float64]

__all__ = ["measure_unseen"]

_STARTS = 64  # ascents toward each (neuron, unit) pair, a quarter from its critical points
_LINES = 8  # lines searched for each pair and round, at most
_ROUNDS = 4  # rounds for a row whose weights are measured one after another
_VOTES = 3  # lines whose candidates must agree
_AGREE = 1e-6  # relative agreement of two candidates
_LINE_QUERIES = 4096  # most queries of one line's search (one along a hyperplane finds many)


def measure_unseen(oracle: Oracle, prefix: Prefix, rows: Array, biases: Array,
                   unseen: NDArray[np.bool_], anchors: list[Array], rng: np.random.Generator,
                   scale: float, domain: Domain | None = None) -> Array:
    """``rows`` ``(m, h_T)`` with the weights ``unseen`` ``(m, h_T)`` measured where a value is
    met on ``_VOTES`` lines (the others stay 0, and unseen): each pair's lines start from
    ``_STARTS`` ascents for each orientation of the row, a quarter from the neuron's critical
    points ``anchors[i]`` ``(m_i, d)`` moved by Gaussian noise of ``0.1 scale``, the rest from
    Gaussian points brought onto its estimated hyperplane (the critical points of a rare
    neuron lie close together, and the ascents from them seldom get there), and are searched
    over ``|t| ≤ 0.2 scale`` (a grid of 64 intervals; one line search each, no Jacobian, at
    most ``_LINE_QUERIES``). A kink where another weight of the row still unseen has its unit
    active gives no candidate (that weight would be in it); a row that gains a weight and
    still lacks one is measured again with it, up to ``_ROUNDS`` rounds in all. Costs the
    line searches only: at most ``8 · 4096`` queries a pair and round. In a bounded
    ``domain`` the starts are drawn in the box, placed on the hyperplane and moved by the
    ascents inside it, and each line searched where it lies in it."""
    out, left = rows.copy(), unseen.copy()
    again = np.ones(len(rows), dtype=bool)
    for _ in range(_ROUNDS):
        pairs = np.argwhere(left & again[:, None])
        if not len(pairs):
            break
        before = left.copy()
        _measure_round(oracle, prefix, out, biases, left, pairs, anchors, rng, scale, domain)
        again = np.any(before != left, axis=1) & np.any(left, axis=1)
    return out


def _measure_round(oracle: Oracle, prefix: Prefix, rows: Array, biases: Array,
                   left: NDArray[np.bool_], pairs: NDArray[np.int64], anchors: list[Array],
                   rng: np.random.Generator, scale: float, domain: Domain | None) -> None:
    """One round of :func:`measure_unseen` over ``pairs`` ``(p, 2)`` (neuron, unit): each
    weight measured is written into ``rows`` and taken off ``left``, in place."""
    d, box = prefix.layers[0][0].shape[1], box_of(domain)
    starts = []
    for i, _ in pairs:  # near the neuron's critical points, and anywhere on its hyperplane
        near = anchors[i][rng.integers(len(anchors[i]), size=_STARTS // 4)]
        near = near + rng.standard_normal(near.shape) * 0.1 * scale
        far = spread(domain, rng, _STARTS - _STARTS // 4, d, 0.5, scale)
        near = kept_in(domain, near)
        starts += [near, placed_on(prefix, rows[i], float(biases[i]), far, 20, box)[0]]
    # both orientations: the ascent seeks the row's positive side, which is the neuron's
    # active side only if the row is oriented, and the layer is not oriented yet
    pair = np.tile(np.repeat(np.arange(len(pairs)), _STARTS), 2)
    sign = np.repeat([1.0, -1.0], len(pair) // 2)[:, None]
    lines, source = coactive_lines(prefix, np.tile(np.concatenate(starts), (2, 1)),
                                   sign * rows[pairs[pair, 0]], sign[:, 0]
                                   * biases[pairs[pair, 0]], pairs[pair, 1], 0.05 * scale,
                                   scale, box)
    for k, (i, u) in enumerate(pairs):
        mine = [line for line, s in zip(lines, pair[source], strict=True) if s == k]
        mine = [mine[j] for j in rng.permutation(len(mine))[:_LINES]]  # from any start
        blind = np.flatnonzero(left[i] & (np.arange(left.shape[1]) != u))
        candidates = [_candidates(oracle, prefix, rows[i], float(biases[i]), int(u), blind,
                                  line, scale, domain) for line in mine]
        weight = _agreed(candidates)
        if weight is not None:
            rows[i, u], left[i, u] = weight, False


def _candidates(oracle: Oracle, prefix: Prefix, row: Array, bias: float, unit: int,
                blind: NDArray[np.int64], line: Line, scale: float,
                domain: Domain | None = None) -> Array:
    """The weight on ``unit`` that puts each kink of ``line`` on the neuron's hyperplane (the
    kinks where ``unit`` is active and none of the units ``blind``, whose weights are not
    known yet)."""
    inside = (-0.2 * scale, 0.166 * scale)
    inside = inside if domain is None else domain.within(line, inside)
    if inside is None:
        return np.zeros(0)
    kinks, _ = search_line(oracle, line, inside, grid=64, max_queries=_LINE_QUERIES)
    if not kinks:
        return np.zeros(0)
    x = line.at(np.array([k.t for k in kinks]))
    a = prefix.top(x)
    e = a @ row + bias
    live = (a[:, unit] > 0) & ~np.any(a[:, blind] > 0, axis=1)
    return -e[live] / a[live, unit]


def _agreed(candidates: list[Array]) -> float | None:
    """A value met (to ``_AGREE``, relative) among the candidates of ``_VOTES`` lines or more,
    the median of those; ``None`` where there is none."""
    every = [(v, j) for j, c in enumerate(candidates) for v in c]
    for v, _ in every:
        near = [(w, j) for w, j in every if abs(w - v) <= _AGREE * max(abs(v), 1e-12)]
        if len({j for _, j in near}) >= _VOTES:
            return float(np.median([w for w, _ in near]))
    return None
