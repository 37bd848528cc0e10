"""Where to draw the next lines of a deep extraction, from the layers extracted so far (the
:class:`~.prefix.Prefix`; no query is spent here).

A neuron of the next layer shows its weight on a unit below only at its critical points where
that unit is active. Rows still partial after the random lines lack the units that were
inactive at every point seen, and the lines are aimed where those units are active:

- :func:`aimed_origins`: starting points where the wanted units of the top layer are active;
- :func:`line_into`: from a critical point of a partial row, Newton steps along the row's
  estimated hyperplane until a unit it lacks is active, and a short line across the
  hyperplane there, along that unit's level set;
- :func:`coactive_lines`: where those Newton steps do not converge (on a trained MNIST victim,
  a rare third-layer neuron and a rare second-layer unit are never active together on two
  million Gaussian inputs, and the two equations pull the point across regions without end),
  gradient ascent on ``min(z_row, z_unit - target)`` over the prefix, from the row's critical
  points, to a point where both are active, and a line from there across the hyperplane.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from .prefix import Prefix
from .search import Line

Array = NDArray[np.float64]

__all__ = ["aimed_origins", "coactive_lines", "line_into"]

_ASCENT_STEPS = 2000  # gradient steps of the ascent, the first half of 0.05 scale, then 0.01
_TIE = 0.05  # |z_row - z_unit| under this (times scale): both pieces of the minimum are active


def aimed_origins(prefix: Prefix, wanted: NDArray[np.bool_], rng: np.random.Generator,
                  count: int, scale: float) -> Array:
    """``count`` inputs ``(count, d)`` where the ``wanted`` units ``(h_T,)`` of the prefix's top
    layer are active: built exactly for the first layer (its activations are any vector,
    ``h1 ≤ d``), else the best of 64 Gaussian draws each."""
    w1, b1 = prefix.layers[0]
    if len(prefix.widths) == 1:
        a = np.where(wanted, rng.uniform(0.25, 1.0, (count, len(b1))),
                     rng.uniform(-1.0, 1.0, (count, len(b1)))) * scale
        return np.linalg.lstsq(w1, (a - b1).T, rcond=None)[0].T
    draws = rng.standard_normal((64 * count, w1.shape[1])) * 0.5 * scale
    score = ((prefix.top(draws) > 0) & wanted).sum(axis=1) + rng.uniform(0, 0.5, len(draws))
    return draws[np.argsort(-score)[:count]]


def line_into(prefix: Prefix, x: Array, row: Array, bias: float, unit: int,
              target: float) -> Line | None:
    """A line through a point near ``x`` ``(d,)`` on the next-layer hyperplane ``row ·
    ReLU(z_T) + bias = 0`` (as far as ``row`` is known) where the top layer's ``unit`` has
    pre-activation ``target``, across the hyperplane and along the unit's level set; ``None``
    when six Newton steps on both equations at once (minimum-norm, on the prefix) do not get
    onto the hyperplane with the unit active."""
    w1 = prefix.layers[0][0]
    for _ in range(6):
        pres, jac = prefix.local(x[None])
        value, normal = prefix.next_normals(x[None], row)
        grads = np.stack([normal[0], jac[-1][0, unit] @ w1])
        miss = np.array([-(value[0] + bias), target - pres[-1][0, unit]])
        if np.linalg.matrix_rank(grads) < 2:
            return None
        x = x + grads.T @ np.linalg.solve(grads @ grads.T, miss)
    pres, jac = prefix.local(x[None])
    value, across = prefix.next_normals(x[None], row)
    along = jac[-1][0, unit] @ w1
    if (pres[-1][0, unit] <= 0 or not along @ along > 0
            or abs(value[0] + bias) > 1e-9 * (1.0 + abs(value[0]))):  # not there
        return None
    return _across(x, across[0], along)


def _across(x: Array, normal: Array, along: Array) -> Line | None:
    """The line through ``x`` along ``-normal`` made orthogonal to ``along`` (a unit's
    gradient, whose value stays put on it), or ``None`` when nothing is left of it."""
    across = normal - (normal @ along) / (along @ along) * along
    length = float(np.linalg.norm(across))
    return Line(x, -across / length) if length > 0 else None


def _pieces(prefix: Prefix, x: Array, rows: Array, biases: Array, units: NDArray[np.int64],
            target: float) -> tuple[Array, Array, Array, Array]:
    """At each of ``x`` ``(n, d)``: ``z_row`` ``(n,)`` of its row and its gradient ``(n, d)``,
    and its unit's pre-activation less ``target`` and that unit's gradient."""
    w1 = prefix.layers[0][0]
    pres, jac = prefix.local(x)
    top, at = pres[-1], np.arange(len(x))
    z_row = np.einsum("nk,nk->n", np.maximum(top, 0.0), rows) + biases
    g_row = np.einsum("nk,nkh->nh", (top > 0) * rows, jac[-1]) @ w1
    return z_row, g_row, top[at, units] - target, jac[-1][at, units] @ w1


def coactive_lines(prefix: Prefix, x: Array, rows: Array, biases: Array,
                   units: NDArray[np.int64], target: float, scale: float) -> list[Line]:
    """Lines across next-layer hyperplanes where a unit below is active: from each of ``x``
    ``(n, d)`` (critical points of the partial ``rows`` ``(n, h_T)``, ``biases``), gradient
    ascent on ``min(z_row, z_unit - target)`` over the prefix (normalised steps; where the two
    are within ``_TIE`` the minimum-norm combination of their gradients, which raises both)
    until both are positive, then a line through the point of the row's hyperplane straight
    across from there, along the unit's level set. Points that do not get there within
    ``_ASCENT_STEPS`` steps give no line."""
    x, live = np.array(x, dtype=np.float64), np.arange(len(x))
    for step in range(_ASCENT_STEPS):
        z_row, g_row, z_unit, g_unit = _pieces(prefix, x[live], rows[live], biases[live],
                                               units[live], target)
        still = np.minimum(z_row, z_unit) <= 0
        live, z_row, g_row, z_unit, g_unit = (a[still] for a in (live, z_row, g_row, z_unit,
                                                                  g_unit))
        if not len(live):
            break
        gap = g_unit - g_row
        share = np.clip(np.einsum("nh,nh->n", gap, g_unit)
                        / np.maximum(np.einsum("nh,nh->n", gap, gap), 1e-300), 0.0, 1.0)
        tied = share[:, None] * g_row + (1.0 - share[:, None]) * g_unit
        grad = np.where((np.abs(z_row - z_unit) < _TIE * scale)[:, None], tied,
                        np.where((z_row < z_unit)[:, None], g_row, g_unit))
        length = np.linalg.norm(grad, axis=1, keepdims=True)
        size = (0.05 if step < _ASCENT_STEPS // 2 else 0.01) * scale
        x[live] += size * grad / np.where(length > 0, length, np.inf)
    there = np.setdiff1d(np.arange(len(x)), live)
    _, g_row, _, g_unit = _pieces(prefix, x[there], rows[there], biases[there], units[there],
                                  target)
    lines = []
    for i, p, normal, along in zip(there, x[there], g_row, g_unit, strict=True):
        line = _across(p, normal, along) if along @ along > 0 else None
        for _ in range(8 if line is not None else 0):  # Newton steps along it, onto the plane
            z, g, *_ = _pieces(prefix, line.origin[None], rows[i:i + 1], biases[i:i + 1],
                               units[i:i + 1], target)
            slope = float(g[0] @ line.direction)
            if abs(z[0]) <= 1e-12 * (1.0 + abs(biases[i])) or not slope < 0:
                break
            line = Line(line.origin - z[0] / slope * line.direction, line.direction)
        if line is not None and abs(z[0]) <= 1e-9 * (1.0 + abs(biases[i])):
            lines.append(line)
    return lines
