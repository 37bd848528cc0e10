"""Which regions of a line to measure a Jacobian in, and how the others follow from them with no
query; where two regions' affine pieces meet; finite-difference steps that fit in a region."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ..jacobian import room_from
from ..search import Line
from .state import Run, Units

Array = NDArray[np.float64]

__all__ = ["meeting_point", "plan_regions", "room", "signed_steps"]

# A region's Jacobian is derived from a measured one across at most this many known critical
# points, each of a unit whose row is known to this mean absolute error (about 36 bits). The
# error each crossed unit carries over goes into the new unit's estimate (so the refinement
# picks it up if it matters).
_MAX_CROSSED = 8
_TRUSTED_ERROR = 2.0**-36

Plan = dict[int, tuple[int, Array, float]]


def meeting_point(ya: Array, ma: Array, yb: Array, mb: Array, ta: float, tb: float) -> float:
    """Where the affine pieces ``ya + ma (t - ta)`` and ``yb + mb (t - tb)`` meet (least
    squares over the outputs): the critical point between two measured regions."""
    dm = ma - mb
    return ta + float((yb - ya - mb * (tb - ta)) @ dm) / float(dm @ dm)


def signed_steps(size: Array, forward: Array, backward: Array) -> Array:
    """Steps of at most ``size`` and at most half the room ahead, forwards unless there is
    more room behind than in front (then backwards, negative)."""
    back = (0.5 * forward < size) & (backward > forward)
    # A floor keeps a point that lies on a known hyperplane (no room either way) from a zero
    # step; its probe then crosses, and the checks downstream see it.
    ahead = np.maximum(np.minimum(size, 0.5 * forward), 1e-9 * size)
    behind = np.maximum(np.minimum(size, 0.5 * backward), 1e-9 * size)
    return np.where(back, -behind, ahead)


def plan_regions(units: Units, line: Line, edges: Array, new: list[int],
                 match: NDArray[np.int64]) -> tuple[list[int], Plan]:
    """Which regions of the line to measure, and how each needed region follows from them.

    The new critical point ``i`` needs the Jacobians of regions ``i`` and ``i + 1`` (region
    ``s`` lies between critical points ``s - 1`` and ``s``; ``edges`` are the ends of the
    regions along the line). Between two new critical points every critical point on the line
    belongs to a known unit ``k`` (``match``), and crossing it changes the Jacobian by
    ``± g_k r_kᵀ``, known without a query. So one measured region serves every needed region
    of its stretch of the line, as long as it is at most ``_MAX_CROSSED`` known, precise units
    away: the widest such region is measured (the widest region allows the largest steps).
    Returns the regions to measure and, for each needed region, ``(measured region, Jacobian
    offset, error of the offset)``; the error combines those of the units crossed.
    """
    width = np.diff(edges)
    d = len(line.origin)
    rows = outs = np.zeros((0, d))
    trusted = np.zeros(0, dtype=bool)
    errors = np.zeros(0)
    if len(units):
        rows, outs = np.array(units.rows), np.array(units.outs)
        errors = np.array(units.errors)
        trusted = errors <= _TRUSTED_ERROR
    bounds = [-1, *new, len(edges) - 2]
    plan: Plan = {}
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        # Regions a + 1 .. b lie between new critical points a and b (or the line's ends).
        sides = sorted({s for s in (a + 1, b) if (s == a + 1 and a >= 0) or
                        (s == b and b < len(edges) - 2)})
        if not sides:
            continue

        def reach(s: int, w: int) -> bool:
            between = match[min(s, w) : max(s, w)]
            return len(between) <= _MAX_CROSSED and bool(np.all(trusted[between]))

        candidates = range(a + 1, b + 1)
        common = [w for w in candidates if all(reach(s, w) for s in sides)]
        if common:
            choice = {s: max(common, key=lambda w: width[w]) for s in sides}
        else:
            choice = {s: max((w for w in candidates if reach(s, w)), key=lambda w: width[w])
                      for s in sides}
        for s, w in choice.items():
            plan[s] = (w, *_offset(line, match, rows, outs, errors, s, w))
    measure = sorted({w for w, _, _ in plan.values()})
    return measure, plan


def _offset(line: Line, match: NDArray[np.int64], rows: Array, outs: Array, errors: Array,
            s: int, w: int) -> tuple[Array, float]:
    """The Jacobian of region ``s`` minus that of region ``w`` (the known units crossed between
    them), and the error it carries; an empty offset when ``s == w``."""
    lo, hi = min(s, w), max(s, w)
    if hi == lo:
        return np.zeros((0,)), 0.0
    ks = match[lo:hi]
    turn = np.sign(rows[ks] @ line.direction) * (1.0 if s > w else -1.0)
    offset = np.einsum("k,kc,kd->cd", turn, outs[ks], rows[ks])
    # Each crossed unit adds its own error to the derived Jacobian's entries.
    spread = float(np.hypot.reduce(np.linalg.norm(outs[ks], axis=1) * errors[ks]))
    return offset, spread


def room(run: Run, units: Units, points: Array) -> tuple[Array, Array]:
    """How far each coordinate of ``points`` ``(m, d)`` may move, forwards and backwards,
    before it meets the hyperplane of a unit found so far
    (:func:`~model_extraction.attacks.functional.jacobian.room_from`) or a face of the box (when
    queries must stay inside it): ``(forward, backward)``, ``(m, d)``."""
    fwd, back = run.domain.face_room(points)
    if not len(units):
        return fwd, back
    f, b = room_from(points, np.array(units.rows), np.array(units.biases))
    return np.minimum(f, fwd), np.minimum(b, back)
