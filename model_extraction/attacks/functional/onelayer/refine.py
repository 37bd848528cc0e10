"""Precision refinement of the one-hidden-layer attack (default mode): weak units re-measured
where every other hyperplane is far away, with the largest steps their region allows."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ..jacobian import jacobian_columns
from ..rows import fit_row
from .regions import meeting_point, room
from .state import Measured, Run, Units

Array = NDArray[np.float64]

__all__ = ["refine"]

_CANDIDATES = 64  # random points of each hyperplane, the one furthest from all others kept


def refine(run: Run, units: Units, measured: Measured) -> None:
    """Re-measure the units less precise than ``refine_bits``, the weakest first, within
    ``refine_share`` of the queries spent so far (``2 (d + 1)`` queries per unit).

    With every hyperplane approximately known, the attack can choose, for unit ``i``, the
    point ``p`` of its hyperplane with the largest clearance ``c`` to all the others, take
    the two Jacobians at ``p ± (c/2) rᵢ`` and give each column the largest step (forward or
    backward) that provably stays inside the linear region. The finite-difference error is
    the oracle's rounding divided by the step, so larger steps give more bits. A unit takes
    the new row only if its estimated error is smaller and it agrees with the first one.
    """
    errors = np.array(units.errors)
    weak = np.flatnonzero(errors > 2.0 ** -run.cfg.refine_bits)
    # The weakest first, within a share of what finding the units cost.
    affordable = int(run.cfg.refine_share * run.oracle.queries // (2 * (run.d + 1)))
    weak = weak[np.argsort(-errors[weak], kind="stable")][:affordable]
    chunk = max(1, int(2e7 // (2 * len(units) * run.d)))  # bounds the (2n, h, d) step array
    improved = 0
    for start in range(0, len(weak), chunk):
        improved += _refine_units(run, units, measured, weak[start : start + chunk])
    if len(weak):
        run.notes.append(f"refinement re-measured {len(weak)} units, {improved} more "
                         "precisely")


def _clear_points(run: Run, units: Units, weak: NDArray[np.int64]) -> tuple[Array, Array]:
    """For each unit of ``weak``, the point of its hyperplane furthest from all the others
    (and from the box's faces along its row, when queries stay inside the box), among
    ``_CANDIDATES`` random ones and its critical point: ``(points (n, d), clearance (n,))``."""
    rows, biases = np.array(units.rows), np.array(units.biases)
    n = len(weak)
    xs = run.centre + run.rng.uniform(-0.5, 0.5, (n, _CANDIDATES, run.d)) * run.width
    r_w, b_w = rows[weak], biases[weak]
    on = xs - (np.einsum("ncd,nd->nc", xs, r_w) + b_w[:, None])[..., None] * r_w[:, None, :]
    on = np.concatenate([on, np.array(units.points)[weak][:, None, :]], axis=1)
    y = np.einsum("ncd,hd->nch", on, rows) + biases  # (n, candidates + 1, h)
    y[np.arange(n), :, weak] = np.inf
    clearance = np.abs(y).min(axis=2)
    if run.domain.bounded:
        # Moving along r_i by c must not leave the box either (points outside it: < 0).
        lo, hi = run.domain.lo, run.domain.hi
        speed = np.abs(r_w)[:, None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            face = np.where(speed > 0, np.minimum(hi - on, on - lo) / speed, np.inf)
        clearance = np.minimum(clearance, face.min(axis=2))
    best = np.argmax(clearance, axis=1)
    return on[np.arange(n), best], clearance[np.arange(n), best]


def _refine_units(run: Run, units: Units, measured: Measured, weak: NDArray[np.int64]) -> int:
    """:func:`refine` for the units ``weak``; returns how many got more precise."""
    rows = np.array(units.rows)
    p, c = _clear_points(run, units, weak)
    room_ok = c > 1e-6 * run.width  # a hyperplane met only where the box pins it
    weak, p, c = weak[room_ok], p[room_ok], c[room_ok]
    n = len(weak)
    if not n:
        return 0
    shift = 0.5 * c[:, None] * rows[weak]
    points = np.concatenate([p + shift, p - shift])  # (2n, d): the y_i > 0 side, then < 0
    forward, backward = room(run, units, points)
    cap = run.width * np.sqrt(run.d)
    steps = (0.5 * np.minimum(np.maximum(forward, backward), cap)
             * np.where(forward >= backward, 1.0, -1.0))
    values = np.asarray(run.oracle(points), dtype=np.float64)
    measured.remember(points, values)
    cols = np.stack(np.meshgrid(np.arange(2 * n), np.arange(run.d), indexing="ij"), -1)
    slopes = jacobian_columns(run.oracle, points, values, cols.reshape(-1, 2), steps.reshape(-1))
    jacs = slopes.reshape(2 * n, run.d, -1).transpose(0, 2, 1)
    measured.add_jacobians(points, jacs, steps)
    improved = 0
    for m, i in enumerate(weak.tolist()):
        fit = fit_row(jacs[m] - jacs[n + m], orient=rows[i])
        if fit.error_estimate >= units.errors[i]:
            continue
        if float(fit.row @ rows[i]) < 1 - 64 * max(units.errors[i], 1e-12):
            run.notes.append("a refined row disagreed with its first estimate; kept the first")
            continue
        # The crossing on the segment between the two points, from both affine pieces.
        u = 2 * shift[m]
        t = meeting_point(values[n + m], jacs[n + m] @ u, values[m], jacs[m] @ u, 0.0, 1.0)
        point = (p[m] - shift[m]) + np.clip(t, 0.0, 1.0) * u
        units.rows[i], units.biases[i] = fit.row, -float(fit.row @ point)
        units.outs[i], units.points[i], units.errors[i] = fit.out, point, fit.error_estimate
        improved += 1
    return improved
