"""The lines of a deep extraction and their critical points (:func:`search_lines`): where they
are drawn is worked out from the layers extracted so far (the :class:`~.prefix.Prefix`), with no
query.

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

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model_extraction.oracle import Oracle

from .critical import CriticalPoints, Span, find_critical_points, random_line
from .domain import Domain, box_of, kept_in
from .prefix import Prefix, shrunk
from .search import Line
from .signatures import Signatures

Array = NDArray[np.float64]

__all__ = ["MORE_LINES", "aimed_origins", "coactive_lines", "first_lines", "known_normals",
           "line_into", "search_lines", "t_range", "toward_missing", "toward_every_missing"]

MORE_LINES = 16  # lines of each batch drawn after the first, and of each aimed batch
_ASCENT_STEPS = 2000  # gradient steps of the ascent, the first half of 0.05 scale, then 0.01
_SPAN_RTOL = 1e-6  # a normal is exact far beyond this: smaller singular values are noise
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
                   units: NDArray[np.int64], target: float, scale: float,
                   box: tuple[float, float] | None = None,
                   ) -> tuple[list[Line], NDArray[np.int64]]:
    """Lines across next-layer hyperplanes where a unit below is active: from each of ``x``
    ``(n, d)`` (critical points of the partial ``rows`` ``(n, h_T)``, ``biases``), gradient
    ascent on ``min(z_row, z_unit - target)`` over the prefix (normalised steps; where the two
    are within ``_TIE`` the minimum-norm combination of their gradients, which raises both)
    until both are positive, then a line through the point of the row's hyperplane straight
    across from there, along the unit's level set, brought onto the hyperplane by Newton steps
    along it. Points that do not get there within ``_ASCENT_STEPS`` steps, or whose line's
    Newton steps do not end on the hyperplane, give no line. With ``box`` ``(lo, hi)``, the
    input box where queries are bounded, the ascent is projected onto the box shrunk by
    :data:`~.prefix.PLACED_MARGIN` of its width (each step clipped to it), and a line whose
    point on the hyperplane lies outside the box is dropped (its search, held to the box,
    would not reach the point where both are active). Returns the lines and the index in
    ``x`` of the point each came from."""
    inner = shrunk(box)
    x, live = np.array(x, dtype=np.float64), np.arange(len(x))
    x = x if inner is None else np.clip(x, *inner)
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
        if inner is not None:
            x[live] = np.clip(x[live], *inner)
    there = np.setdiff1d(np.arange(len(x)), live)
    _, g_row, _, g_unit = _pieces(prefix, x[there], rows[there], biases[there], units[there],
                                  target)
    lines, source = [], []
    for i, p, normal, along in zip(there, x[there], g_row, g_unit, strict=True):
        line = _across(p, normal, along) if along @ along > 0 else None
        for _ in range(8 if line is not None else 0):  # Newton steps along it, onto the plane
            z, g, *_ = _pieces(prefix, line.origin[None], rows[i:i + 1], biases[i:i + 1],
                               units[i:i + 1], target)
            slope = float(g[0] @ line.direction)
            if abs(z[0]) <= 1e-12 * (1.0 + abs(biases[i])) or not slope < 0:
                break
            line = Line(line.origin - z[0] / slope * line.direction, line.direction)
        if line is None:
            continue
        z, *_ = _pieces(prefix, line.origin[None], rows[i:i + 1], biases[i:i + 1],
                        units[i:i + 1], target)
        inside = box is None or bool(np.all((line.origin >= box[0]) & (line.origin <= box[1])))
        if inside and abs(z[0]) <= 1e-9 * (1.0 + abs(biases[i])):  # on the plane, where it ended
            lines.append(line)
            source.append(i)
    return lines, np.array(source, dtype=np.int64)


def t_range(reach: float) -> tuple[float, float]:
    """The search interval of each line, asymmetric so that its origin is not a grid point."""
    return -reach, 0.83 * reach


def search_lines(oracle: Oracle, found: CriticalPoints, lines: list[Any],
                 rng: np.random.Generator, count: int, scale: float, reach: float,
                 aim: tuple[Prefix, NDArray[np.bool_]] | None = None,
                 through: Array | None = None, span: Span | None = None,
                 domain: Domain | None = None) -> CriticalPoints:
    """``found`` plus the critical points of ``count`` new random lines (appended to ``lines``);
    with ``aim = (prefix, wanted)``, half of them start where the wanted units of the prefix's
    top layer are active (there the next layer's critical points show their weights on those
    units, which partial signatures lack), and the normals of the points on the prefix's
    hyperplanes are taken from it instead of measured (up to ``2 (2d + 1)`` queries saved each),
    the others measured in the span of its first layer (:class:`~.critical.Span`); with
    ``through`` ``(m, d)`` (where a model failed its self-check: a neuron it lacks is
    active there), the other half pass through those points; without ``aim``, the Jacobians
    are measured along ``span`` where it is given. In a bounded ``domain`` the lines are
    :meth:`~.domain.Domain.line_through` the box (aimed origins moved into it), and searched
    where they lie in it."""
    d = found.points.shape[1]
    bounded = domain is not None and domain.bounded
    more = (_box_lines(domain, rng, count, lines) if bounded
            else [random_line(rng, d, scale) for _ in range(count)])
    if aim is not None and aim[1].any():
        origins = aimed_origins(*aim, rng, count // 2, scale)
        more[: len(origins)] = [domain.line_through(rng, domain.clip(o)) if bounded
                                else Line(o, line.direction)
                                for o, line in zip(origins, more[: len(origins)], strict=True)]
    if through is not None and len(through):
        picked = through[rng.choice(len(through), count // 2)]  # a few points: several each
        more[count - len(picked):] = [domain.line_through(rng, o) if bounded
                                      else Line(o, line.direction) for o, line in
                                      zip(picked, more[count - len(picked):], strict=True)]
    known = None if aim is None else known_normals(aim[0], scale)
    span = span if aim is None else Span.of(aim[0].layers[0][0], rng)
    first = len(lines)
    lines += more  # counted from now on (a budget error says how many were drawn)
    return found.join(find_critical_points(
        oracle, more, first_line=first, t_range=(-np.inf, np.inf) if bounded else
        t_range(reach), known=known, span=span, domain=domain))


def _box_lines(domain: Domain, rng: np.random.Generator, count: int,
            lines: list[Any]) -> list[Line]:
    """``count`` lines across the box (:meth:`~.domain.Domain.line_through`); a line through
    reference inputs goes through those that ``lines``, and the lines of this batch drawn
    before it, passed through least."""
    if domain.reference is None:
        return [domain.line_through(rng) for _ in range(count)]
    visits = np.zeros(len(domain.reference), dtype=np.intp)
    np.add.at(visits, [i for line in lines for i in getattr(line, "through", ())], 1)
    more = []
    for _ in range(count):
        more.append(domain.line_through(rng, visits=visits))
        np.add.at(visits, list(more[-1].through), 1)
    return more


def first_lines(oracle: Oracle, d: int, lines: list[Any], rng: np.random.Generator,
                count: int, scale: float, reach: float, domain: Domain | None = None,
                ) -> tuple[CriticalPoints, dict[int, Span]]:
    """The critical points of the ``count`` first random lines (appended to ``lines``), before
    any layer is known.

    Every Jacobian row lies in the span of the first layer's rows, and so does every normal:
    each line's Jacobians are measured along the span of the normals found on the lines before
    it (:class:`~.critical.Span`; its rank counts the singular values above ``_SPAN_RTOL`` of
    the largest; ``2 (r + 2) + 1`` queries a region instead of ``2d + 1``). A kink where a
    first-layer neuron outside that span is active is measured along every coordinate, and its
    normal adds the neuron's direction for the next line. The first line is measured along
    every coordinate. The lines are those :func:`search_lines` would draw for ``count`` at
    once. Also returns the span of each line measured along one, by line number, so that its
    normals can be carried into the span of the refined first layer
    (:meth:`~.critical.Span.carried`): one estimated from normals is tilted by about their
    errors."""
    found, span, spans = CriticalPoints.empty(d), None, {}
    for _ in range(count):
        seen = len(found)
        if span is not None:
            spans[len(lines)] = span
        found = search_lines(oracle, found, lines, rng, 1, scale, reach, span=span,
                             domain=domain)
        rows = (found.normals if span is None
                else np.vstack([span.basis[: -span.checks], found.normals[seen:]]))
        span = Span.of(rows, rng, rtol=_SPAN_RTOL) if len(rows) else None
    return found, spans


def known_normals(prefix: Prefix, scale: float) -> Callable[[Array], Array]:
    """The normals of points on the prefix's hyperplanes (within ``1e-7 scale``), which
    :func:`~.critical.find_critical_points` then does not measure."""
    return lambda x: prefix.normals_on(x, 1e-7 * scale)


def toward_missing(oracle: Oracle, found: CriticalPoints, prefix: Prefix,
                   partial: Signatures, rng: np.random.Generator,
                   scale: float, domain: Domain | None = None) -> CriticalPoints:
    """``found`` plus critical points aimed at what partial rows lack: for each, one of its
    critical points is moved (by :func:`line_into`, on the prefix, no query; where its Newton
    steps do not get there, by the ascent of :func:`coactive_lines` from several of them,
    :func:`_ascended`) along the row's estimated hyperplane until one unit it lacks is
    active, and a short line across the hyperplane there, along which that unit stays active,
    looks for the neuron again (a unit active on a tiny share of inputs is active only near
    such a point). ``MORE_LINES`` lines, each for a partial row drawn in proportion to the
    points it was seen at, from one of them and for one unit it lacks, drawn anew each time (a
    deeper layer's points, seen in this layer's basis, make many partial rows of a few points;
    a rare neuron's row has few points too, and its turn comes; a last partial row gets every
    line).
    """
    if not len(partial.members):
        return found
    seen = np.array([len(m) for m in partial.members], dtype=np.float64)
    picked = rng.choice(len(seen), MORE_LINES, p=seen / seen.sum())
    lines, stuck = [], []
    for i in picked:
        k = int(rng.choice(partial.members[i]))
        u = int(rng.choice(np.flatnonzero(~partial.known[i])))
        line = line_into(prefix, found.points[k], partial.rows[i], float(partial.biases[i]),
                         u, 0.05 * scale)
        if line is not None:
            lines.append(line)
        else:
            stuck.append((int(i), u))
    if stuck:
        lines += _ascended(found, prefix, partial, sorted(set(stuck)), rng, scale, (8, 2),
                           domain)
    return _crossed(oracle, found, prefix, lines, rng, scale, domain)


def toward_every_missing(oracle: Oracle, found: CriticalPoints, prefix: Prefix,
                         partial: Signatures, rng: np.random.Generator,
                         scale: float, domain: Domain | None = None) -> CriticalPoints:
    """``found`` plus critical points for the units partial rows lack (``MORE_LINES``
    ``(row, unit)`` pairs at most, one unit of each row in turn, the rows seen at the fewest
    points first: a rare neuron's row has few): the ascent of :func:`coactive_lines` from 256
    points in all, near the rows' critical points, and up to 4 lines for each pair from those
    that get there. A last try before a row is kept partial (:func:`toward_missing` draws rows
    and units at random, and a rare neuron's row may not get its turn)."""
    order = np.argsort([len(m) for m in partial.members], kind="stable")
    lacking = [np.flatnonzero(~partial.known[i]) for i in order]
    pairs = [(int(i), int(units[r])) for r in range(max(map(len, lacking), default=0))
             for i, units in zip(order, lacking, strict=True) if r < len(units)][:MORE_LINES]
    lines = _ascended(found, prefix, partial, pairs, rng, scale, (256 // max(len(pairs), 1), 4),
                      domain)
    return _crossed(oracle, found, prefix, lines, rng, scale, domain)


def _crossed(oracle: Oracle, found: CriticalPoints, prefix: Prefix, lines: list[Line],
             rng: np.random.Generator, scale: float,
             domain: Domain | None = None) -> CriticalPoints:
    """``found`` plus the critical points of the short ``lines`` (``|t| ≤ 0.2 scale``), the
    normals of those on the prefix's hyperplanes taken from it, the others measured in the
    span of its first layer."""
    if not lines:
        return found
    return found.join(find_critical_points(oracle, lines, first_line=-1,
                                           t_range=t_range(0.2 * scale),
                                           known=known_normals(prefix, scale),
                                           span=Span.of(prefix.layers[0][0], rng),
                                           domain=domain))


def _ascended(found: CriticalPoints, prefix: Prefix, partial: Signatures,
              stuck: list[tuple[int, int]], rng: np.random.Generator, scale: float,
              effort: tuple[int, int], domain: Domain | None = None) -> list[Line]:
    """Lines from :func:`coactive_lines` for the ``stuck`` ``(row, unit)`` pairs of
    ``partial``: with ``effort = (starts, per_unit)``, the ascent starts from ``starts``
    points for each pair, the row's critical points in turn, each moved by Gaussian noise of
    standard deviation ``0.1 scale`` (about one start in three gets there on a trained MNIST
    victim, which has few points on a rare neuron's hyperplane), and up to ``per_unit`` lines
    are kept for each pair."""
    if not stuck:
        return []
    most, per_unit = effort
    starts, pair = [], []
    for j, (i, _) in enumerate(stuck):
        members = partial.members[i]
        starts.append(members[np.arange(most) % len(members)])
        pair += [j] * most
    pair_of = np.array(pair)
    rows, units = (np.array([stuck[j][c] for j in pair_of]) for c in (0, 1))
    x = found.points[np.concatenate(starts)]
    x = x + rng.standard_normal(x.shape) * 0.1 * scale
    lines, source = coactive_lines(prefix, kept_in(domain, x),
                                   partial.rows[rows], partial.biases[rows], units,
                                   0.05 * scale, scale, box_of(domain))
    kept, count = [], np.zeros(len(stuck), dtype=np.int64)
    for line, j in zip(lines, pair_of[source], strict=True):
        if count[j] < per_unit:
            kept.append(line)
            count[j] += 1
    return kept
