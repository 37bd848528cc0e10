"""Paper mode's critical points and weights (Jagielski et al. 2020, §6.3–6.4): Algorithm 1
interval by interval over ``t ∈ [-h², h²]``, then the weight recovery, coordinate by coordinate.

At a critical point ``x_i`` of unit ``i``, the second derivative of ``O_L`` along ``e_j`` is
``± A(0)_ji A(1)_i`` (§6.4.1): the derivative just after minus just before the hyperplane. Its
size gives ``|A(0)_ji|`` up to the unit's scale; the size along ``e_ref + e_j`` is the sum of the
two sizes when the entries share a sign and their difference otherwise (§6.4.2). Each derivative
is a forward difference, so one coordinate costs 4 queries for its size and 4 for its sign.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from model_extraction.oracle import Oracle

from ..checks import refuse_curved
from ..search import Line, search_line_paper
from .state import Measured, Run, Units

Array = NDArray[np.float64]

__all__ = ["paper_rows", "recover_row_second_differences"]


def paper_rows(run: Run, units: Units, measured: Measured) -> None:
    """Random lines through the box, searched over ``t ∈ [-h², h²]`` (§6.3), and each critical
    point's row from second differences (§6.4), until ``hidden`` units or ``max_lines``."""
    h = int(run.cfg.hidden or 0)
    while run.lines < run.cfg.max_lines and len(units) < h:
        origin = run.centre + run.rng.uniform(-0.25, 0.25, run.d) * run.width
        v = run.rng.standard_normal(run.d)
        line = Line(origin, v / np.linalg.norm(v) * run.width)
        run.lines += 1
        run.log.enter("critical points", len(units))
        kinks, stats = search_line_paper(run.oracle, line, (-float(h) ** 2, float(h) ** 2))
        run.log.leave(len(units))
        refuse_curved(stats, run.lines)
        run.log.enter("weights", len(units))
        for kink in kinks:
            point = line.at(np.array([kink.t]))[0]
            row, out, err, xs, ys = recover_row_second_differences(run.oracle, point, run.width)
            measured.remember(xs, ys)
            if err > 1e-8:
                # The probes at ±c met another hyperplane: §6.4's sizes are then sums of two
                # units' second differences. The pair test exposes it; look elsewhere.
                run.notes.append(
                    f"a critical point gave inconsistent second differences (relative "
                    f"error {err:.1e}); skipped"
                )
                continue
            units.add(row, -float(row @ point), out, point, err)
            if len(units) >= h:
                break
        run.log.leave(len(units))


def _second_differences(
    oracle: Oracle, x: Array, dirs: Array, c: float, eps: float
) -> tuple[Array, Array, Array]:
    """``∂O/∂u (x + c u) - ∂O/∂u (x - c u)`` for each direction ``u`` (rows of ``dirs``)."""
    n = len(dirs)
    probes = np.concatenate(
        [x + c * dirs, x + (c + eps) * dirs, x - c * dirs, x - (c - eps) * dirs]
    )
    out = np.asarray(oracle(probes), dtype=np.float64)
    f_p, f_pe, f_m, f_me = out[:n], out[n : 2 * n], out[2 * n : 3 * n], out[3 * n :]
    second = (f_pe - f_p) / eps - (f_me - f_m) / eps
    return second, probes, out


def recover_row_second_differences(
    oracle: Oracle, point: Array, width: float, c: float = 1e-2, eps: float = 1e-3
) -> tuple[Array, Array, float, Array, Array]:
    """Row of the unit critical at ``point``, up to a global sign, in ``8 d`` queries.

    ``c`` and ``eps`` are the offset from the hyperplane and the derivative step, relative to
    the input range ``width``. Returns ``(unit row, output vector, error estimate, probes,
    outputs)``; the probes and outputs are kept for the last layer (§6.6).
    """
    d = len(point)
    c, eps = c * width, eps * width
    eye = np.eye(d)
    second, xs1, ys1 = _second_differences(oracle, point, eye, c, eps)
    size = np.linalg.norm(second, axis=1)  # ∝ |A(0)_ji|
    ref = int(np.argmax(size))
    pair = eye + eye[ref]
    pair[ref] = eye[ref]  # e_ref + e_ref would double the reference; keep it as e_ref
    second_pair, xs2, ys2 = _second_differences(oracle, point, pair, c, eps)
    size_pair = np.linalg.norm(second_pair, axis=1)
    same = np.abs(size_pair - (size[ref] + size))
    opposite = np.abs(size_pair - np.abs(size[ref] - size))
    sign = np.where(same <= opposite, 1.0, -1.0)
    sign[ref] = 1.0
    row = sign * size
    norm = float(np.linalg.norm(row))
    row = row / norm
    out = second[ref] / (row[ref] * norm) if norm else second[ref]
    mismatch = np.minimum(same, opposite)
    mismatch[ref] = 0.0
    error = float(np.mean(mismatch) / norm) if norm else 1.0
    return row, out, error, np.concatenate([xs1, xs2]), np.concatenate([ys1, ys2])
