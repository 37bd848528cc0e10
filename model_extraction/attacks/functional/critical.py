"""Critical points of a ReLU network of any depth, with the normal of the hyperplane each lies on
(Carlini, Jagielski and Mironov, CRYPTO 2020, §4.2–4.3).

Along a line the logits are piecewise linear in ``t``; each kink found by
:func:`~.search.search_line` is a point where one neuron, of any layer, changes state. Crossing
one neuron changes the Jacobian of the logits by a rank-one matrix ``u gᵀ``, where ``g`` is the
gradient of that neuron's pre-activation at the point: its hyperplane's normal there (constant
for a first-layer neuron; bent where earlier neurons change state, for a deeper one). The
Jacobians on both sides are measured by forward differences at two step sizes (where a column's
two estimates disagree it crossed another hyperplane, and the Jacobian is measured again with a
smaller step); two consecutive critical points of a line share the linear region between them,
and its Jacobian; the jump along the line must be the change of slope the line search measured.

Once the first layer is known (rows ``W1``, ``(h1, d)``, ``h1 < d``), the logits depend on the
input through ``W1 x`` alone, so every Jacobian row lies in the span of ``W1``'s rows: the
Jacobians are then measured along an orthonormal basis of that span (a :class:`Span`) and two
random directions orthogonal to it, ``2 (h1 + 2) + 1`` queries a region instead of ``2d + 1``
(23 times fewer at ``d = 784``, ``h1 = 32``). The slopes along the two checks vanish
unless a first-layer neuron not yet extracted is active beside the kink (or is the kink): such a
kink is measured again along every coordinate, and keeps the part of its normal off the span.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from model_extraction.oracle import Oracle

from .domain import Domain
from .linalg import thin_svd
from .search import Kink, Line, LineSearchStats, search_line

Array = NDArray[np.float64]

__all__ = ["CriticalPoints", "Span", "find_critical_points", "line_kinks", "random_line"]

_AGREE = 1e-7  # relative agreement of the two step sizes that vouches for a Jacobian column
_RANK_ONE = 1e-6  # second singular value of the jump, relative to the first, still rank one
_ALONG = 1e-5  # the jump along the line, relative to the slope change the search measured
_PROBES = 2**22  # most floats of one batch of probes (32 MiB), unless one point needs more
_CHECKS = 2  # random directions off the span, whose slopes must vanish
_CROWDED = 1e-7  # a kink this close to the next (in t): its Jacobians would be noise
_OFF_SPAN = 1e-6  # a check's slope, relative to the largest slope, that is not rounding
_GRID = 64  # equal intervals of a line's first batch of 2-linearity tests (3 (_GRID + 1) queries)
# Offset of the probes that verify a candidate, relative to its interval: a second kink closer
# to the candidate than that can hide behind it, so the offset is kept as short, in t, as 1e-2
# of a 512-interval grid's (above search_line's slope step, 1e-3, as it must be).
_VERIFY = 1e-2 * _GRID / 512


@dataclass(frozen=True)
class CriticalPoints:
    """Critical points found on lines: ``points`` ``(m, d)``, the unit ``normals`` ``(m, d)`` of
    their hyperplanes (sign arbitrary), and the index of the line each was found on ``(m,)``."""

    points: Array
    normals: Array
    line: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.points)

    @staticmethod
    def empty(d: int) -> CriticalPoints:
        return CriticalPoints(np.zeros((0, d)), np.zeros((0, d)), np.zeros(0, dtype=np.int64))

    def join(self, other: CriticalPoints) -> CriticalPoints:
        return CriticalPoints(np.concatenate([self.points, other.points]),
                              np.concatenate([self.normals, other.normals]),
                              np.concatenate([self.line, other.line]))

    def subset(self, mask: NDArray[np.bool_] | NDArray[np.int64]) -> CriticalPoints:
        return CriticalPoints(self.points[mask], self.normals[mask], self.line[mask])


@dataclass(frozen=True)
class Span:
    """Where the Jacobians are measured: ``basis`` ``(r + checks, d)``, orthonormal rows, the
    first ``r`` spanning every Jacobian row (the first layer's rows), the last ``checks``
    random and orthogonal to them (their slopes vanish unless a neuron outside the span is
    active)."""

    basis: Array
    checks: int

    @staticmethod
    def of(rows: Array, rng: np.random.Generator, rtol: float = 1e-10) -> Span | None:
        """The span of ``rows`` ``(h, d)`` with :data:`_CHECKS` random checks off it, or
        ``None`` where it is no cheaper than the ``d`` coordinates (``rank + checks ≥ d``).
        The checks are drawn from a child of ``rng`` (:meth:`numpy.random.Generator.spawn`),
        so that what ``rng`` draws next, the lines, does not depend on them."""
        d = rows.shape[1]
        inside = _row_space(rows, rtol)
        if len(inside) + _CHECKS >= d:
            return None
        off = rng.spawn(1)[0].standard_normal((_CHECKS, d))
        off -= (off @ inside.T) @ inside
        off = np.linalg.qr(off.T)[0].T
        return Span(np.vstack([inside, off]), _CHECKS)

    def carried(self, normals: Array, rows: Array) -> Array:
        """``normals`` ``(m, d)`` measured along this span, carried into the span of ``rows``
        ``(h, d)`` (the first layer, refined since): each is the vector of that span with the
        same slopes along this span's basis, which is the normal itself if this span held
        the true one's directions but was tilted (an estimate from normals is, by about their
        own errors). Rows off this span (neurons outside it, inactive where it was used) are left
        out; normals that are not in this span (measured along every coordinate) and spans
        whose rank differs from that of the rows kept are returned as they are."""
        inside = self.basis[: len(self.basis) - self.checks]
        near = np.linalg.norm(rows - (rows @ inside.T) @ inside, axis=1) <= 1e-6 * np.linalg.norm(
            rows, axis=1)
        true = _row_space(rows[near], 1e-10)
        if len(true) != len(inside):
            return normals
        slopes = normals @ inside.T
        here = np.linalg.norm(normals - slopes @ inside, axis=1) <= 1e-12
        out = normals.copy()
        moved = np.linalg.solve((true @ inside.T).T, slopes[here].T).T @ true
        out[here] = moved / np.linalg.norm(moved, axis=1, keepdims=True)
        return out


def _row_space(rows: Array, rtol: float) -> Array:
    """An orthonormal basis ``(r, d)`` of the span of ``rows`` ``(h, d)``: the right singular
    vectors whose singular values exceed ``rtol`` times the largest."""
    _, s, vt = thin_svd(rows)
    return vt[: int(np.sum(s > rtol * s[0]))] if len(s) and s[0] > 0 else vt[:0]


def random_line(rng: np.random.Generator, d: int, scale: float) -> Line:
    """A line through a Gaussian point of standard deviation ``scale / 2``, uniform direction."""
    direction = rng.standard_normal(d)
    return Line(rng.standard_normal(d) * 0.5 * scale, direction / np.linalg.norm(direction))


def line_kinks(oracle: Oracle, line: Line, t_range: tuple[float, float],
               ) -> tuple[list[Kink], LineSearchStats]:
    """The critical points of ``line`` in ``t_range`` (:func:`~.search.search_line`: a first
    batch of ``3 (_GRID + 1)`` queries, then halvings; the kinks and the search's statistics)."""
    return search_line(oracle, line, t_range, grid=_GRID, verify_step=_VERIFY)


def _jacobians(oracle: Oracle, points: Array, step: Array, basis: Array | None,
               domain: Domain | None = None) -> tuple[Array, NDArray[np.bool_]]:
    """Forward-difference Jacobians at ``points`` ``(m, d)`` with steps ``step`` ``(m,)`` and
    ``step / 4``, along the coordinates (``(m, K, d)``) or the rows of ``basis`` ``(r, d)``
    (``(m, K, r)``); the mask ``(m, d)`` or ``(m, r)`` says which columns the two agree on.
    In a bounded ``domain`` each column steps backwards where forwards would leave the box,
    and shorter where neither way has the room (:func:`_signed_steps`)."""
    m, d = points.shape
    base = oracle(points)
    directions = np.eye(d) if basis is None else basis
    steps = np.broadcast_to(np.stack([step, step / 4])[:, :, None], (2, m, len(directions)))
    if domain is not None and domain.bounded:
        steps = _signed_steps(domain, points, directions, step)
    if basis is None:
        probes = np.empty((2, m, d, d))  # each point, then each coordinate moved by each step
        probes[...] = points[None, :, None, :]
        probes[:, :, np.arange(d), np.arange(d)] += steps
    else:
        probes = (points[None, :, None, :]
                  + steps[:, :, :, None] * basis[None, None, :, :])
    r = probes.shape[2]
    y = oracle(probes.reshape(-1, d)).reshape(2, m, r, -1)
    with np.errstate(divide="ignore", invalid="ignore"):  # no room at a corner: not clean
        slopes = (y - base[None, :, None, :]) / steps[:, :, :, None]
        agree = np.all(np.abs(slopes[0] - slopes[1]) <= _AGREE * (1 + np.abs(slopes[0])),
                       axis=2)
    return slopes[1].transpose(0, 2, 1), agree


def _signed_steps(domain: Domain, points: Array, directions: Array, step: Array) -> Array:
    """The steps ``(2, m, r)`` along ``directions`` ``(r, d)`` at ``points`` ``(m, d)``: ``step``
    ``(m,)`` and a quarter of it, forwards where the box has the room, else backwards, else
    half the larger room either way (the two always the same way)."""
    fwd, back = domain.face_room(points)  # (m, d)
    up, down = np.maximum(directions, 0.0), np.maximum(-directions, 0.0)  # (r, d)

    def room(plus: Array, minus: Array) -> Array:  # (m, r): the longest step inside the box
        with np.errstate(divide="ignore"):
            a = np.where(up[None] > 0, plus[:, None] / np.where(up > 0, up, 1.0)[None], np.inf)
            b = np.where(down[None] > 0, minus[:, None] / np.where(down > 0, down, 1.0)[None],
                         np.inf)
        return np.minimum(a.min(axis=2), b.min(axis=2))

    ahead, behind = room(fwd, back), room(back, fwd)
    s = np.broadcast_to(step[:, None], ahead.shape)
    signed = np.where(ahead >= s, s, np.where(behind >= s, -s, np.where(
        ahead >= behind, 0.5 * ahead, -0.5 * behind)))
    return np.stack([signed, signed / 4])


def _clean_jacobians(oracle: Oracle, points: Array, room: Array, basis: Array | None,
                     domain: Domain | None = None) -> tuple[Array, NDArray[np.bool_]]:
    """The Jacobians at ``points`` ``(m, d)`` (along ``basis``, see :func:`_jacobians`), each
    with the largest step of ``0.3``, ``0.03`` and ``0.003`` times its ``room`` ``(m,)`` whose
    two estimates agree on every column (else all of it is measured again with the next):
    ``(m, K, d)`` or ``(m, K, r)``, and a mask ``(m,)`` of the points where one did."""
    d = points.shape[1]
    r = d if basis is None else len(basis)
    chunk = max(1, _PROBES // (2 * r * d))  # points per batch of probes
    jac, ok = None, np.zeros(len(points), dtype=bool)
    for factor in (0.3, 0.03, 0.003):
        for start in range(0, len(points), chunk):
            todo = start + np.flatnonzero(~ok[start : start + chunk])
            if not len(todo):
                continue
            j, agree = _jacobians(oracle, points[todo], factor * room[todo], basis, domain)
            jac = np.zeros((len(points), *j.shape[1:])) if jac is None else jac
            clean = agree.all(axis=1)
            jac[todo[clean]], ok[todo[clean]] = j[clean], True
    return (np.zeros((len(points), 0, r)) if jac is None else jac), ok


def _regions(ts: Array, need: NDArray[np.bool_], shared: bool,
             ) -> tuple[Array, Array, NDArray[np.int64]]:
    """Where to measure the Jacobians for the kinks at ``ts`` (sorted) of one line that
    ``need`` a normal: the parameters and rooms of the points ``(r,)``, and the points on the
    left and right of each kink ``(n, 2)`` (-1 where none is needed). A kink's own points are
    ``room = min(0.3 gap, 0.01)`` before and after it (``gap``: to its nearest neighbour); with
    ``shared``, two kinks that need normals and have none between them share one point, half
    way (the linear region between them is one, so both read its Jacobian)."""
    n = len(ts)
    gap = np.diff(ts)
    nearest = np.minimum(np.r_[np.inf, gap], np.r_[gap, np.inf]) if n > 1 else np.ones(n)
    own = np.minimum(0.3 * nearest, 1e-2)
    at, room, sides = [], [], np.full((n, 2), -1, dtype=np.int64)
    for j in np.flatnonzero(need):
        if shared and j > 0 and need[j - 1]:
            sides[j, 0] = sides[j - 1, 1]
        else:
            sides[j, 0] = len(at)
            at.append(ts[j] - own[j])
            room.append(own[j])
        sides[j, 1] = len(at)
        if shared and j + 1 < n and need[j + 1]:
            at.append(0.5 * (ts[j] + ts[j + 1]))
            room.append(min(0.3 * gap[j], 1e-2))
        else:
            at.append(ts[j] + own[j])
            room.append(own[j])
    return np.array(at), np.array(room), sides


def _normals(oracle: Oracle, line: Line, ts: Array, slope_change: Array,
             need: NDArray[np.bool_], shared: bool, span: Span | None = None,
             domain: Domain | None = None) -> Array:
    """The unit normals ``(n, d)`` at the kinks ``ts`` ``(n,)`` of ``line`` that ``need`` one,
    from the Jacobians on both sides (:func:`_regions`; along ``span`` where given, and again
    along every coordinate for a kink where a check's slope does not vanish on either side);
    NaN rows where they are not needed,
    where no step gives clean Jacobians, where the jump is zero or not rank one (two neurons
    at once), or where the jump along the line is not the change of slope ``(n, K)`` the line
    search measured there (a Jacobian taken where a neuron the search missed is active: a
    neuron further up active on a thin slab of the line changes its slope much, its values
    little; with one output no rank can tell). With ``shared``, the kinks left without a normal
    are measured again with points of their own, beside them."""
    at, room, sides = _regions(ts, need, shared)
    inside = None if domain is None else domain.within(line, (-np.inf, np.inf))
    if inside is not None and len(at):  # a kink near a face: its point there, in the box
        at = np.clip(at, *inside)
    normals = np.full((len(ts), len(line.origin)), np.nan)
    if not len(at):
        return normals
    basis = None if span is None else span.basis
    jac, ok = _clean_jacobians(oracle, line.at(at), room, basis, domain)
    off = np.zeros(len(ts), dtype=bool)
    if span is not None:  # the checks' slopes, against the largest slope of the region
        check = np.abs(jac[:, :, -span.checks:]).max(axis=(1, 2))
        wide = _OFF_SPAN * (1 + np.abs(jac).max(axis=(1, 2)))
        off[need] = np.any(check[sides[need]] > wide[sides[need]], axis=1)
        inside = len(basis) - span.checks
        jac = jac[:, :, :inside] @ basis[:inside]  # (regions, K, d): in input coordinates
    for j in np.flatnonzero(need & ~off & np.all(ok[sides], axis=1)):
        jump = jac[sides[j, 1]] - jac[sides[j, 0]]
        miss = np.max(np.abs(jump @ line.direction - slope_change[j]))
        if not miss <= _ALONG * np.max(np.abs(slope_change[j])):
            continue
        _, s, vt = np.linalg.svd(jump, full_matrices=False)
        if s[0] > 0 and (len(s) == 1 or s[1] <= _RANK_ONE * s[0]):
            normals[j] = vt[0]
    if off.any():  # a neuron off the span: along every coordinate, as before the first layer
        normals[off] = _normals(oracle, line, ts, slope_change, off, shared, None, domain)[off]
    again = need & ~off & np.isnan(normals[:, 0])
    if shared and again.any():  # measured beside each point instead, as a lone one is
        normals[again] = _normals(oracle, line, ts, slope_change, again, False, span,
                                 domain)[again]
    return normals


def find_critical_points(oracle: Oracle, lines: list[Line], *, first_line: int = 0,
                         t_range: tuple[float, float] = (-4.0, 3.3),
                         known: Callable[[Array], Array] | None = None,
                         span: Span | None = None,
                         domain: Domain | None = None) -> CriticalPoints:
    """Search each of ``lines`` for critical points and measure each one's normal.

    Costs the line searches plus ``2d + 1`` queries per linear region next to a critical point
    whose normal is measured (two consecutive critical points share the region between them:
    about ``2d + 1`` per critical point on a line that crosses many, ``2 (2d + 1)`` for one
    alone), more when a Jacobian must be measured again with a smaller step. When a line's
    search left an interval unresolved or stopped early (a critical point may be missing between
    two found), no region is shared on it. Points whose normal cannot be measured cleanly are
    left out, and so are the points closer than ``1e-7`` (in ``t``) to the next, whose steps
    would be too short to tell a slope from rounding (a line along a hyperplane, as an aimed
    line that follows a unit's level set may be, finds kinks a few 1e-8 apart by the hundred,
    whose Jacobians are noise).
    ``first_line`` numbers the lines (for :attr:`CriticalPoints.line`).
    ``known(points (m, d)) → (m, d)``: the normals of the points that lie on a hyperplane
    already extracted (NaN rows for the others), which are then taken from it, with no query.
    ``span``: the first layer's :class:`Span` (rank ``r``), along which the Jacobians are then
    measured: ``2 (r + 2) + 1`` queries a region instead of ``2d + 1``, and a kink off it
    measured again along every coordinate.
    ``domain``: where queries are bounded, each line is searched only where it lies in the box
    (a line that misses it is skipped), and the Jacobians' steps turn back at its faces.
    """
    d = len(lines[0].origin) if lines else 0
    found = CriticalPoints.empty(d)
    for i, line in enumerate(lines):
        inside = t_range if domain is None else domain.within(line, t_range)
        if inside is None:
            continue
        kinks, stats = line_kinks(oracle, line, inside)
        ts = np.array([k.t for k in kinks])
        slopes = np.array([k.slope_change for k in kinks])
        xs = line.at(ts) if len(ts) else np.zeros((0, d))
        given = known(xs) if known is not None else np.full(xs.shape, np.nan)
        gap = np.diff(ts)
        crowded = np.minimum(np.r_[np.inf, gap], np.r_[gap, np.inf]) < _CROWDED
        need = ~np.isfinite(given).all(axis=1) & ~crowded
        complete = not (stats.unresolved or stats.curved or stats.notes)
        normals = np.where(need[:, None],
                           _normals(oracle, line, ts, slopes, need, complete, span, domain),
                           given)
        keep = np.isfinite(normals).all(axis=1)
        if keep.any():
            found = found.join(CriticalPoints(xs[keep], normals[keep],
                                              np.full(int(keep.sum()), first_line + i)))
    return found
