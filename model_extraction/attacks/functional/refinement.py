"""Precision refinement of a deep extraction: more points on each hyperplane, each located by
one 2-linearity test (Algorithm 1 of Jagielski et al. 2020, in 6 queries), and the hyperplane
refitted through all of them (Carlini et al., CRYPTO 2020, §4.5: so that errors do not compound
with depth).

A first-layer hyperplane is flat: points are placed anywhere on it. A deeper one is flat only
within a region of the layers below: points are placed near its known critical points and
anywhere (brought onto it by Newton steps through the :class:`~.prefix.Prefix`), and the fit is
done in the space of the layer below's activations, where the hyperplane ``v · a + b = 0`` is
flat everywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from model_extraction.oracle import BudgetExhaustedError, Oracle

from .aim import coactive_lines
from .domain import Domain, box_of, kept_in, spread
from .planes import pinned_plane, plane_through
from .prefix import Prefix, placed_on
from .search import crossings

Array = NDArray[np.float64]

__all__ = ["better_plane", "refit_first_layer", "refit_next_layer"]

_NEAR = 1e-6  # a point found this close to the estimated hyperplane lies on it
_SUPPORT = 4  # a coordinate non-zero at fewer points than this is not fitted
_NEXT_POINTS = 8  # points per unknown of a deeper hyperplane (3 left some 24 bits precise)
_RARE = 3 * _SUPPORT  # points sought where a unit below is active, if fewer of a neuron's are
_RARE_STARTS = 8  # ascents toward each such (neuron, unit) pair
_DROPS = 16  # refits without the points far off, at most


def better_plane(points: Array, row: Array, offset: float) -> tuple[Array, float, float]:
    """The hyperplane through ``points`` ``(m, d)``, if it beats ``(row, offset)``.

    The points are split in two interleaved halves (the callers list points of one kind, then
    another: each half holds both): a plane fitted on one (after dropping the points far off
    it, kinks of other neurons that passed the tests or crossings located poorly, while that
    predicts the other half better: :func:`_without_outliers`) must predict the other better than
    the current estimate does (:func:`_medians`: better where it is worst, and not ten times
    worse overall), else the estimate is kept (also when the points lie in a subspace that
    leaves the hyperplane undetermined).
    Returns row, offset and the relative residual on the held-out half of the plane fitted on
    the other half, or of the estimate when it is kept (NaN when there are too few points).

    Coordinates that are zero at all but a few points (a deeper layer's points, where a unit
    of the layer below is seldom active) are not fitted: the points where they are not zero
    are set aside, and the row keeps its entries there (the fit, on the other coordinates, is
    rescaled to agree with the estimate on them)."""
    support = np.count_nonzero(points, axis=0)
    if np.any(support < _SUPPORT):
        live = support >= _SUPPORT
        if not live.any():
            return row, offset, np.nan
        clean = ~np.any(points[:, ~live], axis=1)
        n, c, residual = better_plane(points[clean][:, live], row[live], offset)
        if not np.isfinite(residual) or not n @ n > 0:
            return row, offset, residual
        lam = float(n @ row[live]) / float(n @ n)
        out = row.copy()
        out[live] = lam * n
        return out, lam * c, residual
    d = points.shape[1]
    fit, held = points[::2], points[1::2]
    if len(held) <= d:
        return row, offset, np.nan
    scale = np.abs(held).max() + 1.0
    old = _medians(held, row, offset)
    first = pinned_plane(fit, row, offset)
    if first is None:
        return row, offset, float(old[0] / scale)  # the points do not pin one hyperplane
    n, c, fit = _without_outliers(fit, held, *first[:2])
    new = _medians(held, n, c)
    # better where it is worst, and not ten times worse overall (a fit pulled by points far
    # off, in a few regions, that the median of one coordinate does not set aside)
    if not (new[1] < old[1] and new[0] <= max(10 * old[0], 1e-14 * scale)):
        return row, offset, float(old[0] / scale)
    both = np.concatenate([fit, held[np.abs(held @ n + c) <= 10 * new[0] + 1e-300]])
    n, c, _ = plane_through(both, n, c)
    return n, c, float(new[0] / scale)


def _without_outliers(fit: Array, held: Array, n: Array, c: float) -> tuple[Array, float, Array]:
    """The hyperplane ``(n, c)`` fitted through ``fit`` ``(m, d)`` refitted without its points
    far off, the largest studentized residual first (with any ten times the median), for as
    long as the refit predicts ``held`` better (:func:`_medians`, where it is worst): returns
    the row, offset and the points kept. Never drops below ``d + 2`` points, nor a point that
    leaves a coordinate non-zero at fewer than ``_SUPPORT`` of them.

    With ``1.5 (d + 1)`` points for ``d + 1`` unknowns, a point's leverage ``h`` is about
    2/3: a least-squares fit leaves a point far off only ``(1 - h)`` of its distance, and its
    pull spreads over the others (on random 40-20-10-1 seed 2 in ``[-1, 1]^40``, three
    crossings of 62, 5e-9 to 4e-8 off, tilted the fit by 1e-8 and hid among residuals of the
    same size: the estimate, 8e-9 off, was kept). The residual ``r / sqrt(1 - h)`` has the same
    spread at every point of a clean fit; ``r / (1 - h)``, the distance to the plane through
    the others, ranks the points of high leverage first (on trained MNIST 784-64-64-10 in
    ``[0, 1]^784``, a crossing found twice, 7e-8 off the first fit, was then never reached,
    and a first-layer row kept its estimate, 8e-11 off, where the plain residual gave 3e-12)."""
    d = fit.shape[1]
    best = _medians(held, n, c)[1]
    count = np.count_nonzero(fit, axis=0)
    for _ in range(_DROPS):
        off = np.abs(_studentized(fit, n, c))
        worst = off > max(10 * float(np.median(off)), 0.5 * float(off.max()))
        worst[np.argmax(off)] = True
        rest = fit[~worst]
        after = np.count_nonzero(rest, axis=0)
        if len(rest) <= d + 1 or np.any((after < _SUPPORT) & (after < count)):
            break
        m, b, _ = plane_through(rest, n, c)
        score = _medians(held, m, b)[1]
        if not score < best:
            break
        best, n, c, fit, count = score, m, b, rest, after
    return n, c, fit


def _studentized(points: Array, n: Array, c: float) -> Array:
    """``(m,)``: each point's residual ``r = points · n + c`` from the hyperplane ``(n, c)``
    fitted through all ``points`` ``(m, d)`` (the smallest right singular vector of ``A =
    [points, 1]``), over ``sqrt(1 - h_i)``: ``h_i`` the leverage of point ``i`` in the other
    ``d`` directions of ``A``'s column space (that of ``A``'s reduced QR, less the residual's
    own direction). Equal spread at every point where all lie on the plane but for rounding."""
    a = np.hstack([points, np.ones((len(points), 1))])
    q = np.linalg.qr(a)[0]
    r = points @ n + c
    lever = np.sum(q * q, axis=1) - r * r / max(float(r @ r), 1e-300)
    return r / np.sqrt(np.maximum(1.0 - lever, 1e-12))


def _medians(points: Array, row: Array, offset: float) -> tuple[float, float]:
    """How far ``points`` ``(m, d)`` are off the hyperplane: the median distance ``|row · x +
    offset|`` over all of them, and the largest median over the points where one coordinate
    is non-zero (for each coordinate non-zero at two points or more). A median ignores the
    few points far off (other neurons' kinks); one per coordinate sees an error in the weight
    of a unit active at a minority of the points, which the median over all does not."""
    off = np.abs(points @ row + offset)
    live = points != 0
    count = np.count_nonzero(live, axis=0)
    overall = worst = float(np.median(off))
    for column in live.T[(count >= 2) & (count < len(points))]:  # a full one: the overall
        worst = max(worst, float(np.median(off[column])))
    return overall, worst


def _first_task(oracle: Oracle, row: Array, offset: float, p: Array,
                scale: float) -> tuple[Array, float, float, int]:
    """One first-layer hyperplane refitted through the crossings near the points ``p`` placed
    on it; also the queries spent (for a copy of the oracle in another process)."""
    before = oracle.queries
    pts = crossings(oracle, p, np.repeat(row[None], len(p), axis=0), 1e-3 * scale)
    pts = pts[np.abs(pts @ row + offset) < _NEAR * scale]  # NaN rows drop too
    return (*better_plane(pts, row, offset), oracle.queries - before)


def _next_task(oracle: Oracle, prefix: Prefix, row: Array, bias: float, p: Array,
               unit: Array, radius: Array) -> tuple[Array, float, float, int]:
    """One next-layer hyperplane refitted, in the space of the prefix's top activations,
    through the crossings along ``unit`` from ``p``; also the queries spent."""
    before = oracle.queries
    pts = crossings(oracle, p, unit, radius)
    acts = prefix.top(np.nan_to_num(pts))
    near = np.isfinite(pts[:, 0]) & (np.abs(acts @ row + bias)
                                     < _NEAR * np.linalg.norm(acts, axis=1))
    acts = acts[near]  # a kink of another neuron, or none: dropped
    return (*better_plane(acts, row, bias), oracle.queries - before)


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
                      *, scale: float, executor: Any = None,
                      domain: Domain | None = None) -> tuple[Array, Array, Array]:
    """Each first-layer hyperplane refitted through ``3 (d + 1)`` points placed on it (one
    independent task per neuron: ``executor`` runs them in parallel, with the same results
    and query count). Returns the rows, offsets and the relative residual of each row kept on
    the held-out points (see :func:`better_plane`: where the points did not beat the estimate,
    the hyperplane is kept as it was; NaN where too few points were located). In a bounded
    ``domain`` the points are drawn in the box (:meth:`~.domain.Domain.draw`) and moved onto the
    hyperplane within it (:meth:`~.domain.Domain.onto_plane`), those whose crossing test stays
    in it."""
    h, d = rows.shape
    argsets = []
    for i in range(h):
        if domain is not None and domain.bounded:
            p = domain.onto_plane(domain.draw(rng, 3 * (d + 1)), rows[i], offsets[i],
                                  2e-3 * scale * np.abs(rows[i]).max())
            p = p[domain.holds(p, np.broadcast_to(rows[i], p.shape), 1e-3 * scale)]
        else:
            p = rng.standard_normal((3 * (d + 1), d)) * scale
            p -= (p @ rows[i] + offsets[i])[:, None] * rows[i]
        argsets.append((rows[i], float(offsets[i]), p, scale))
    done = _run_tasks(oracle, _first_task, argsets, 6 * sum(len(a[2]) for a in argsets),
                      executor)
    return (np.array([r[0] for r in done]).reshape(h, d), np.array([r[1] for r in done]),
            np.array([r[2] for r in done]))


def refit_next_layer(oracle: Oracle, prefix: Prefix, rows: Array, biases: Array,
                     anchors: list[Array], rng: np.random.Generator, *, scale: float,
                     executor: Any = None,
                     domain: Domain | None = None) -> tuple[Array, Array, Array]:
    """Each next-layer hyperplane ``rows[j] · a_T + biases[j] = 0`` refitted, in the space of the
    prefix's top activations ``a_T``, through ``8 (h_T + 1)`` points placed on it: half near its
    critical points ``anchors[j]`` ``(m_j, d)`` (moved off the anchor within its region), half
    anywhere (for regions far apart, which pin the hyperplane down in every direction), each
    brought onto the estimate along its local normal and then located by a crossing test (one
    task per neuron, as :func:`refit_first_layer`); and, for each unit of the top layer active
    at fewer than ``_RARE`` of those points (its weight is otherwise not fitted, see
    :func:`better_plane`, and keeps the precision of the signatures), up to ``_RARE`` points
    on the hyperplane where that unit is active (:func:`_where_rare`). Returns the rows, biases
    and relative residuals, as :func:`refit_first_layer` does. In a bounded ``domain`` the
    points start in the box and are placed on the hyperplane inside it
    (:func:`.prefix.placed_on`'s ``box``; the ascents too), and the crossing tests that would
    leave it are not made."""
    h = rows.shape[1]
    d = prefix.layers[0][0].shape[1]
    starts = []
    for anchor in anchors:
        n = _NEXT_POINTS * (h + 1)
        near = _jittered(prefix, anchor[rng.integers(len(anchor), size=n - n // 2)], rng)
        far = spread(domain, rng, n // 2, d, 0.5, scale)  # where the lines start
        starts.append(np.concatenate([kept_in(domain, near), far]))
    box = box_of(domain)
    placed = [placed_on(prefix, rows[j], float(biases[j]), p, box=box)
              for j, p in enumerate(starts)]
    rare = _where_rare(prefix, rows, biases, [p for p, _, _ in placed], anchors, rng, scale,
                       domain)
    argsets = []
    for j, (on, more) in enumerate(zip(placed, rare, strict=True)):
        if len(more):
            on = tuple(np.concatenate(pair) for pair in zip(
                on, placed_on(prefix, rows[j], float(biases[j]), more, box=box), strict=True))
        p, unit, radius = on
        if domain is not None and domain.bounded:
            keep = domain.holds(p, unit, radius + 1e-12 * scale)
            p, unit, radius = p[keep], unit[keep], radius[keep]
        argsets.append((prefix, rows[j], float(biases[j]), p, unit, radius + 1e-12 * scale))
    done = _run_tasks(oracle, _next_task, argsets, 6 * sum(len(a[3]) for a in argsets),
                      executor)
    return (np.array([r[0] for r in done]).reshape(rows.shape), np.array([r[1] for r in done]),
            np.array([r[2] for r in done]))


def _where_rare(prefix: Prefix, rows: Array, biases: Array, placed: list[Array],
                anchors: list[Array], rng: np.random.Generator, scale: float,
                domain: Domain | None = None) -> list[Array]:
    """For each neuron ``j``, points ``(m_j, d)`` near its estimated hyperplane where a unit of
    the top layer is active that is active at fewer than ``_RARE`` of the points ``placed[j]``
    on it: ``_RARE_STARTS`` ascents of :func:`~.aim.coactive_lines` (no query) for
    each such unit, from the neuron's critical points ``anchors[j]`` moved by Gaussian noise
    of ``0.1 scale``; the points reached, in turn, make ``_RARE`` points for the pair, each
    moved within its region (:func:`_jittered`; the caller brings them back onto the
    hyperplane)."""
    pairs = []
    for j, p in enumerate(placed):
        active = np.count_nonzero(prefix.top(p) > 0, axis=0)
        pairs += [(j, int(u)) for u in np.flatnonzero(active < _RARE)]
    d = placed[0].shape[1] if placed else 0
    out: list[list[Array]] = [[] for _ in placed]
    if not pairs:
        return [np.zeros((0, d)) for _ in placed]
    pair = np.repeat(np.arange(len(pairs)), _RARE_STARTS)
    js, units = (np.array([pairs[k][c] for k in pair]) for c in (0, 1))
    x = np.array([anchors[j][rng.integers(len(anchors[j]))] for j in js])
    x = x + rng.standard_normal(x.shape) * 0.1 * scale
    lines, source = coactive_lines(prefix, kept_in(domain, x), rows[js], biases[js], units,
                                   0.05 * scale, scale, box_of(domain))
    reached = pair[source]
    for k in np.unique(reached):
        origins = np.array([line.origin for line, r in zip(lines, reached, strict=True)
                            if r == k])
        out[pairs[k][0]].append(_jittered(prefix, origins[np.arange(_RARE) % len(origins)],
                                          rng))
    return [np.concatenate(o) if o else np.zeros((0, d)) for o in out]


def _jittered(prefix: Prefix, x: Array, rng: np.random.Generator) -> Array:
    """Points ``x`` ``(n, d)`` each moved in a random direction by 0.3 of its distance to the
    nearest hyperplane of the prefix (within its region: the same units active)."""
    step = rng.standard_normal(x.shape)
    room = np.min(prefix.distances(x), axis=1)
    room = np.where(np.isfinite(room), room, 0.0)
    return x + 0.3 * (room / np.linalg.norm(step, axis=1))[:, None] * step
