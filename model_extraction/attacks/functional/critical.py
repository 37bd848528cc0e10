"""Critical points of a ReLU network of any depth, with the normal of the hyperplane each lies on
(Carlini, Jagielski and Mironov, CRYPTO 2020, §4.2–4.3).

Along a line the logits are piecewise linear in ``t``; each kink found by
:func:`~.search.search_line` is a point where one neuron, of any layer, changes state. Crossing
one neuron changes the Jacobian of the logits by a rank-one matrix ``u gᵀ``, where ``g`` is the
gradient of that neuron's pre-activation at the point: its hyperplane's normal there (constant
for a first-layer neuron; bent where earlier neurons change state, for a deeper one). The
Jacobians on both sides are measured by forward differences at two step sizes (a column whose two
estimates disagree crossed another hyperplane, and is measured again with a smaller step).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from model_extraction.oracle import Oracle

from .search import Line, search_line

Array = NDArray[np.float64]

__all__ = ["CriticalPoints", "find_critical_points", "random_line"]

_AGREE = 1e-7  # relative agreement of the two step sizes that vouches for a Jacobian column
_RANK_ONE = 1e-6  # second singular value of the jump, relative to the first, still rank one


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


def random_line(rng: np.random.Generator, d: int, scale: float) -> Line:
    """A line through a Gaussian point of standard deviation ``scale / 2``, uniform direction."""
    direction = rng.standard_normal(d)
    return Line(rng.standard_normal(d) * 0.5 * scale, direction / np.linalg.norm(direction))


def _jacobians(oracle: Oracle, points: Array, step: float) -> tuple[Array, NDArray[np.bool_]]:
    """Forward-difference Jacobians ``(m, K, d)`` at ``points`` with steps ``step`` and
    ``step / 4``; the mask ``(m, d)`` says which columns the two agree on."""
    m, d = points.shape
    base = oracle(points)
    steps = np.array([step, step / 4])
    probes = np.empty((2, m, d, d))  # each point, then each coordinate moved by each step
    probes[...] = points[None, :, None, :]
    probes[:, :, np.arange(d), np.arange(d)] += steps[:, None, None]
    y = oracle(probes.reshape(-1, d)).reshape(2, m, d, -1)
    slopes = (y - base[None, :, None, :]) / steps[:, None, None, None]
    agree = np.all(np.abs(slopes[0] - slopes[1]) <= _AGREE * (1 + np.abs(slopes[0])), axis=2)
    return slopes[1].transpose(0, 2, 1), agree


def _normal(oracle: Oracle, x: Array, along: Array, room: float) -> Array | None:
    """The unit normal at the critical point ``x``, from the Jacobians at ``x ± room·along``;
    ``None`` when no step size up to ``room / 300`` gives clean Jacobians, or the jump is not
    rank one (two neurons at once)."""
    sides = np.stack([x - room * along, x + room * along])
    for step in (0.3 * room, 0.03 * room, 0.003 * room):
        jac, agree = _jacobians(oracle, sides, step)
        if agree.all():
            break
    else:
        return None
    _, s, vt = np.linalg.svd(jac[1] - jac[0], full_matrices=False)
    if s[0] == 0 or (len(s) > 1 and s[1] > _RANK_ONE * s[0]):
        return None
    return vt[0]


def find_critical_points(oracle: Oracle, lines: list[Line], *, first_line: int = 0,
                         t_range: tuple[float, float] = (-4.0, 3.3),
                         grid: int = 512,
                         known: Callable[[Array], Array] | None = None) -> CriticalPoints:
    """Search each of ``lines`` for critical points and measure each one's normal.

    Costs the line searches plus ``2 (2d + 1)`` queries per critical point (more when a
    Jacobian must be measured again with a smaller step). Points whose normal cannot be measured
    cleanly are left out. ``first_line`` numbers the lines (for :attr:`CriticalPoints.line`).
    ``known(points (m, d)) → (m, d)``: the normals of the points that lie on a hyperplane
    already extracted (NaN rows for the others), which are then taken from it, with no query.
    """
    d = len(lines[0].origin) if lines else 0
    found = CriticalPoints.empty(d)
    for i, line in enumerate(lines):
        kinks, _ = search_line(oracle, line, t_range, grid=grid)
        ts = np.array([k.t for k in kinks])
        xs = line.at(ts) if len(ts) else np.zeros((0, d))
        given = known(xs) if known is not None else np.full(xs.shape, np.nan)
        pts, normals = [], []
        for j, (t, x) in enumerate(zip(ts, xs, strict=True)):
            gap = np.min(np.abs(np.delete(ts, j) - t)) if len(ts) > 1 else 1.0
            normal = given[j] if np.isfinite(given[j]).all() else \
                _normal(oracle, x, line.direction, min(0.3 * gap, 1e-2))
            if normal is not None:
                pts.append(x)
                normals.append(normal)
        if pts:
            found = found.join(CriticalPoints(np.array(pts), np.array(normals),
                                              np.full(len(pts), first_line + i)))
    return found
