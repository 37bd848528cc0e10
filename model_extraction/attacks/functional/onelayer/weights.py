"""Rows of the units whose critical points a line shows (§6.4, default mode).

Each new critical point's unit has the rank-one Jacobian difference ``g rᵀ`` of the regions
beside it (:func:`~model_extraction.attacks.functional.rows.fit_row`). The regions are
measured as :func:`.regions.plan_regions` plans (one measured region serves its neighbours
across known units), with steps sized from the gap to the neighbouring critical points and
clear of the hyperplanes known. A probe that crossed another hyperplane is detected (by the
fit, by its clipped entry, by its room, by the slope change the line search saw, or with
``K = 1`` by half-step re-measurement) and measured again; then each unit is cross-checked
along a fresh direction before it is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from model_extraction.oracle import Oracle

from ..jacobian import jacobian_columns, jacobians, room_from
from ..rows import RowFit, fit_row
from ..search import Kink, Line
from .regions import Plan, meeting_point, plan_regions, room, signed_steps
from .state import Measured, Run, Units

Array = NDArray[np.float64]
Bools = NDArray[np.bool_]
Found = tuple[Array, float, Array, Array, float]  # row, bias, out, point, error

__all__ = ["cross_check", "half_step_mismatches", "recover_on_line", "slope_mismatch"]

# A Jacobian difference this close to rank one (estimated row error) is one ReLU's.
_CLEAN_FIT = 1e-9
# Rounds of re-measuring the columns whose probes crossed a hyperplane.
_ROUNDS = 6


@dataclass
class _Regions:
    """The Jacobians measured along one line, and how each needed region follows from them."""

    line: Line
    kinks: list[Kink]
    new: list[int]
    edges: Array  # ends of the regions along the line (region s: kink s - 1 to kink s)
    centres: Array  # t of each measured region's centre
    points: Array  # (m, d) the measured regions' centres
    values: Array  # (m, K)
    jacs: Array  # (m, K, d)
    col_steps: Array  # (m, d), negative: probed backwards
    known_fwd: Array  # (m, d) room before a known hyperplane or the box
    known_back: Array
    plan: Plan
    index: dict[int, int]  # measured region -> row of points
    src: dict[int, int]  # needed region -> row of points it is derived from
    unchecked: Bools  # columns still to be re-measured at half their step (K = 1)
    flipped: Bools = field(init=False)
    remeasured: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.flipped = np.zeros(self.col_steps.shape, dtype=bool)

    @property
    def multi(self) -> bool:
        return self.values.shape[1] > 1

    def side(self, s: int) -> Array:
        """The Jacobian of region ``s``: the measured one, shifted by the known units between."""
        w, offset, _ = self.plan[s]
        return self.jacs[self.index[w]] + offset if offset.size else self.jacs[self.index[w]]

    def clean(self, fit: RowFit) -> bool:
        # With K > 1 a clean rank-one difference is one ReLU's. If the slope change the
        # line search saw disagrees even after both Jacobians were measured again, the
        # search's slope is the one that is off (a neighbouring critical point inside its
        # probes); the strict cross-check still tests the unit along a fresh direction.
        return self.multi and fit.error_estimate < _CLEAN_FIT


def slope_mismatch(fit: RowFit, line: Line, kink: Kink) -> float:
    """Relative gap between the slope change the line search saw at ``kink`` and the one the
    fitted unit predicts along ``line`` (``g · (r·v)``)."""
    seen = kink.slope_change
    gap = float(np.linalg.norm(fit.out * float(fit.row @ line.direction) - seen))
    scale = float(np.linalg.norm(seen))
    return gap / scale if scale > 0 else (np.inf if gap > 0 else 0.0)


def recover_on_line(
    run: Run, units: Units, measured: Measured, line: Line, kinks: list[Kink], new: list[int],
    match: NDArray[np.int64], t_range: tuple[float, float],
) -> int:
    """Rows of the ``new`` units on ``line`` from the Jacobians of the regions beside them.

    ``match`` gives the known unit of each critical point (``-1`` for the ``new`` ones) and
    ``t_range`` the stretch searched. Adds the units that pass their cross-check to ``units``
    and returns how many were added.
    """
    regions = _measure(run, units, measured, line, kinks, new, match, t_range)
    fits = _settle(run, regions)
    side_t, side_value = _side_values(run, measured, regions)
    measured.add_jacobians(regions.points, regions.jacs, regions.col_steps)
    found, strict = _candidates(run, regions, fits, side_t, side_value)
    added = 0
    tolerance = np.where(strict, 1e-6, 1e-3)
    for unit, real in zip(found, cross_check(run, measured, found, tolerance), strict=True):
        if real:
            added += units.add(*unit)
        else:
            run.notes.append(
                "a critical point did not behave as one ReLU along a second direction "
                "(two close critical points merged on the line); skipped"
            )
    return added


def _measure(run: Run, units: Units, measured: Measured, line: Line, kinks: list[Kink],
             new: list[int], match: NDArray[np.int64], t_range: tuple[float, float]) -> _Regions:
    """The Jacobians of the regions :func:`.regions.plan_regions` picks, at their centres."""
    ts = np.array([k.t for k in kinks])
    speed = float(np.linalg.norm(line.direction))
    # The outer regions end where the search ended: kinks beyond it are unknown.
    edges = np.concatenate([[t_range[0]], ts, [t_range[1]]])
    regions, plan = plan_regions(units, line, edges, new, match)
    centres = np.array([0.5 * (edges[s] + edges[s + 1]) for s in regions])
    half = np.array([0.5 * (edges[s + 1] - edges[s]) for s in regions]) * speed
    steps = np.minimum(run.cfg.step_fraction * half, 0.5 * run.width)
    points = line.at(centres)
    # Probes stay clear of the hyperplanes already known (no query is needed to know where
    # they are), probing backwards where there is more room behind.
    known_fwd, known_back = room(run, units, points)
    col_steps = signed_steps(steps[:, None], known_fwd, known_back)
    values, jacs = jacobians(run.oracle, points, col_steps)
    measured.remember(points, values)
    index = {s: n for n, s in enumerate(regions)}
    # With K = 1 every difference is rank one, so crossings are caught by measuring each
    # column a second time with half the step: inside one linear region both agree.
    return _Regions(line, kinks, new, edges, centres, points, values, jacs, col_steps,
                    known_fwd, known_back, plan, index,
                    {s: index[w] for s, (w, _, _) in plan.items()},
                    np.full(col_steps.shape, values.shape[1] == 1))


def _settle(run: Run, regions: _Regions) -> dict[int, RowFit]:
    """Re-measure the columns whose probes crossed a hyperplane until none did (at most
    ``_ROUNDS`` times); the fit of each new critical point's Jacobian difference."""
    for _round in range(_ROUNDS):
        bad, fits, fwd, back = _bad_columns(run, regions)
        if not bad.any():
            return fits
        _remeasure(run, regions, bad, fwd, back)
    run.notes.append(f"some Jacobian columns stayed inconsistent after {_ROUNDS} re-measurements")
    return {i: fit_row(regions.side(i + 1) - regions.side(i), orient=regions.line.direction)
            for i in regions.new}


def _bad_columns(run: Run, regions: _Regions
                 ) -> tuple[Bools, dict[int, RowFit], Array, Array]:
    """The columns to measure again, the fits of this round, and the room of each probe."""
    r = regions
    bad = np.zeros(r.col_steps.shape, dtype=bool)
    if r.unchecked.any():
        bad |= half_step_mismatches(run.oracle, r.points, r.values, r.jacs, r.col_steps,
                                    r.unchecked)
    diffs = {i: r.side(i + 1) - r.side(i) for i in r.new}
    fits, vouched = _suspects(r, diffs, bad)
    _clipped(r, diffs, bad)
    # Well-fitted hyperplanes of this line's new units (each through its critical point)
    # show which probes crossed one of them.
    good = [i for i in r.new if fits[i].error_estimate < 1e-8]
    fwd, back = r.known_fwd, r.known_back
    if good:
        ts = np.array([k.t for k in r.kinks])
        line_rows = np.array([fits[i].row for i in good])
        line_b = -np.sum(line_rows * r.line.at(ts[good]), axis=1)
        line_fwd, line_back = room_from(r.points, line_rows, line_b)
        fwd, back = np.minimum(r.known_fwd, line_fwd), np.minimum(r.known_back, line_back)
    bad |= np.abs(r.col_steps) >= 0.99 * np.where(r.col_steps > 0, fwd, back)
    # The slope change the line search saw must be what the fitted unit predicts. If
    # not, and nothing is suspect, probes crossed a hyperplane without breaking the
    # rank-one structure (any hyperplane when K = 1): re-measure both Jacobians, once.
    # Not when the fit is not clean and clean fits of other critical points vouch for
    # both Jacobians (a merged critical point: nothing to repair).
    for i in r.new:
        sides = [r.src[i], r.src[i + 1]]
        merged = not r.clean(fits[i]) and bool(vouched[sides].all())
        if (not bad[sides].any() and i not in r.remeasured and not merged
                and slope_mismatch(fits[i], r.line, r.kinks[i]) > 1e-4):
            r.remeasured.add(i)
            bad[sides] = True
    return bad, fits, fwd, back


def _suspects(r: _Regions, diffs: dict[int, Array], bad: Bools
              ) -> tuple[dict[int, RowFit], Bools]:
    """Fit each difference; mark in ``bad`` the columns its fit flags, unless a clean fit of
    the same region vouches for them. Returns the fits and the vouched columns."""
    # A probe that crossed another hyperplane breaks the rank-one structure: the fit
    # flags its column, on either side. A column that a clean fit of the same region
    # vouches for is not to blame: two critical points merged into one on the line
    # (a rank-two difference) must not send their neighbours' columns to re-measurement.
    fits, suspects = {}, {}
    vouched = np.zeros(r.col_steps.shape, dtype=bool)
    for i in r.new:
        fits[i] = fit_row(diffs[i], orient=r.line.direction)
        suspects[i] = fits[i].suspicious_columns()
        if r.clean(fits[i]):
            for s_ in (r.src[i], r.src[i + 1]):
                vouched[s_] = True
                vouched[s_, suspects[i]] = False
    for i in r.new:
        cols = suspects[i]
        for s_ in (r.src[i], r.src[i + 1]):
            bad[s_, cols[~vouched[s_, cols]]] = True
    return fits, vouched


def _clipped(r: _Regions, diffs: dict[int, Array], bad: Bools) -> None:
    """Mark in ``bad`` the probes that crossed their unit's *own* hyperplane.

    Such a probe keeps the difference rank one but clips its entry: it measured the column only
    up to the crossing, so that ``|D_j| |s| = |slope change| |t - t_i|`` exactly, where an
    uncrossed probe towards the hyperplane gives less. No fit is needed for this test.
    """
    for i in r.new:
        seen = r.kinks[i].slope_change
        size = np.linalg.norm(diffs[i], axis=0)
        sign = np.sign(seen @ diffs[i])  # sign of the row's entries (r · v > 0)
        for s_, direction in ((r.src[i], 1.0), (r.src[i + 1], -1.0)):
            # Before the kink y_i < 0 and a probe goes towards 0 if s r_j > 0.
            towards = direction * r.col_steps[s_] * sign > 0
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = size * np.abs(r.col_steps[s_]) / (
                    np.linalg.norm(seen) * abs(r.centres[s_] - r.kinks[i].t))
            bad[s_] |= towards & (ratio > 0.999)


def _remeasure(run: Run, r: _Regions, bad: Bools, fwd: Array, back: Array) -> None:
    """Measure the ``bad`` columns again with new steps.

    First the other way with the same step (a crossed hyperplane lies ahead, and a large step
    keeps the precision); a column already turned, or with little room behind, shrinks by 8.
    """
    size = np.abs(r.col_steps)
    turned = np.minimum(size, 0.5 * np.where(r.col_steps > 0, back, fwd))
    turn = bad & ~r.flipped & (turned >= size / 8.0)
    r.col_steps = np.where(
        turn, -np.sign(r.col_steps) * turned,
        np.where(bad, signed_steps(size / 8.0, fwd, back), r.col_steps))
    r.flipped |= turn
    pairs = np.argwhere(bad).astype(np.int64)
    probe_steps = r.col_steps[pairs[:, 0], pairs[:, 1]]
    cols = jacobian_columns(run.oracle, r.points, r.values, pairs, probe_steps)
    r.jacs[pairs[:, 0], :, pairs[:, 1]] = cols
    if not r.multi:
        r.unchecked |= bad


def _side_values(run: Run, measured: Measured, r: _Regions
                 ) -> tuple[dict[int, float], dict[int, Array]]:
    """The ``t`` and the value at the centre of each needed region; one query each for those
    that were derived, not measured (they place the crossings)."""
    derived = sorted(s for s in r.plan if s not in r.index)
    side_t = {s: 0.5 * (r.edges[s] + r.edges[s + 1]) for s in r.plan}
    side_value = {s: r.values[r.index[s]] for s in r.plan if s in r.index}
    if derived:
        at = r.line.at(np.array([side_t[s] for s in derived]))
        got = np.asarray(run.oracle(at), dtype=np.float64)
        measured.remember(at, got)
        side_value.update(zip(derived, got, strict=True))
    return side_t, side_value


def _candidates(run: Run, r: _Regions, fits: dict[int, RowFit], side_t: dict[int, float],
                side_value: dict[int, Array]) -> tuple[list[Found], list[bool]]:
    """The units of the new critical points whose fits are one ReLU's, each with whether it
    must pass the strict cross-check."""
    found: list[Found] = []
    strict: list[bool] = []
    for i in r.new:
        fit = fits[i]
        # Refine the crossing from the two regions' exact affine pieces along the line.
        t = meeting_point(side_value[i], r.side(i) @ r.line.direction, side_value[i + 1],
                          r.side(i + 1) @ r.line.direction, side_t[i], side_t[i + 1])
        if not r.edges[i] < t < r.edges[i + 2]:
            t = r.kinks[i].t
        point = r.line.at(np.array([t]))[0]
        bias = -float(fit.row @ point)
        off = slope_mismatch(fit, r.line, r.kinks[i]) > 1e-3
        if fit.error_estimate > 1e-6 or (off and not r.clean(fit)):
            run.notes.append(f"a critical point at t={t:.6g} was not a single ReLU; skipped")
            continue
        # Kept on a clean fit alone, the unit must pass a strict cross-check: a probe that
        # only just crossed the unit's own hyperplane leaves the fit clean but a few entries
        # slightly clipped, which the slope change seen would have exposed.
        strict.append(off)
        # A derived side carries the errors of the units it was derived across.
        error = float(np.hypot(fit.error_estimate, np.hypot(r.plan[i][2], r.plan[i + 1][2])
                               / max(float(np.linalg.norm(fit.out)), 1e-300)))
        found.append((fit.row, bias, fit.out, point, error))
    return found, strict


def cross_check(run: Run, measured: Measured, found: list[Found],
                tolerance: Array) -> list[bool]:
    """Cross each candidate hyperplane in a fresh random direction: is the kink there?

    A unit found at point ``p`` with unit row ``r`` and output vector ``g`` must make the
    slope along any direction ``u`` jump by exactly ``g |r·u|`` at ``p``. Two close critical
    points that the line search merged (possible when ``K = 1``, where every Jacobian
    difference is rank one) are separated along another direction, so no jump is seen at
    ``p``. ``tolerance`` is the relative error allowed per candidate. Costs 3 queries per
    candidate.
    """
    if not found:
        return []
    n = len(found)
    u = run.rng.standard_normal((n, run.d))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    delta = 1e-4 * run.width
    p = np.array([f[3] for f in found])
    u = run.domain.inward(p, u, delta)
    x = np.concatenate([p - delta * u, p, p + delta * u])
    y = np.asarray(run.oracle(x), dtype=np.float64)
    measured.remember(x, y)
    left, mid, right = y[:n], y[n : 2 * n], y[2 * n :]
    jump = (right - 2 * mid + left) / delta
    expected = np.array([f[2] * abs(float(f[0] @ ui)) for f, ui in zip(found, u, strict=True)])
    noise = 1e-12 * (np.abs(mid).max(axis=1) + 1.0) / delta
    err = np.linalg.norm(jump - expected, axis=1)
    return list(err <= tolerance * np.linalg.norm(expected, axis=1) + noise)


def half_step_mismatches(oracle: Oracle, points: Array, values: Array, jacs: Array,
                         col_steps: Array, unchecked: Bools) -> Bools:
    """Re-measure the ``unchecked`` columns at half their step; mark those that disagree.

    Marks them checked (in place). A disagreement means the probe left the linear region: the
    column is to be measured again. Returns a mask shaped like ``col_steps`` ``(m, d)``.
    """
    pairs = np.argwhere(unchecked).astype(np.int64)
    unchecked[:] = False
    half = 0.5 * col_steps[pairs[:, 0], pairs[:, 1]]
    again = jacobian_columns(oracle, points, values, pairs, half)[:, 0]
    first = jacs[pairs[:, 0], 0, pairs[:, 1]]
    scale = np.abs(values[pairs[:, 0], 0]) + 1.0
    tol = 1e-9 * np.maximum(np.abs(first), np.abs(again)) + 1e-13 * scale / np.abs(half)
    bad = np.zeros(col_steps.shape, dtype=bool)
    flag = np.abs(first - again) > tol
    bad[pairs[flag, 0], pairs[flag, 1]] = True
    return bad
