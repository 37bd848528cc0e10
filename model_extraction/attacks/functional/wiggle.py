"""Orientations of a middle layer by neuron wiggles (after Canales-Martínez et al., EUROCRYPT
2024), where :func:`.signs.signs_by_preimage` cannot decide: an expansive layer (more units than
the layers below let through), or a neuron its probes left undecided.

At a point ``x`` on neuron ``j``'s hyperplane, the layer is affine in the first layer's
pre-activations: ``Δz = G Δ``, ``G = V D_T J_T`` ``(h, h_1)`` (:class:`~.prefix.Prefix`, no
query). A *wiggle* is a step ``Δ`` that moves ``z_j``; probed both ways at two lengths (5
queries, :func:`.signs.side_that_moved`), only the side where ``j`` is active moves the logits
through ``j``. The other units of the layer that are active at ``x`` move them too, on both
sides, unless the step holds them still; an expansive layer has more units than ``G`` has rank,
so no step holds them all still, and which are active depends on their own signs.

The attack goes in rounds. A unit is *possibly active* at ``x`` where its sign is not known, or
is known (or guessed) and puts it on its active side there. At each neuron's points (its
critical points and Gaussian points moved onto its hyperplane; where those promise no clean
probe, points found by linear programs where every unit below is active and the units not
held are on their guessed inactive side; no query), the wiggle is:

* *exact* where it holds the possibly active units still, the likeliest first, as many as the
  layer's rank there allows: if every unit it moves without holding is inactive, one side
  moves the logits alone, and that is the sign (the other sign would need the moving units'
  change in the logits to cancel ``j``'s exactly); two such probes that agree, at points of
  different activation patterns, decide the neuron, and two that disagree end the rounds (a
  unit of the layer is missing: the caller draws more lines);
* else the step that moves the possibly active units least (ridge least squares), and the side
  that moves the logits more is a vote (the statistical test of the paper).

Every probe feeds a *guess* of each sign: its vote, and for an exact probe, whether the units
it moved unheld were inactive (clean) or one was not (both sides moved). The guesses tell the
next round which units are inactive where, so that fewer must be held still. A sign is decided
by exact probes only; a guess stands only for a neuron no exact wiggle decides within the
rounds (one with more units active with it than the layer's rank everywhere on its
hyperplane), and is returned as such.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from model_extraction.oracle import Oracle

from .domain import Domain, spread
from .prefix import Prefix
from .signs import all_active, how_far_moved, preimage, preimage_in_box, side_that_moved

Array = NDArray[np.float64]

__all__ = ["signs_by_wiggle"]

_STARTS = 512  # Gaussian points moved onto each hyperplane, per round (no query)
_PROBES = 4  # exact probes per undecided neuron and round
_VOTES = 16  # statistical probes per undecided neuron and round, when no exact one is likely
_LIKELY = 0.2  # the chance, from the guesses, that an exact probe comes out clean
_AGREE = 2  # exact probes that must agree to decide a sign
_GUESS = 8.0  # the evidence a guess needs to stand for a sign no exact probe decided
_SURE = 0.99  # the most a guess is trusted when choosing the units to hold
_NULL = 1e-9  # relative singular value below which a direction holds the units still
_ISOLATED = 1e-3  # share of j's gradient an exact wiggle keeps


@dataclass(frozen=True)
class _Probe:
    """One wiggle of neuron ``j``: the 5 ``inputs`` ``x, x ± εΔ, x ± εΔ/16``, whether it is
    ``exact``, the units it moves without holding them (``free``, ``(h,)``), the layer's
    pre-activations at ``x`` (``z``, ``(h,)``) and the activation pattern there (the prefix's
    units and the layer's, packed)."""

    j: int
    inputs: Array
    exact: bool
    free: NDArray[np.bool_]
    z: Array
    pattern: bytes


def signs_by_wiggle(oracle: Oracle, prefix: Prefix, rows: Array, biases: Array,
                    critical: list[Array], rng: np.random.Generator, *, scale: float,
                    known: Array | None = None, rounds: int = 16,
                    domain: Domain | None = None) -> tuple[Array, NDArray[np.bool_]]:
    """Orientations ``(h,)`` of the middle layer ``rows`` ``(h, h_T)``, ``biases`` ``(h,)`` on
    top of the oriented ``prefix``, by neuron wiggles (module docstring), for the neurons whose
    entry of ``known`` is 0 (default: all; a decided ``±1`` is kept and used).

    ``critical``: each neuron's critical points ``(m_j, d)``; ``scale``: the spread of the
    queries (Gaussian points of standard deviation ``scale / 2`` are moved onto each
    hyperplane). The prefix's first layer must have independent rows (``h_1 ≤ d``, as
    :func:`~.deep.extract_deep` requires of a deeper network): steps are taken in its
    coordinates. Costs 5 queries per probe: at most ``16 h`` probes a round, ``rounds``
    rounds.

    Returns the signs: ``±1`` where decided, 0 where undecided, ``nan`` where two exact
    probes disagreed (a unit of the layer not in ``rows`` moved: it is missing); and which
    signs are guesses: where no exact wiggle decided a neuron in ``rounds`` rounds (on an
    expansive layer, a neuron may have more units active with it than the layers below let
    through everywhere on its hyperplane: none exists; or a unit of the layer missing from
    ``rows`` moved in its probes), its guess stands if the evidence for it is strong, and
    only the caller's self-check vouches for it. In a bounded ``domain`` the points are
    drawn in the box and each probe is kept in it (shorter, or left out).
    """
    signs = np.zeros(len(rows)) if known is None else np.array(known, dtype=np.float64)
    votes = np.zeros(len(rows))  # the guess: evidence for +1 (> 0) or -1 (< 0)
    exact: list[list[tuple[bytes, float]]] = [[] for _ in rows]  # clean: (pattern, side)
    for _ in range(rounds):
        pending = np.flatnonzero(signs == 0)
        if not len(pending) or np.isnan(signs).any():
            break
        probes = [p for j in pending for p in _wiggles(
            prefix, rows, biases, j, _on_plane(prefix, rows[j], float(biases[j]), critical[j],
                                               rng, scale, domain), _odds(signs, votes, exact),
            scale, rng, domain)]
        if not probes:
            break
        y = np.asarray(oracle(np.concatenate([p.inputs for p in probes])),
                       dtype=np.float64).reshape(len(probes), 5, -1)
        for probe, answers in zip(probes, y, strict=True):
            _learn(probe, answers, votes, exact)
        for j in pending:
            sides = {side for _, side in exact[j]}
            if len(sides) > 1:
                signs[j] = np.nan
            elif len({pattern for pattern, _ in exact[j]}) >= _AGREE:
                signs[j] = sides.pop()
    guess = _odds(np.zeros(len(rows)), votes, exact)
    guessed = (signs == 0) & (np.abs(votes) >= _GUESS) & (guess != 0)
    signs[guessed] = np.sign(guess[guessed])
    return signs, guessed


def _odds(signs: Array, votes: Array, exact: list[list[tuple[bytes, float]]]) -> Array:
    """Each unit's sign and the confidence in it, signed ``(h,)``: ``±1`` where decided, 0
    where nothing is known (nor decided: ``nan`` signs), else the guess (the side of a clean
    exact probe, when there is one, over the votes) at a confidence that grows with the
    evidence, up to ``_SURE``."""
    seen = np.array([e[0][1] if len({side for _, side in e}) == 1 else 0.0 for e in exact])
    sure = np.where(seen != 0, _SURE, np.minimum(1.0 - 0.5 * np.exp(-np.abs(votes) / 2), _SURE))
    guess = np.where(seen != 0, seen, np.sign(votes)) * sure
    return np.where(np.abs(signs) == 1, signs, np.where(np.isnan(signs), 0.0, guess))


def _learn(probe: _Probe, answers: Array, votes: Array,
           exact: list[list[tuple[bytes, float]]]) -> None:
    """What one probe's ``answers`` say: a clean exact probe shows its neuron's side (two at
    different patterns decide it), and that every unit it moved without holding it was
    inactive at ``x`` (evidence for their signs: a unit the logits do not see there would
    pass for inactive, so it is only evidence); an exact probe that moved both sides says one
    of them was active; any probe votes by which side moved the logits more."""
    side = side_that_moved(answers)
    free = np.flatnonzero(probe.free)
    if probe.exact and abs(side) == 1:
        exact[probe.j].append((probe.pattern, side))
        votes[probe.j] += 3 * side
        votes[free] -= np.sign(probe.z[free])
        return
    votes[probe.j] += _vote(answers)
    if probe.exact and np.isnan(side) and len(free):
        votes[free] += np.sign(probe.z[free]) / len(free)


def _on_plane(prefix: Prefix, row: Array, bias: float, critical: Array,
              rng: np.random.Generator, scale: float, domain: Domain | None = None) -> Array:
    """Candidate points ``(n, d)`` on the hyperplane ``row · a_T + bias = 0``: the critical
    points and Gaussian points (points drawn in a bounded ``domain``'s box,
    :meth:`~.domain.Domain.draw`) moved onto it by Newton steps (no query)."""
    d = prefix.layers[0][0].shape[1]
    starts = np.concatenate([critical, spread(domain, rng, _STARTS, d, 0.5, scale)])
    return prefix.onto(starts, row, bias)


@dataclass(frozen=True)
class _Local:
    """The layer around points ``x`` ``(n, d)`` on neuron ``j``'s hyperplane: the prefix's
    pre-activations and Jacobians (:meth:`.prefix.Prefix.local`), the layer's gradients ``g``
    ``(n, h, h1)`` and pre-activations ``z`` ``(n, h)``, which points are on the hyperplane
    (``on``), each other unit's chance of being active there (``active``, from ``odds``) and
    whether it depends on the input there (``moves``)."""

    x: Array
    pres: list[Array]
    jac: list[Array]
    g: Array
    z: Array
    on: NDArray[np.bool_]
    active: Array
    moves: NDArray[np.bool_]


def _local(prefix: Prefix, rows: Array, biases: Array, j: int, x: Array, odds: Array,
           scale: float) -> _Local:
    """:class:`_Local` at ``x`` (``odds``: as :func:`_wiggles`)."""
    pres, jac = prefix.local(x)
    z, g = Prefix.layer_above(pres, jac, rows, biases)
    slope = np.linalg.norm(g[:, j] @ prefix.layers[0][0], axis=1)
    on = (slope > 0) & (np.abs(z[:, j]) <= 1e-9 * scale * slope)
    active = np.where(odds == 0, 0.5, np.where(np.sign(odds) * z > 0, np.abs(odds),
                                               1.0 - np.abs(odds)))
    active[:, j] = 0.0
    return _Local(x, pres, jac, g, z, on, active, np.linalg.norm(g, axis=2) > 0)


def _wiggles(prefix: Prefix, rows: Array, biases: Array, j: int, x: Array, odds: Array,
             scale: float, rng: np.random.Generator,
             domain: Domain | None = None) -> list[_Probe]:
    """Probes of neuron ``j`` at points ``x`` ``(n, d)`` on its hyperplane. ``odds`` ``(h,)``:
    each unit's sign and the confidence in it, signed (:func:`_odds`; ``±1``: decided; 0:
    nothing known, a chance of 1/2 of being active anywhere). At each point
    the units most likely active are held still, as many as the layer's rank there allows
    (the exact wiggle); where none comes out clean with chance ``_LIKELY`` or more, points
    where the units not held are likely inactive are sought by linear programs
    (:func:`_planned`) and added; then the ``_PROBES`` likeliest exact wiggles, or if there
    is still none, ``_VOTES`` statistical wiggles (each unit held in proportion to its chance
    of being active), those that move the others least."""
    at = _local(prefix, rows, biases, j, x, odds, scale)
    free, step, is_exact, clean = _exact(at, j)
    if not np.any(is_exact & (clean >= _LIKELY) & at.on):
        more = _planned(prefix, rows, biases, j, odds, rng, scale, domain=domain)
        if len(more):
            at = _local(prefix, rows, biases, j, np.concatenate([x, more]), odds, scale)
            free, step, is_exact, clean = _exact(at, j)
    likely = is_exact & (clean >= _LIKELY) & at.on
    if likely.any():
        choose, many = np.where(likely, -clean, np.inf), _PROBES
    else:
        weight = at.g * np.sqrt(at.active)[:, :, None]
        step, _ = _steps(weight, at.g[:, j], ridge=True)
        residual = np.linalg.norm(np.einsum("nhm,nm->nh", weight, step), axis=1)
        choose, many = np.where(at.on, residual, np.inf), _VOTES
    eps, dx = _room(prefix, at, j, step)
    if domain is not None and domain.bounded:  # as long as the box has the room, both ways
        fwd, back = domain.face_room(at.x)
        with np.errstate(divide="ignore", invalid="ignore"):
            space = np.min(np.where(dx != 0, np.minimum(fwd, back) / np.abs(dx), np.inf), axis=1)
        eps = np.where(domain.contains(at.x), np.minimum(eps, 0.9 * space), 0.0)
    order = [i for i in np.argsort(choose, kind="stable")
             if np.isfinite(choose[i]) and eps[i] > 1e-9 * scale][:many]
    lengths = np.array([0.0, 1.0, -1.0, 1 / 16, -1 / 16])
    free = free if likely.any() else np.zeros_like(free)
    patterns = np.concatenate([*(p > 0 for p in at.pres), at.z > 0], axis=1)
    return [_Probe(j, at.x[i] + (eps[i] * lengths)[:, None] * dx[i], bool(likely.any()),
                   free[i], at.z[i], np.packbits(patterns[i]).tobytes()) for i in order]


def _exact(at: _Local, j: int) -> tuple[NDArray[np.bool_], Array, NDArray[np.bool_], Array]:
    """The exact wiggle of neuron ``j`` at each point of ``at``: the units it moves without
    holding them (``(n, h)``; the units held are :func:`_held`'s), the step, whether it holds
    them still, and the chance that the units it moves are all inactive (the probe comes out
    clean)."""
    held = _held(at.g, at.active * at.moves)
    step, is_exact = _steps(at.g * held[:, :, None], at.g[:, j])
    moved = np.abs(np.einsum("nhm,nm->nh", at.g, step)) > 1e-9  # j moves by 1
    free = moved & ~held & (at.active > 0)
    free[:, j] = False
    return free, step, is_exact, np.prod(np.where(free, 1.0 - at.active, 1.0), axis=1)


def _planned(prefix: Prefix, rows: Array, biases: Array, j: int, odds: Array,
             rng: np.random.Generator, scale: float, tries: int = 4,
             domain: Domain | None = None) -> Array:
    """Points ``(m, d)`` on neuron ``j``'s hyperplane where every prefix unit is active (the
    layer is affine in the first layer's activations there, :func:`.signs.all_active`, of
    the largest rank, generically) and the units whose signs are the most certain (the rest drawn at
    random, their side too where nothing is known) are on their inactive side, enough of
    them that the others can all be held still: by linear programs (:func:`.signs.preimage`),
    ``tries`` draws, each moved onto the hyperplane by Newton steps."""
    p_mat, q, constraints = all_active(prefix, rows, biases)
    rank = np.linalg.matrix_rank(p_mat)
    others = np.delete(np.arange(len(rows)), j)
    w1, b1 = prefix.layers[0]
    back, found = np.linalg.pinv(w1), []
    for _ in range(tries):
        order = others[np.lexsort((rng.random(len(others)), -np.abs(odds[others])))]
        off = order[:max(len(rows) - rank, 0)]
        side = np.where(odds[off] != 0, np.sign(odds[off]), rng.choice([-1.0, 1.0], len(off)))
        more = [*constraints, (-side[:, None] * p_mat[off], -side * q[off])]
        if domain is not None and domain.bounded:
            point = preimage_in_box(p_mat[j], float(q[j]), more, (w1, b1), domain, rng)
            if point is not None:
                found.append(point[0])
            continue
        point = preimage(p_mat[j], float(q[j]), more, scale, rng)
        if point is not None:
            found.append((point[0] - b1) @ back.T)
    if not found:
        return np.zeros((0, w1.shape[1]))
    return prefix.onto(np.array(found), rows[j], float(biases[j]))


def _held(g: Array, active: Array) -> NDArray[np.bool_]:
    """Which units ``(n, h)`` to hold still at each point: the most likely ``active`` ones
    (chance 0: never), one fewer than the rank of the layer's gradients ``g`` ``(n, h, h1)``
    there (so that the neuron itself can still move)."""
    s = np.linalg.svd(g, compute_uv=False)
    rank = np.sum(s > _NULL * np.maximum(s[:, :1], 1e-300), axis=1)
    order = np.argsort(-active, axis=1, kind="stable")
    place = np.empty_like(order)
    np.put_along_axis(place, order, np.arange(g.shape[1])[None], axis=1)
    return (place < (rank - 1)[:, None]) & (active > 0)


def _room(prefix: Prefix, at: _Local, j: int, step: Array) -> tuple[Array, Array]:
    """The probe length ``ε`` ``(n,)`` (a quarter of the way to the nearest hyperplane of a
    prefix unit or of another unit of the layer) and the unit input-space direction ``(n,
    d)`` of each ``step`` ``(n, h1)`` (first-layer coordinates)."""
    dx = step @ np.linalg.pinv(prefix.layers[0][0]).T
    length = np.linalg.norm(dx, axis=1)
    unit = np.where(length > 0, 1.0 / np.where(length > 0, length, 1.0), 0.0)
    values = np.concatenate([*at.pres, np.delete(at.z, j, axis=1)], axis=1)
    rates = np.concatenate([*(np.einsum("nkm,nm->nk", jl, step) for jl in at.jac),
                            np.delete(np.einsum("nhm,nm->nh", at.g, step), j, axis=1)],
                           axis=1) * unit[:, None]
    moving = np.abs(rates) > 1e-12 * np.abs(rates).max(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.min(np.where(moving, np.abs(values) / np.abs(rates), np.inf), axis=1)
    return np.where(length > 0, 0.25 * room, 0.0), dx * unit[:, None]


def _steps(held: Array, grad: Array, ridge: bool = False) -> tuple[Array, NDArray[np.bool_]]:
    """Steps ``Δ`` ``(n, h1)`` with ``grad · Δ = 1`` that move the rows of ``held`` ``(n, h,
    h1)`` (zero rows: free) the least, and whether they hold them still (exact): the part of
    ``grad`` ``(n, h1)`` in their null space where it keeps a share ``_ISOLATED`` of it (not
    with ``ridge``), else the ridge least-squares step."""
    _, s, vt = np.linalg.svd(held, full_matrices=True)
    s = np.concatenate([s, np.zeros((len(s), vt.shape[1] - s.shape[1]))], axis=1)
    top = np.maximum(s[:, :1], 1e-300)
    null = s <= _NULL * top
    coef = np.einsum("nim,nm->ni", vt, grad)
    exact_part = np.einsum("ni,nim->nm", np.where(null, coef, 0.0), vt)
    smooth = np.einsum("ni,nim->nm", coef / (s**2 + 1e-3 * top**2 + 1e-300), vt)
    norm = np.linalg.norm(grad, axis=1)
    is_exact = np.linalg.norm(exact_part, axis=1) >= _ISOLATED * norm
    is_exact &= not ridge
    step = np.where(is_exact[:, None], exact_part, smooth)
    rate = np.einsum("nm,nm->n", step, grad)
    return step / np.where(rate > 0, rate, np.inf)[:, None], is_exact & (rate > 0)


def _vote(answers: Array) -> float:
    """``+1`` when the ``+`` side moved the logits more than the ``−`` side (``answers``: at
    ``x, x ± εΔ, x ± εΔ/16``), ``−1`` when less, 0 when neither moved linearly."""
    moved, least = how_far_moved(answers)
    if max(moved[0], moved[1]) <= least:
        return 0.0
    return float(np.sign(moved[0] - moved[1]))
