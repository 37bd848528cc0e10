"""Which layer a critical point belongs to: the first layer's hyperplanes are flat everywhere,
a deeper neuron's bend where earlier neurons change state (Carlini et al., CRYPTO 2020, §4.3).

Critical points with the same normal that lie on one hyperplane, found on several lines, are
candidates for a first-layer neuron; a candidate is kept only if the hyperplane is flat far from
where it was found: short lines across it at random points of it meet a critical point exactly on
it (a bent hyperplane, a deeper neuron seen twice in one linear region, does not). The kept
hyperplane is then refitted through all its points, whose positions the line search knows far
more precisely than any finite-difference normal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from model_extraction.oracle import Oracle

from .critical import CriticalPoints
from .domain import Domain, box_of, kept_in, spread
from .planes import plane_through
from .prefix import Prefix, placed_on
from .refinement import refit_first_layer
from .search import Line, crossings, search_line

Array = NDArray[np.float64]

__all__ = ["Hyperplanes", "first_layer", "flat_offset", "is_flat", "flat_above"]

_SAME = 1e-5  # |1 - |cos|| of two normals, and relative offset, of one hyperplane
_ON_PLANE = 1e-8  # a critical point this close (in t) to a hyperplane lies on it
_NEAR = 1e-6  # the first critical point this close to a candidate's hyperplane places it
_BLOCK = 64  # starts of a group compared with every point in one matrix product
_ACROSS = 8  # first-layer hyperplanes a candidate is tested across, in a box
_EXPLAINED = 1e-6  # a critical point this close (times scale) to a first-layer plane is its


@dataclass(frozen=True)
class Hyperplanes:
    """Unit-norm rows ``(h, d)`` and offsets ``(h,)`` of ``rows · x + offsets = 0`` (orientation
    arbitrary until the signs are recovered), with the critical points each was fitted to."""

    rows: Array
    offsets: Array
    members: tuple[NDArray[np.int64], ...]


def is_flat(oracle: Oracle, row: Array, offset: float, rng: np.random.Generator, *,
            scale: float, tries: int = 12, hits_needed: int = 4,
            domain: Domain | None = None, across: Sequence[tuple[Array, float]] = (),
            explained: tuple[Array, Array] | None = None) -> bool:
    """Whether the hyperplane ``row · x + offset = 0`` is flat (:func:`flat_offset` finds an
    offset where it is; the same parameters)."""
    return flat_offset(oracle, row, offset, rng, scale=scale, tries=tries,
                       hits_needed=hits_needed, domain=domain, across=across,
                       explained=explained) is not None


def flat_offset(oracle: Oracle, row: Array, offset: float, rng: np.random.Generator, *,
                scale: float, tries: int = 12, hits_needed: int = 4,
                domain: Domain | None = None, across: Sequence[tuple[Array, float]] = (),
                explained: tuple[Array, Array] | None = None) -> float | None:
    """The offset at which the hyperplane ``row · x + offset = 0`` is flat, or ``None`` where it
    is not: at random points of it (Gaussian of standard deviation ``scale / 2``, as the lines'
    origins, projected), a short line along ``row`` meets a critical point exactly there
    ``hits_needed`` times, and never meets one off it without one on it, within ``tries``
    points (where the neuron is invisible, nothing is met: that point says nothing; a deeper
    neuron can look flat over one large region, hence several hits). The first line that
    meets a critical point may move the hyperplane along ``row`` to it, by up to ``_NEAR
    scale`` (the offset returned; the other lines must meet it there): a group's offset, the
    median of a few critical points', can be off by a few ``1e-8``, which a line along
    ``row`` locates to about ``1e-12`` (on trained MNIST 784-64-64-10 in ``[0, 1]^784``, five
    first-layer units were refused so, off by about ``1e-8`` to ``5e-8``, traced outside
    the benchmark). A kink's distance to the hyperplane is measured from the kink's point,
    not from the line's origin, which the box may leave about ``1e-7`` off it (a sixth unit of
    that victim was refused so). A kink off the hyperplane by no more than the search can
    locate it (:attr:`.search.Kink.resolution`: a weak one, whose slope changes little) says
    nothing.
    In a bounded ``domain``, the points are drawn in the box (:meth:`~.domain.Domain.draw`)
    and moved onto the hyperplane within it (:meth:`~.domain.Domain.onto_plane`), and a line
    that would leave the box is not searched (that try says nothing). ``across``: half-spaces
    ``(a, b)`` (``a · x + b >= 0``, ``a`` of unit norm) where the hyperplane is tested first,
    one point in each that the box lets it reach, none of whose lines may meet a critical
    point off the hyperplane without one on it (a deeper neuron's hyperplane bends where a
    unit it reads changes state: on the other side of a first-layer hyperplane from where it
    was seen). ``explained``: first-layer hyperplanes ``(rows, offsets)`` already found, whose
    critical points a line sets aside (one of them, met where this neuron is invisible, says
    nothing about it)."""
    return _flatness(oracle, row, offset, rng, scale=scale, tries=tries,
                     hits_needed=hits_needed, domain=domain, across=across,
                     explained=explained)[0]


def _flatness(oracle: Oracle, row: Array, offset: float, rng: np.random.Generator, *,
              scale: float, tries: int, hits_needed: int, domain: Domain | None,
              across: Sequence[tuple[Array, float]],
              explained: tuple[Array, Array] | None) -> tuple[float | None, bool]:
    """:func:`flat_offset`'s offset (or ``None``), and whether a refusal came from a kink met
    within ``_NEAR scale`` of the hyperplane after the first had placed it: the hyperplane is
    there, but its direction is off by more than the test resolves."""
    r = 0.05 * scale
    hits, tested, met = 0, 0, False
    for side in [*across, *[None] * tries]:
        if side is None and (hits == hits_needed or tested == tries):
            break
        p = _point_on(row, offset, rng, scale, r, domain, side)
        if p is None:
            continue
        tested += side is None
        kinks, _ = search_line(oracle, Line(p, row), (-r, 0.83 * r), grid=32)
        ts = np.array([k.t for k in kinks])
        loose = np.array([k.resolution for k in kinks])
        if explained is not None and len(ts):
            x = p + ts[:, None] * row
            far = np.all(np.abs(x @ explained[0].T + explained[1]) > _EXPLAINED * scale, axis=1)
            ts, loose = ts[far], loose[far]
        if not len(ts):
            continue  # the neuron is invisible here (every path from it is inactive)
        # each kink's height over the hyperplane: a point moved onto it within the box lies
        # up to about 1e-7 off it, and the kink's t along the line then is not its height
        heights = ts + (p @ row + offset)
        nearest = np.argmin(np.abs(heights))
        h = float(heights[nearest])
        if _ON_PLANE * scale < abs(h) <= loose[nearest]:
            continue  # a kink this weak is located too loosely to tell: this point says nothing
        if not met and _ON_PLANE * scale < abs(h) <= _NEAR * scale:
            offset -= h  # the first kink met: the hyperplane is there
        elif abs(h) > _ON_PLANE * scale:
            return None, met and abs(h) <= _NEAR * scale
        met = True
        hits += side is None
    return (offset if hits >= hits_needed else None), False


def _point_on(row: Array, offset: float, rng: np.random.Generator, scale: float, r: float,
              domain: Domain | None, side: tuple[Array, float] | None) -> Array | None:
    """A random point of the hyperplane for :func:`is_flat`'s line of radius ``r`` along
    ``row``: Gaussian, projected; in a bounded ``domain``, drawn in the box and moved onto the
    hyperplane within it, and inside the half-space ``side`` by more than ``r`` (so that the
    line stays in it); ``None`` where the line would leave the box or the half-space."""
    if domain is None or not domain.bounded:
        p = rng.standard_normal(len(row)) * 0.5 * scale
        return p - (p @ row + offset) * row
    aim = None if side is None else (side[0], side[1] - 1.5 * r)
    p = domain.onto_plane(domain.draw(rng, 1), row, offset, 2 * r * np.abs(row).max(),
                          side=aim)[0]
    if not domain.holds(p[None], row[None], 1.1 * r)[0]:  # the search's end probes
        return None
    return p if side is None or p @ side[0] + side[1] > 1.1 * r else None


def first_layer(oracle: Oracle, found: CriticalPoints, rng: np.random.Generator, *,
                scale: float, min_lines: int = 3,
                seeds: NDArray[np.bool_] | None = None,
                domain: Domain | None = None, known: Hyperplanes | None = None) -> Hyperplanes:
    """The first layer's hyperplanes among ``found``: groups of critical points with one normal
    and one offset, seen on at least ``min_lines`` lines, that pass :func:`is_flat` (refined
    and tested again where a kink after the first misses the hyperplane the first placed by
    less than ``_NEAR scale``, :func:`_flat_or_refined`; their points then start no other
    group in this call). ``seeds``
    ``(m,)``: the points a group may start from (default all; the points already examined on
    an earlier pass need not start one again), its members are taken from all. In a bounded
    ``domain``, each candidate is tested first on the other side of up to ``_ACROSS`` of the
    ``known`` first-layer hyperplanes from where its points lie (:func:`_across`): in a box a
    deeper neuron's hyperplane can be flat wherever it was looked at, since most units keep
    one state over most of the box (on trained MNIST in [0, 1]^784, such a plane passed the
    flatness test with 30 of the 32 first-layer units found, traced outside the
    benchmark)."""
    pts, normals = found.points, found.normals
    offsets = -np.sum(normals * pts, axis=1)
    boxed = domain is not None and domain.bounded
    free, spent = np.ones(len(pts), dtype=bool), np.zeros(len(pts), dtype=bool)
    rows, cs, members = [], [], []
    starts = np.flatnonzero(np.ones(len(pts), dtype=bool) if seeds is None else seeds)
    for first in range(0, len(starts), _BLOCK):
        block = starts[first : first + _BLOCK]
        # every point against a block of starts at once (a matrix product, not one per start)
        cosines, heights = normals @ normals[block].T, pts @ normals[block].T
        for k, i in enumerate(block):
            if not free[i] or spent[i]:
                continue
            same = np.abs(np.abs(cosines[:, k]) - 1) < _SAME
            on = np.abs(heights[:, k] + offsets[i]) < _SAME * (scale + abs(offsets[i]))
            group = np.flatnonzero(same & on & free)
            seen = len(set(found.line[group].tolist()))
            if seen < min_lines:
                continue
            n, c = _group_plane(pts[group], normals[group], normals[i])
            planes = _found(known, rows, cs, len(n)) if boxed else None
            across = _across(*planes, pts[group], rng) if boxed else []
            # seen on fewer than 3 lines (min_lines < 3, in a box): twice the evidence
            flat, refined = _flat_or_refined(oracle, (n, c), rng, scale, domain,
                                             few=seen < 3, across=across, explained=planes)
            spent[group] |= refined  # refined once: its points start no group again
            if flat is None:
                continue
            free[group] = False
            rows.append(flat[0])
            cs.append(flat[1])
            members.append(group)
    d = pts.shape[1]
    return Hyperplanes(np.array(rows).reshape(-1, d), np.array(cs), tuple(members))


def _flat_or_refined(oracle: Oracle, plane: tuple[Array, float], rng: np.random.Generator,
                     scale: float, domain: Domain | None, *, few: bool,
                     across: Sequence[tuple[Array, float]],
                     explained: tuple[Array, Array] | None,
                     ) -> tuple[tuple[Array, float] | None, bool]:
    """A candidate ``plane`` ``(row, offset)`` tested for flatness (:func:`_flatness`; ``few``:
    seen on fewer than 3 lines, twice the evidence needed), and where a later kink refuses
    it from within ``_NEAR scale`` of it, once the first has placed it (the mean of its
    points' finite-difference normals can be off by about ``6e-8`` rad, and its hyperplane
    ``1e-7`` off where the box's far side is tested: MNIST 784-64-64-10's unit 1 in
    ``[0, 1]^784``, traced outside the benchmark), refined through up to ``3 (d + 1)``
    crossings of it (:func:`.refinement.refit_first_layer`) and, where that moved it, tested
    again (a refit that keeps the estimate gives no second chance). Returns the hyperplane
    that passed (or ``None``) and whether a refinement was spent on it."""

    def tested(row: Array, offset: float) -> tuple[float | None, bool]:
        return _flatness(oracle, row, offset, rng, scale=scale, tries=24 if few else 12,
                         hits_needed=8 if few else 4, domain=domain, across=across,
                         explained=explained)

    offset, tilted = tested(*plane)
    if offset is not None or not tilted:
        return (None if offset is None else (plane[0], offset)), False
    rows, offsets, _ = refit_first_layer(oracle, plane[0][None], np.array([plane[1]]), rng,
                                         scale=scale, domain=domain)
    if np.array_equal(rows[0], plane[0]) and offsets[0] == plane[1]:
        return None, True  # the crossings did not beat the estimate
    offset, _ = tested(rows[0], float(offsets[0]))
    return (None if offset is None else (rows[0], offset)), True


def _found(known: Hyperplanes | None, rows: list[Array], offsets: list[float],
           d: int) -> tuple[Array, Array]:
    """The first-layer hyperplanes found so far: ``known`` ones and those of this pass
    (``rows``, ``offsets``), as ``(rows (k, d), offsets (k,))``."""
    return (np.vstack([np.zeros((0, d)) if known is None else known.rows, *rows]),
            np.concatenate([np.zeros(0) if known is None else known.offsets, offsets]))


def _across(a: Array, b: Array, points: Array,
            rng: np.random.Generator) -> list[tuple[Array, float]]:
    """For up to ``_ACROSS`` of the hyperplanes ``a · x + b = 0`` (``(k, d)``, ``(k,)``),
    chosen at random, the half-space on the side opposite the median of ``points``
    ``(m, d)`` (of its value ``a · x + b`` there), as :func:`is_flat`'s ``across``."""
    side = np.sign(np.median(points @ a.T + b, axis=0))
    chosen = rng.permutation(len(a))[:_ACROSS]
    return [(-side[k] * a[k], float(-side[k] * b[k])) for k in chosen if side[k] != 0]


def _group_plane(points: Array, normals: Array, first: Array) -> tuple[Array, float]:
    """The hyperplane of a group of critical points ``(m, d)`` with their unit normals: fitted
    through the points when they pin it (``m > d``), else the mean of the normals (oriented as
    ``first``), whose errors average out, at the median offset of the points, which the line
    search locates far more precisely than any normal."""
    if len(points) > points.shape[1]:
        n, c, _ = plane_through(points, first)
        return n, float(c)
    n = np.sum(normals * np.sign(normals @ first)[:, None], axis=0)
    n /= np.linalg.norm(n)
    return n, float(-np.median(points @ n))


def _apart(prefix: Prefix, rows: Array, biases: Array, j: int, p: Array, radius: Array,
           scale: float) -> Array:
    """``radius`` ``(n,)`` of the segments through ``p`` ``(n, d)`` on candidate ``j``'s
    hyperplane, shortened to 0.3 of the way to the nearest other candidate's hyperplane (not
    below ``1e-3 scale``): a segment that crosses another neuron of the layer holds two kinks
    and tells nothing, and an expansive layer has many near any point."""
    others = np.delete(np.arange(len(rows)), j)
    value, grads = Prefix.layer_above(*prefix.local(p), rows[others], biases[others])
    length = np.linalg.norm(grads @ prefix.layers[0][0], axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.min(np.where(length > 0, np.abs(value) / length, np.inf), axis=1,
                      initial=np.inf)
    return np.minimum(radius, np.maximum(0.3 * room, 1e-3 * scale))


def _placed(prefix: Prefix, row: Array, bias: float, starts: Array,
            domain: Domain | None) -> tuple[Array, Array, Array]:
    """:func:`.prefix.placed_on` by three Newton steps (inside a bounded ``domain``'s box),
    keeping the points they got onto the plane (where a neuron has a gradient on a sliver of
    the region only, few are: it is then tested from near its critical points)."""
    p, unit, radius = placed_on(prefix, row, bias, starts, steps=3,
                                box=box_of(domain))
    value, normal = prefix.next_normals(p, row)
    placed = (np.abs(value + bias) <= 1e-9 * (1.0 + np.abs(value))) & normal.any(axis=1)
    return p[placed], unit[placed], radius[placed]


def _tested(prefix: Prefix, rows: Array, biases: Array, j: int, starts: Array, scale: float,
            domain: Domain | None) -> tuple[Array, Array, Array]:
    """The segments that test candidate ``j`` from ``starts`` ``(n, d)``: points brought onto
    its hyperplane (:func:`_placed`), the local normal, radii kept short of the other
    candidates' hyperplanes (:func:`_apart`); in a bounded ``domain``, those in its box."""
    p, unit, radius = _placed(prefix, rows[j], float(biases[j]), starts, domain)
    radius = _apart(prefix, rows, biases, j, p, radius, scale)
    if domain is None or not domain.bounded:
        return p, unit, radius
    keep = domain.holds(p, unit, radius)
    return p[keep], unit[keep], radius[keep]


def flat_above(oracle: Oracle, prefix: Prefix, rows: Array, biases: Array,
               rng: np.random.Generator, *, scale: float, tries: int = 16,
               near: list[Array] | None = None,
               domain: Domain | None = None) -> NDArray[np.bool_]:
    """Which candidate neurons ``rows`` ``(m, h_T)``, ``biases`` ``(m,)`` on top of ``prefix`` are
    ones: a neuron's hyperplane ``row · a_T + bias = 0`` is flat in the space of the prefix's top
    activations ``a_T``.

    A neuron of a layer further up, seen several times in one region of the layer in between,
    looks like one there but not elsewhere. For each candidate, ``tries`` Gaussian points
    (standard deviation ``scale / 2``) are brought onto its hyperplane and a crossing test looks
    for the kink there, on a segment kept short of the other candidates' hyperplanes
    (:func:`_apart`; all candidates in one batch of ``6 · tries · m`` queries at most): at
    least half of them must find it on the hyperplane, and at most one in four of the kinks
    found may lie elsewhere (a neuron further up is flat only where the layer in between keeps
    one activation pattern, so most points find nothing or another kink). With ``near``, each
    candidate's critical points ``(m_i, d)``: a candidate that fewer than ``tries / 4`` of the
    Gaussian points could be brought onto (a neuron active on a sliver of the region has a
    gradient only there) is tested from ``tries`` points within ``0.05 scale`` per
    coordinate of those instead; that test cannot tell a neuron further up seen in that one
    region (the self-check can). In a bounded ``domain`` the points are drawn in the box and
    placed on the hyperplane inside it (:func:`.prefix.placed_on`'s ``box``: from natural
    inputs, whose dark pixels sit on a face, a free Newton step leaves the box, and only 11
    to 16 of the 29 or 30 true rows of trained MNIST in [0, 1]^784 passed, pass after pass,
    with the segments that stayed in it), and only segments inside it are tested. Returns
    ``(m,)`` booleans.
    """
    d = prefix.layers[0][0].shape[1]
    tests = []
    for j in range(len(rows)):
        test = _tested(prefix, rows, biases, j, spread(domain, rng, tries, d, 0.5, scale),
                       scale, domain)
        if near is not None and len(test[0]) < tries // 4:
            seeds = near[j][rng.choice(len(near[j]), tries)]
            seeds = seeds + rng.standard_normal(seeds.shape) * 0.05 * scale
            test = _tested(prefix, rows, biases, j, kept_in(domain, seeds), scale, domain)
        tests.append(test)
    counts = [len(p) for p, _, _ in tests]
    if not sum(counts):
        return np.zeros(len(rows), dtype=bool)
    pts = crossings(oracle, *(np.concatenate(parts) for parts in zip(*tests, strict=True)))
    flat = np.zeros(len(rows), dtype=bool)
    for j, part in enumerate(np.split(pts, np.cumsum(counts)[:-1])):
        seen = np.isfinite(part[:, 0])
        acts = prefix.top(np.nan_to_num(part))
        on = seen & (np.abs(acts @ rows[j] + biases[j])
                     <= 1e-5 * (np.linalg.norm(acts, axis=1) + abs(biases[j])))
        flat[j] = (counts[j] >= 2 and on.sum() >= max(2, counts[j] // 2)
                   and on.sum() >= 4 * (seen & ~on).sum())
    return flat


def active_throughout(normals: Array, rows: Array, domain: Domain) -> Array:
    """Directions ``(k, d)`` of first-layer units active on the whole box, seen only in deeper
    neurons' normals.

    In a bounded domain a first-layer unit whose hyperplane misses the box (or crosses it where
    no line went) has no critical point, yet it is a linear function of the input there, and
    the deeper neurons' normals ``normals`` ``(m, d)`` (unit rows) carry a part of its row off
    the span of the first layer's ``rows`` ``(h1, d)``. Where 3 normals or more have such a
    part (above ``1e-6``), the orthonormal span of those parts (their singular vectors above
    ``1e-3`` of the largest, at most ``d - h1``) is returned: the units' rows are these plus
    parts in the rows' span, which :func:`.signs.signs_beside_linear` finds. None (``k =
    0``) in the paper's setting, or where no normal has such a part."""
    d = rows.shape[1]
    if not domain.bounded or not len(normals) or len(rows) >= d:
        return np.zeros((0, d))
    q = np.linalg.qr(rows.T)[0].T  # (h1, d): orthonormal basis of the rows' span
    off = normals - (normals @ q.T) @ q
    size = np.linalg.norm(off, axis=1)
    big = size > 1e-6
    if big.sum() < 3:
        return np.zeros((0, d))
    _, s, vt = np.linalg.svd(off[big] / size[big, None], full_matrices=False)
    return vt[: min(int(np.sum(s > 1e-3 * s[0])), d - len(rows))]


def held_active(rows: Array, domain: Domain, scale: float) -> tuple[Array, Array]:
    """Unit rows ``(k, d)`` along ``rows`` and the biases that keep each active by ``scale /
    2`` or more on ``domain``'s box (there a unit active throughout is its pre-activation:
    any such bias is the victim's up to the next layer's biases)."""
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return unit, -np.sum(np.minimum(unit * domain.lo, unit * domain.hi), axis=1) + 0.5 * scale
