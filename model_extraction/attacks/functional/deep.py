"""Functionally-equivalent extraction of a ReLU network of any depth (one hidden layer being its
first case), black box end to end (after Carlini, Jagielski and Mironov, CRYPTO 2020), in the
paper's setting (any float64 input) or inside the input box an API enforces (:mod:`.domain`:
every phase keeps its queries in it).

The phases, one module each, layer after layer:

0. the hypothesis of one hidden layer (:mod:`.hypothesis`): the one-hidden-layer attack
   (:mod:`.onelayer`), whose savings hold at depth one only; its model is the result when it
   passes its self-check, else (hyperplanes that bend, or its
   :class:`~.result.ExtractionError`) the steps below go on, its queries counted;
1. critical points and their hyperplanes' normals along random lines (:mod:`.critical`; the
   Jacobians of each of the first lines measured in the span of the normals found before it,
   :func:`.aim.first_lines`);
2. the first layer: the hyperplanes that are flat everywhere (:mod:`.layers`), refined
   (:mod:`.refinement`); when almost every critical point is on one of them (or ``hidden`` has
   one width) and the logits are affine in their activations and the inputs, the first layer is
   the only one: its signs and the logit layer by least squares (:mod:`.lastlayer`; with an
   affine term in the inputs where that is not exact without one), then step
   5; else it is oriented from the deeper layers' critical points
   (:func:`.signs.signs_from_next_layer`: needs a contractive first layer, ``h1 ≤ d``);
3. each next layer (:mod:`.nextlayer`): its signatures in the basis of the active units of the
   layers extracted so far (the :class:`.prefix.Prefix`), joined across regions and refitted
   through their critical points (:mod:`.signatures`; solved jointly across points where one
   point's are not unique, :mod:`.joint`), more lines, aimed where partial rows lack units
   (:mod:`.aim`), until no batch finds a new neuron, then refined;
4. if the logits are affine in that layer's activations (and in the layer below: an affine
   term carries a unit active wherever the attack queried), it is the last: its signs and the
   logit layer by least squares (:mod:`.lastlayer`; a weight never seen at a critical point
   measured first from the kinks of lines where both units are active, :mod:`.unseen`); if
   not, the neurons whose hyperplanes are
   flat in the space of the layer below are kept (:func:`.layers.flat_above`), oriented by
   preimages (:func:`.signs.signs_by_preimage`) where the layer is contractive and by neuron
   wiggles (:mod:`.wiggle`) where it is expansive, and added to the prefix (or the layer as
   an earlier pass oriented it, on the same layers below, where this pass orients fewer of
   its neurons or cannot orient it), and step 3 repeats;
5. the self-check (:mod:`.selfcheck`): the model must match fresh answers to 1e-6, or more
   lines (half of them through the points it failed on, where a neuron it lacks is active)
   and the phases again, up to ``max_lines``, then :class:`~.result.ExtractionError`.

Every query goes through the oracle and is counted; nothing reads the victim's weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model_extraction.network import ReLUNetwork
from model_extraction.oracle import BudgetExhaustedError, Oracle, as_oracle

from .aim import MORE_LINES, first_lines, search_lines
from .critical import CriticalPoints, Span
from .domain import Domain, checked_reference, guarded, spread
from .extract import FunctionalExtraction
from .hypothesis import Refuted, one_layer_attack, try_one_layer
from .lastlayer import fit_with_affine, orient_and_fit
from .layers import Hyperplanes, active_throughout, first_layer, held_active
from .nextlayer import distinct_with_partial, grow, with_partial
from .phases import PhaseLog
from .prefix import Prefix
from .refinement import refit_first_layer, refit_next_layer
from .result import ExtractionError, ExtractionResult
from .selfcheck import SelfCheck, self_check_drawn
from .signs import signs_beside_linear, signs_by_preimage, signs_from_next_layer
from .unseen import measure_unseen
from .wiggle import signs_by_wiggle

Array = NDArray[np.float64]

__all__ = ["extract_deep"]

_FIRST_LINES = 24
_LAST_FIT = 1e-7  # relative residual of a logit fit on the last hidden layer's activations
_UNEXPLAINED = 0.05  # share of critical points on no known hyperplane: a layer further up
_MAX_DEPTH = 8
_SPAN_RESIDUAL = 1e-5  # a first-layer row this close (relative) to the span of the others: not one
_EXPANSIVE_FIRST = (
    "the first hidden layer has {h} units on {d} inputs: extract_deep does not extract an "
    "expansive first layer below other hidden layers (its orientations need a contractive "
    "one, h1 <= d); as the only hidden layer it is extracted (hidden=(h1,))")


def _expansive_found(h: int, d: int) -> ExtractionError:
    """The refusal of a first layer found expansive below other hidden layers."""
    return ExtractionError(
        f"found {h} first-layer hyperplanes on {d} inputs, and hidden layers above them: "
        "extract_deep does not extract an expansive first layer below others (its orientations "
        "need a contractive one, h1 <= d; as the only hidden layer it is extracted, "
        "hidden=(h1,)); in an input box, a deeper neuron's hyperplane that is flat wherever "
        "the lines crossed it can also pass for a first-layer one")


class _Incomplete(Exception):
    """A layer could not be finished with the critical points at hand (more lines may help);
    ``first``: the first layer (oriented, unless raised before its signs), where the next
    lines are aimed; ``found``: every critical point found so far (set by :func:`_layers`)."""

    def __init__(self, why: str, prefix: Prefix) -> None:
        super().__init__(why)
        self.first = Prefix(prefix.layers[:1])
        self.found: CriticalPoints | None = None


class _Phases(PhaseLog):
    """:class:`~.phases.PhaseLog` that also knows how far the attack got (the layer it works on
    and the widths of the layers extracted and oriented so far)."""

    def __init__(self, oracle: Oracle, progress: Callable[..., None] | None) -> None:
        super().__init__(oracle, progress, phase="critical points")
        self.known: tuple[int, ...] = ()

    @contextmanager
    def budget(self, lines: list[Any]) -> Iterator[None]:
        """Re-raise the oracle's :class:`BudgetExhaustedError` saying how far the attack got."""
        try:
            yield
        except BudgetExhaustedError as err:
            known = (f"the layers of widths {self.known} were extracted and oriented"
                     if self.known else "no layer was finished yet")
            where = (f"Deep extraction was in phase '{self.phase}' of layer "
                     f"{len(self.known) + 1} ({len(lines)} lines drawn); {known}.")
            raise BudgetExhaustedError(err.budget, err.used, err.requested,
                                       progress=where) from None


def _on_planes(found: CriticalPoints, planes: Hyperplanes, scale: float) -> NDArray[np.bool_]:
    """Which critical points lie on one of the first layer's hyperplanes."""
    if not len(planes.rows):
        return np.zeros(len(found), dtype=bool)
    dist = np.abs(found.points @ planes.rows.T + planes.offsets)
    same = np.abs(np.abs(found.normals @ planes.rows.T) - 1) < 1e-5
    return np.any((dist < 1e-7 * scale) & same, axis=1)


def extract_deep(
    oracle: Any, *, input_dim: int | None = None, hidden: tuple[int, ...] | None = None,
    scale: float = 1.0, reach: float | None = None, seed: int = 0, max_lines: int = 256,
    check_points: int = 4096,
    check_tolerance: float = 1e-6, progress: Callable[..., None] | None = None,
    executor: Any = None, one_layer: bool | FunctionalExtraction = True,
    input_bounds: tuple[float, float] | None = None, reference_inputs: Any = None,
) -> ExtractionResult:
    """Extract a ``d → h1 → … → hL → K`` ReLU network (``L ≥ 1``) from its float64 logits.

    One hidden layer is the pipeline's first case: the one-hidden-layer attack tests that
    hypothesis first (:mod:`.hypothesis`; ``one_layer``), and the deep phases go on where it
    is refuted (their own depth-one case, where it could not vouch for a model, takes the
    signs and the logit layer from the logits, affine in the layer's activations and the
    inputs).

    ``oracle``: an :class:`~model_extraction.oracle.Oracle`, a network or a callable
    ``(n, d) → (n, K)``; ``hidden``: the widths, if known (the depth is then taken from it, and
    the widths found are checked against it; without it the attack finds both);
    ``scale``: the spread of the queries (lines through Gaussian points of standard deviation
    ``scale / 2``); ``reach``: how far each line is searched (``t ∈ [-reach, 0.83 reach]``,
    default ``4 scale``; a line meets a hyperplane at ``t ~ (n·o + c) / (n·v)`` with
    ``n·v ~ 1/√d``, so trained high-dimensional victims need more); ``max_lines``: a bound on the
    lines, checked between batches of lines (a run stops within one batch beyond it: 16
    lines, 32 after a failed self-check);
    ``check_points``: the fresh Gaussian queries of each self-check, drawn and queried 8,192
    at a time (a neuron active on a share ``p`` of them goes unseen with probability ``(1 -
    p)^check_points``: 1.7% for ``p = 0.1%`` at the default, 2.0% for ``p = 0.006%`` at
    65,536; ``result.check["disagreement_bound"]`` says what a passed one vouches for),
    ``check_tolerance``: the relative error it allows;
    ``executor``: a :class:`model_extraction.sweep.Executor` (``make_executor("local")`` for a
    Ray instance on this machine): the per-neuron refinement runs as its tasks, on copies of
    the oracle (it must be picklable), with the same results and the same query count.
    ``one_layer``: ``True`` tests the one-hidden-layer hypothesis first with the one-layer
    attack's defaults (lines through ``[-scale/2, scale/2]^d``, or through the box of
    ``input_bounds`` and no query outside it, this ``seed`` and self-check, ``hidden[0]`` when
    ``hidden`` has one width; not when it has more), ``False`` runs the deep phases alone, and a
    :class:`~.extract.FunctionalExtraction` (``mode="default"``; ``stay_in_bounds=False``, or
    with ``input_bounds`` given, ``stay_in_bounds=True`` and the same box; its own
    ``reference_inputs``) tests it with those settings (``ValueError``, before any query, for
    another value); where it holds, its :class:`~.result.ExtractionResult` is returned as
    it is (``mode="default"``, no phase ``one-layer hypothesis``); where it is refuted,
    ``progress`` is told so (phase ``one-layer hypothesis refuted``) before the deep phases.
    ``input_bounds``: the box ``(lo, hi)`` an API enforces; every query then stays in
    ``[lo, hi]^d`` (a guard refuses any other before it is sent,
    :class:`~.domain.OutsideDomainError`), ``scale`` is its width and ``reach`` does not apply:
    lines run across the box (:meth:`~.domain.Domain.line_through`), points are drawn in it,
    finite differences turn back at its faces, preimages are found in it by linear programs,
    the hypothesis runs the one-layer attack in it, and a first-layer unit active on all of it
    is found from the deeper normals (``network.metadata["active_throughout"]``, a note);
    the model is then the victim's on the box. ``reference_inputs``: with ``input_bounds``,
    natural inputs ``(n, d)`` inside the box that the attacker holds: two lines in three pass
    through them, half of every draw is taken from them, and the hypothesis gets them too.

    Returns an :class:`~.result.ExtractionResult` whose ``network`` may carry an affine term
    ``skip`` ``(K, h_{L-1})`` in its last hidden layer's input (docs/deep.md; a note says so),
    and last-layer weights never seen at a critical point (the unit below was inactive at every
    one of the neuron's) and not measured on the lines of :mod:`.unseen`, set to 0 and listed
    as ``[neuron, unit]`` pairs in ``network.metadata["unseen_weights"]`` (a note says so),
    and middle-layer orientations that are statistical guesses of the neuron wiggle (an
    expansive layer's neuron that no exact wiggle reaches; ``network.metadata
    ["guessed_signs"]``, ``[layer, neuron]`` pairs, and a note).

    Raises :class:`~.result.ExtractionError` when the self-check fails, a layer cannot be
    finished, the first layer of a deeper network is found expansive (``h1 > d``; as the only
    hidden layer it is extracted, with an affine term in the inputs where the logits do not
    fix its signs, ``h1 > K d``) or the widths found differ from ``hidden`` (at once when
    ``hidden`` has one width and the one-layer hypothesis found hyperplanes that bend);
    ``ValueError`` for ``check_points < 1``, a ``check_tolerance`` outside ``(0, 1)`` or
    ``hidden`` with an expansive first layer of several (before any query); and the oracle's
    errors
    (precision; a :class:`~model_extraction.oracle.BudgetExhaustedError` that says the phase
    and layer reached and the widths already extracted). ``ValueError`` too (before any query)
    for a box that is not ``(lo, hi)`` with ``lo < hi``, and for reference inputs without a box,
    of another width or outside it.
    """
    oracle = as_oracle(oracle, input_dim=input_dim)
    d = input_dim if input_dim is not None else oracle.input_dim
    if d is None:
        raise ValueError("input_dim is required: the oracle does not say its number of inputs")
    if hidden is not None and (len(hidden) < 1 or min(hidden) < 1):
        raise ValueError(f"hidden={hidden}: extract_deep needs one or more positive widths")
    if hidden is not None and len(hidden) > 1 and hidden[0] > d:
        raise ValueError(_EXPANSIVE_FIRST.format(h=hidden[0], d=d))
    if check_points < 1 or not 0 < check_tolerance < 1:
        raise ValueError(f"check_points={check_points}, check_tolerance={check_tolerance}: the "
                         "self-check needs at least one fresh point and a tolerance in (0, 1)")
    domain = _domain(input_bounds, scale, d, reference_inputs)
    scale = domain.width
    attack = one_layer_attack(one_layer, hidden, domain=domain, seed=seed,
                              check_points=check_points, check_tolerance=check_tolerance)
    oracle = guarded(oracle, domain)
    held = None if attack is None else try_one_layer(attack, oracle, d, progress)
    if isinstance(held, ExtractionResult):
        return held
    if held is not None and held.bent and hidden is not None:
        raise ExtractionError(f"hyperplanes bend (the one-hidden-layer attack, after "
                              f"{held.cost.queries:,} queries): the victim has more hidden "
                              f"layers than hidden={tuple(hidden)} says; omit hidden= to have "
                              "the depth found")
    if held is not None and progress is not None:  # the phases' names are the attack's own
        progress("one-layer hypothesis refuted", oracle.queries, 0, None)
    rng = np.random.default_rng(seed)
    reach = 4.0 * scale if reach is None else reach
    phases, lines = _Phases(oracle, progress), []
    if held is not None:
        phases.costs["one-layer hypothesis"] = held.cost
    try:
        with phases.budget(lines):
            network, residuals, check = _until_checked(
                oracle, d, rng, phases, lines, (scale, reach, max_lines), hidden, executor,
                (check_points, check_tolerance), domain)
    except ExtractionError as err:
        if held is None:
            raise
        raise ExtractionError(f"{_refuted(held, 'the deep phases')} failed: {err}") from err
    phases.leave()
    notes = _notes(network) if held is None else [_refuted(held), *_notes(network)]
    if hidden is not None and tuple(hidden) != network.widths:
        carried = (" (a unit constant where the attack queried is carried by the affine term)"
                   if network.skip is not None and network.widths[-1] < hidden[-1] else "")
        raise ExtractionError(f"found widths {network.widths}, not the {tuple(hidden)} given "
                              f"({oracle.queries} queries){carried}: omit hidden= to have the "
                              "widths found, or check the victim's architecture")
    return ExtractionResult(
        network=network, mode="deep", queries=oracle.queries, phases=phases.costs,
        lines=len(lines), estimated_bits=-np.log2(np.maximum(residuals, 2.0**-60)),
        notes=notes, check=check.as_dict())


def _domain(input_bounds: tuple[float, float] | None, scale: float, d: int,
            reference: Any) -> Domain:
    """Where the queries go: the box ``input_bounds`` that they stay in (with the
    ``reference`` inputs, ``(n, d)``, if any), or the paper's setting (any input; ``[-scale/2,
    scale/2]^d`` then only sets the scale). ``ValueError`` for a box that is not ``(lo, hi)``
    with ``lo < hi``, a ``scale`` that is not positive, or reference inputs without a box,
    of another shape or outside it."""
    if input_bounds is None:
        if not scale > 0:
            raise ValueError(f"scale={scale}: the spread of the queries must be positive")
        if reference is not None:
            raise ValueError("reference_inputs need input_bounds: the box they are inside")
        return Domain(-scale / 2, scale / 2, d, bounded=False)
    try:
        lo, hi = (float(v) for v in input_bounds)
    except (TypeError, ValueError):
        lo = hi = np.nan
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ValueError(f"input_bounds={input_bounds!r}: give the box the API accepts as "
                         "(low, high), two finite numbers, low < high")
    return Domain(lo, hi, d, bounded=True, reference=None if reference is None
                  else checked_reference(reference, (lo, hi), d))


def _refuted(held: Refuted, then: str = "extracted as a deep network") -> str:
    """The note on the one-hidden-layer hypothesis, refuted, and ``then`` what followed."""
    why = "found bent hyperplanes" if held.bent else "could not vouch for a model"
    return (f"the one-hidden-layer attack {why} after {held.cost.queries:,} queries (counted, "
            f"phase 'one-layer hypothesis'): {then}")


def _notes(network: ReLUNetwork) -> list[str]:
    """What the result must say about ``network``: an affine term, weights never seen."""
    notes = [] if network.skip is None else [
        f"the model has an affine term in the input of its last hidden layer (skip, "
        f"{network.skip.shape[0]} x {network.skip.shape[1]}): it carries the orientations the "
        "logits leave open and any unit of that layer that never changed state where the "
        "attack queried; such a unit, if there is one, may make the model differ far from "
        "there"]
    unseen = network.metadata.get("unseen_weights", [])
    many = len(unseen) > 1
    notes += [] if not unseen else [
        f"{len(unseen)} weight{'s' if many else ''} of the last hidden layer (neurons "
        f"{sorted({n for n, _ in unseen})} of the model; metadata['unseen_weights'] lists "
        f"[neuron, unit] pairs) {'were' if many else 'was'} never seen: the unit below was "
        "inactive at every critical point of the neuron, and the weight is set to 0; it "
        "matters only where both are active, which the self-check did not see"]
    linear = network.metadata.get("active_throughout", [])
    notes += [] if not linear else [
        f"{len(linear)} first-layer unit(s) (metadata['active_throughout'], counted from 0) "
        "never changed state where the attack queried the box, and came from the deeper "
        "neurons' normals: the model keeps them active on all of it, with a bias that keeps "
        "them so (with several, only the span of their rows is the victim's); where such a "
        "unit is in fact inactive, in a part of the box no line crossed, the model differs "
        "from the victim, and beyond the box too"]
    guessed = network.metadata.get("guessed_signs", [])
    notes += [] if not guessed else [
        f"the orientations of {len(guessed)} middle-layer neurons (metadata['guessed_signs'] "
        "lists [layer, neuron] pairs, layers counted from 1) are statistical guesses of the "
        "neuron wiggle, not exact decisions: no wiggle holds every unit active with them "
        "still; the layers above were extracted on top of them; the self-check vouches for "
        "the model"]
    return notes


def _until_checked(oracle: Oracle, d: int, rng: np.random.Generator, phases: _Phases,
                   lines: list[Any], search: tuple[float, float, int],
                   hidden: tuple[int, ...] | None, executor: Any, checking: tuple[int, float],
                   domain: Domain) -> tuple[ReLUNetwork, Array, SelfCheck]:
    """The phases, with more lines each time a layer cannot be finished or the model fails its
    self-check, until it passes (the network, the first layer's refit residuals, the check) or
    ``max_lines`` (:class:`~.result.ExtractionError`)."""
    scale, reach, max_lines = search
    check_points, check_tolerance = checking
    phases.enter("critical points")
    found, spans = first_lines(oracle, d, lines, rng, _FIRST_LINES, scale, reach, domain)
    planes = Hyperplanes(np.zeros((0, d)), np.zeros(0), ())
    refined: dict[int, tuple[Array, float, float]] = {}
    kept: dict[int, Prefix] = {}
    examined = 0
    while True:
        phases.enter("first layer")
        planes, examined = (_more_planes(oracle, found, planes, rng, scale, examined, domain),
                            len(found))
        if spans:  # once: the first lines' normals into the span of the refined first layer
            phases.enter("refinement", len(planes.rows))
            found = _carried(found, spans, _refined_first(oracle, planes, rng, scale, executor,
                                                          refined, domain)[0])
            spans = {}
        try:
            found, network, residuals, held = _layers(
                oracle, found, planes, lines, rng, phases, search, hidden, executor, refined,
                kept, domain)
        except _Incomplete as stop:
            first, why, found, failed = stop.first, str(stop), stop.found or found, None
        else:
            phases.enter("self-check", sum(network.widths))
            check, failed = self_check_drawn(
                oracle, network, lambda n: spread(domain, rng, n, d, 1.0, scale),
                check_points, *held, check_tolerance)
            if check.passed:
                break
            first = Prefix(((network.weight0, network.bias0),))
            why = (f"the extracted {d}-{'-'.join(map(str, network.widths))}-"
                   f"{network.num_outputs} network misses the oracle by a relative "
                   f"{check.max_error:.1e} (tolerance {check_tolerance:.0e})")
        if len(lines) >= max_lines:
            given = ("" if hidden is None else " Or hidden= gives more layers or units than "
                     "the victim has: omit it to have them found.")
            reach_hint = "" if domain.bounded else ", a wider reach (reach=)"
            raise ExtractionError(
                f"{why} after {len(lines)} lines and {oracle.queries:,} queries: not returned. "
                f"More lines (max_lines=){reach_hint} or another seed= may help.{given}")
        phases.enter("critical points")
        # twice as many lines after a failed check: a pass of the phases costs far more
        more = MORE_LINES * (1 if failed is None else 2)
        found = search_lines(oracle, found, lines, rng, more, scale, reach,
                             (first, np.ones(first.widths[0], dtype=bool)), failed,
                             domain=domain)
    return network, residuals, check


def _carried(found: CriticalPoints, spans: dict[int, Span], rows: Array) -> CriticalPoints:
    """``found`` with the normals of each line of ``spans`` (measured along that
    :class:`~.critical.Span`) carried into the span of the first layer's ``rows``."""
    normals = found.normals.copy()
    for line, span in spans.items():
        on = found.line == line
        normals[on] = span.carried(normals[on], rows)
    return CriticalPoints(found.points, normals, found.line)


def _more_planes(oracle: Oracle, found: CriticalPoints, planes: Hyperplanes,
                 rng: np.random.Generator, scale: float, examined: int,
                 domain: Domain) -> Hyperplanes:
    """``planes`` plus the first-layer hyperplanes among the points not on one of them (a new
    one has a point beyond the first ``examined``, those of the earlier passes)."""
    free = np.flatnonzero(~_on_planes(found, planes, scale))
    # in a box a line crosses fewer hyperplanes: a plane seen on one line is tested
    new = first_layer(oracle, found.subset(free), rng, scale=scale, seeds=free >= examined,
                      min_lines=1 if domain.bounded else 3, domain=domain, known=planes)
    if len(planes.rows) and len(new.rows):  # one already known, seen again far away
        same = np.abs(np.abs(new.rows @ planes.rows.T) - 1) < 1e-6
        near = np.abs(np.abs(new.offsets)[:, None] - np.abs(planes.offsets)[None]) < 1e-6 * scale
        fresh = ~np.any(same & near, axis=1)
        new = Hyperplanes(new.rows[fresh], new.offsets[fresh],
                          tuple(m for m, f in zip(new.members, fresh, strict=True) if f))
    new = _independent(planes.rows, new)
    if not len(planes.rows) and not len(new.rows):
        raise ExtractionError(f"no first-layer hyperplane found ({oracle.queries} queries): is "
                              "the victim a ReLU network?")
    return Hyperplanes(np.concatenate([planes.rows, new.rows]),
                       np.concatenate([planes.offsets, new.offsets]),
                       planes.members + tuple(free[m] for m in new.members))


def _independent(rows: Array, new: Hyperplanes) -> Hyperplanes:
    """The planes of ``new`` whose rows lie off the span of the first layer's ``rows`` and of
    the new ones seen at more points (relative residual above ``_SPAN_RESIDUAL``), while that
    span is smaller than the input space: a contractive first layer's rows are independent,
    and a deeper neuron's hyperplane, flat where the units it reads keep their states (in a
    box, most of it for many units), has for its normal a combination of the active units'
    rows. On trained MNIST in [0, 1]^784, in a run traced before the flatness test across the
    first-layer hyperplanes (:func:`.layers.first_layer`), such a plane passed it after the
    32 true ones had been found."""
    d, keep = rows.shape[1], []
    basis = np.linalg.qr(rows.T)[0] if len(rows) else np.zeros((d, 0))
    for i in np.argsort([-len(m) for m in new.members], kind="stable"):
        row = new.rows[i]
        if basis.shape[1] < d and np.linalg.norm(row - basis @ (basis.T @ row)) \
                <= _SPAN_RESIDUAL * np.linalg.norm(row):
            continue
        keep.append(int(i))
        if basis.shape[1] < d:
            basis = np.linalg.qr(np.column_stack([basis, row]))[0]
    keep.sort()
    return Hyperplanes(new.rows[keep], new.offsets[keep], tuple(new.members[i] for i in keep))


def _refined_first(oracle: Oracle, planes: Hyperplanes, rng: np.random.Generator,
                   scale: float, executor: Any, refined: dict[int, tuple[Array, float, float]],
                   domain: Domain) -> tuple[Array, Array, Array]:
    """The first layer refined, orientation arbitrary: rows ``(h1, d)``, offsets and refit
    residuals ``(h1,)``. ``refined`` holds each plane refined on an earlier pass (by index, in
    the plane's own orientation), so that only new planes are refined again."""
    new = [i for i in range(len(planes.rows)) if i not in refined]
    rows, offsets, residuals = refit_first_layer(
        oracle, planes.rows[new], planes.offsets[new], rng, scale=scale, executor=executor,
        domain=domain)
    refined.update({i: (r, float(c), float(e))
                    for i, r, c, e in zip(new, rows, offsets, residuals, strict=True)})
    kept = [refined[i] for i in range(len(planes.rows))]
    return (np.array([r for r, _, _ in kept]), np.array([c for _, c, _ in kept]),
            np.array([e for *_, e in kept]))


def _one_layer(oracle: Oracle, found: CriticalPoints, planes: Hyperplanes, rows: Array,
               offsets: Array, rng: np.random.Generator, scale: float, width: int | None,
               domain: Domain) -> tuple[ReLUNetwork, tuple[Array, Array]] | None:
    """The network, when the first layer ``rows``, ``offsets`` is the last hidden layer and
    complete: the logits are affine in its activations and the inputs (its signs and the logit
    layer then follow from :func:`_logit_layer`, the inputs playing the layer below, with an
    affine term in the inputs where the logits do not fix a sign: ``h1 > K d``); also the
    answers it was fitted to. ``None`` otherwise (a deeper network, or a neuron not found
    yet). When ``hidden=`` gave one layer of ``width`` and the logits are not affine in the
    layer, raises :class:`_Incomplete` (fewer neurons found: one is missing) or
    :class:`~.result.ExtractionError` (all found: the victim is deeper)."""
    x = _fit_inputs(None, rows, [found.points[m] for m in planes.members], rng, scale, domain)
    y = np.asarray(oracle(x), dtype=np.float64)
    v, b, a, a0, skip, fit = _logit_layer(x, rows, offsets, y, width is None or
                                          len(rows) >= width)
    if fit <= _LAST_FIT:
        return ReLUNetwork(v, b, a, a0, {"extracted_by": "functional/deep"}, skip=skip), (x, y)
    if width is None:
        return None
    if len(rows) >= width:
        raise ExtractionError(
            f"the logits are not affine in the activations of the {len(rows)} first-layer "
            f"neurons found (relative residual {fit:.1e}, {oracle.queries} queries): the "
            f"victim has more hidden layers than hidden=({width},) says, or is not a ReLU "
            "network; omit hidden= to have the depth found")
    raise _Incomplete(f"the logits are not affine in the activations of the {len(rows)} "
                      f"first-layer neurons found, of the {width} of hidden= (relative "
                      f"residual {fit:.1e})", Prefix(((rows, offsets),)))


def _logit_layer(below: Array, rows: Array, biases: Array, y: Array, affine: bool,
                 ) -> tuple[Array, Array, Array, Array, Array | None, float]:
    """The last hidden layer ``rows`` ``(h, h_below)``, ``biases`` oriented and the logit layer
    fitted to the answers ``y`` ``(n, K)`` at inputs whose activations below it are ``below``
    ``(n, h_below)`` (:mod:`.lastlayer`), with an affine term in ``below`` (``skip``, ``(K,
    h_below)``, else ``None``) where the fit without it is not exact and, ``affine`` allowing
    (not when ``hidden=`` says the layer has more units than found: one is then missing), the
    fit with it is: a unit of the layer active wherever the attack queried (it has no critical
    point there), or orientations the logits leave open. Returns the oriented rows and biases,
    the logit weights ``(K, h)`` and biases ``(K,)``, ``skip`` and the largest relative
    residual of the fit returned."""
    v, b, a, a0, fit = orient_and_fit(below, rows, biases, y)
    if fit <= _LAST_FIT or not affine:
        return v, b, a, a0, None, fit
    a_s, a0_s, skip, fit_s = fit_with_affine(below, v, b, y)
    if fit_s <= _LAST_FIT:
        return v, b, a_s, a0_s, skip, fit_s
    return v, b, a, a0, None, fit


def _first_signs(found: CriticalPoints, planes: Hyperplanes, scale: float,
                 layer: tuple[Array, Array] | None = None) -> Array:
    """The first layer's orientations: every critical point off its hyperplanes (a deeper
    neuron's) votes (:func:`.signs.signs_from_next_layer`; :class:`~.result.ExtractionError`
    when ``h1 > d``).
    ``layer``: the rows and offsets to orient, with units active on the whole box after them
    (:func:`.layers.active_throughout`, oriented too: their parts make the deeper normals
    whole); default the hyperplanes'. Returns the signs of the hyperplanes' units."""
    rest = np.flatnonzero(~_on_planes(found, planes, scale))
    h, d = planes.rows.shape
    if h > d:
        raise _expansive_found(h, d)
    rows, offsets = (planes.rows, planes.offsets) if layer is None else layer
    return signs_from_next_layer(rows, offsets, found.points[rest],
                                 found.normals[rest])[0][:h]


def _first_prefix(found: CriticalPoints, planes: Hyperplanes, rows: Array, offsets: Array,
                  signs: Array | None, scale: float, domain: Domain) -> tuple[Prefix, list[int]]:
    """The first layer oriented by ``signs`` (``None``: in a box, by :func:`_boxed_signs`,
    with the units active on all of it after the rows), and those units' indices."""
    if signs is not None:
        return Prefix(((rows * signs[:, None], offsets * signs),)), []
    signs, linear, biases = _boxed_signs(found, planes, rows, offsets, scale, domain)
    return (Prefix(((np.vstack([rows * signs[:, None], linear]),
                     np.concatenate([offsets * signs, biases])),)),
            list(range(len(rows), len(rows) + len(linear))))


def _boxed_signs(found: CriticalPoints, planes: Hyperplanes, rows: Array, offsets: Array,
                 scale: float, domain: Domain) -> tuple[Array, Array, Array]:
    """The first layer's orientations in a box, and the rows and biases of the units active on
    all of it (:func:`.layers.active_throughout`, :func:`.signs.signs_beside_linear`; a unit
    neither side of which fits is oriented by the votes of :func:`_first_signs`)."""
    rest = ~_on_planes(found, planes, scale)
    h, d = rows.shape
    if h > d:
        raise _expansive_found(h, d)
    directions = active_throughout(found.normals[rest], rows, domain)
    signs, linear = signs_beside_linear(rows, offsets, directions, found.points[rest],
                                        found.normals[rest])
    linear, biases = held_active(linear, domain, scale)
    if not signs.all():
        votes = _first_signs(found, planes, scale, (np.vstack([rows, linear]),
                                                    np.concatenate([offsets, biases])))
        signs = np.where(signs == 0, votes, signs)
    return signs, linear, biases


def _layers(oracle: Oracle, found: CriticalPoints, planes: Hyperplanes, lines: list[Any],
            rng: np.random.Generator, phases: _Phases, search: tuple[float, float, int],
            hidden: tuple[int, ...] | None, executor: Any,
            refined: dict[int, tuple[Array, float, float]], kept: dict[int, Prefix],
            domain: Domain) -> tuple[CriticalPoints, ReLUNetwork, Array, tuple[Array, Array]]:
    """The first layer (see :func:`_refined_first` for ``refined``), every layer above it, one
    after the other (none for a one-hidden-layer network; see :func:`_kept` for ``kept``),
    and the logit layer: the points found, the network, the first layer's refit residuals (not
    a deeper layer's: they do not see the errors carried up from the layers below) and the
    answers the logit layer was fitted to (held for the self-check)."""
    scale, phases.known = search[0], ()
    # one hidden layer when hidden= says so or, without it, when almost every critical point
    # is on a first-layer hyperplane; a deeper network's first layer is oriented before its
    # refinement is paid for (ValueError when h1 > d)
    one = len(hidden) == 1 if hidden is not None else bool(
        np.mean(~_on_planes(found, planes, scale)) <= _UNEXPLAINED)
    signs = None if one or domain.bounded else _first_signs(found, planes, scale)
    phases.enter("refinement", len(planes.rows))
    rows, offsets, residuals = _refined_first(oracle, planes, rng, scale, executor, refined,
                                              domain)
    if one:
        phases.enter("last layer", len(rows))
        try:
            last = _one_layer(oracle, found, planes, rows, offsets, rng, scale,
                              None if hidden is None else hidden[0], domain)
        except _Incomplete as stop:
            stop.found = found
            raise
        if last is not None:
            return found, last[0], residuals, last[1]
        if len(rows) > found.points.shape[1]:  # expansive: as a first of several, refused
            raise _Incomplete(f"the logits are not affine in the activations of the "
                              f"{len(rows)} first-layer neurons found and the inputs: one is "
                              "missing, or the victim has more hidden layers, and an expansive "
                              "first layer of a deeper network is not extracted",
                              Prefix(((rows, offsets),)))
        signs = None if domain.bounded else _first_signs(found, planes, scale)
    prefix, linear = _first_prefix(found, planes, rows, offsets, signs, scale, domain)
    residuals = np.concatenate([residuals, np.full(len(linear), np.nan)])
    phases.known = prefix.widths
    try:
        while True:
            found, layer, partial = grow(oracle, found, prefix, lines, rng, phases, search,
                                         domain)
            if not len(layer.rows):
                raise _Incomplete(f"no neuron found above the layers of widths "
                                  f"{prefix.widths}", prefix)
            whole, layer = len(layer.rows), with_partial(layer, partial)
            phases.enter("refinement", len(layer.rows))
            v, b, _ = refit_next_layer(oracle, prefix, layer.rows, layer.biases,
                                       [found.points[m] for m in layer.members], rng,
                                       scale=scale, executor=executor, domain=domain)
            keep = distinct_with_partial(v, b, layer, whole, _room(hidden, prefix))
            # a weight never seen is 0 after the refit too, unless its points measured it
            v, b, unseen = v[keep], b[keep], ~layer.known[keep] & (v[keep] == 0)
            if unseen.any():  # measured where both units are active, if lines get there
                v = measure_unseen(oracle, prefix, v, b, unseen,
                                   [found.points[layer.members[i]] for i in keep], rng, scale,
                                   domain)
                unseen &= v == 0
            phases.enter("last layer", len(v))
            x_fit = _fit_inputs(prefix, v, [found.points[layer.members[i]] for i in keep], rng,
                                scale, domain)
            y_fit = np.asarray(oracle(x_fit), dtype=np.float64)
            v_o, b_o, a, a0, skip, fit = _logit_layer(prefix.top(x_fit), v, b, y_fit,
                                                      _may_be_whole(hidden, prefix, len(v)))
            if _is_last(found, prefix.then(v, b), fit, hidden, scale):
                meta = {"extracted_by": "functional/deep"} | (
                    {"active_throughout": linear} if linear else {}) | (
                    {"unseen_weights": np.argwhere(unseen).tolist()} if unseen.any() else {}
                ) | ({"guessed_signs": [list(p) for p in prefix.guessed]}
                     if prefix.guessed else {})
                network = ReLUNetwork(*prefix.layers[0], a, a0, meta, skip=skip,
                                      hidden_layers=(*prefix.layers[1:], (v_o, b_o)))
                return found, network, residuals, (x_fit, y_fit)
            if len(prefix.widths) >= _MAX_DEPTH:
                raise _Incomplete(f"no last hidden layer within {_MAX_DEPTH} layers", prefix)
            whole = ~unseen.any(axis=1)  # a middle layer takes whole rows only
            phases.enter("signs", int(whole.sum()))
            prefix = _kept(kept, oracle, prefix, v[whole], b[whole],
                           [found.points[layer.members[i]] for i in keep[whole]], rng, scale,
                           domain)
            phases.known = prefix.widths
    except _Incomplete as stop:  # the points found stay found
        stop.found = found
        raise


def _fit_inputs(prefix: Prefix | None, rows: Array, critical: list[Array],
                rng: np.random.Generator, scale: float, domain: Domain | None = None) -> Array:
    """Where the logits are fitted on a new layer ``rows`` ``(h, h_T)`` on top of ``prefix``
    (``None``: ``rows`` ``(h, d)`` is the first layer, the inputs playing the layer below):
    ``4 (Σ widths + h + 1)`` Gaussian points (``d`` for ``Σ widths`` on the first layer), and a
    point on either side of each neuron's hyperplane (``0.01 scale`` along its normal) at two
    of its ``critical`` points ``(m_i, d)``, so that a neuron active on a sliver of the
    Gaussian region is active at some of them (its logit weights are undetermined otherwise,
    and the self-check fails where it is active). In a bounded ``domain``, uniform points of
    its box for the Gaussian ones, and the points beside hyperplanes that are in it."""
    d = rows.shape[1] if prefix is None else prefix.layers[0][0].shape[1]
    below = d if prefix is None else sum(prefix.widths)
    many = 4 * (below + len(rows) + 1)
    gauss = spread(domain, rng, many, d, 1.0, scale)
    sides = []
    for row, points in zip(rows, critical, strict=True):
        x = points[rng.choice(len(points), min(2, len(points)), replace=False)]
        normal = (np.broadcast_to(row, x.shape) if prefix is None
                  else prefix.next_normals(x, row)[1])
        length = np.linalg.norm(normal, axis=1, keepdims=True)
        step = 0.01 * scale * normal / np.where(length > 0, length, np.inf)
        sides += [x + step, x - step]
    sides = sides if domain is None else [p[domain.contains(p)] for p in sides]
    return np.vstack([gauss, *sides])


def _room(hidden: tuple[int, ...] | None, prefix: Prefix) -> int | None:
    """The width ``hidden=`` gives the layer on top of ``prefix`` (``None``: not given)."""
    layer = len(prefix.widths)
    return None if hidden is None or layer >= len(hidden) else hidden[layer]


def _may_be_whole(hidden: tuple[int, ...] | None, prefix: Prefix, width: int) -> bool:
    """Whether a layer of ``width`` units found on top of ``prefix`` may be complete:
    ``hidden=`` gives no more units for it."""
    room = _room(hidden, prefix)
    return room is None or width >= room


def _is_last(found: CriticalPoints, prefix: Prefix, fit: float,
             hidden: tuple[int, ...] | None, scale: float) -> bool:
    """Whether the top layer of ``prefix`` is the last hidden layer: the depth given, or the
    logits affine in its activations, or (a layer missing neurons) no share of the critical
    points left on no known hyperplane. Raises :class:`~.result.ExtractionError` when the
    logits are affine in the activations of a layer that ``hidden`` says is not the last (the
    victim is shallower than ``hidden``: refused now, not after ``max_lines``)."""
    if hidden is not None:
        if fit <= _LAST_FIT and len(prefix.widths) < len(hidden):
            raise ExtractionError(
                f"the logits are affine in the activations of layer {len(prefix.widths)} "
                f"(found widths {prefix.widths}): the victim has {len(prefix.widths)} hidden "
                f"layers, not the {len(hidden)} of hidden={tuple(hidden)}")
        return len(prefix.widths) >= len(hidden)
    if fit <= _LAST_FIT:
        return True
    unexplained = np.min(prefix.distances(found.points), axis=1) > 1e-7 * scale
    return bool(unexplained.mean() <= _UNEXPLAINED)


def _kept(kept: dict[int, Prefix], oracle: Oracle, prefix: Prefix, rows: Array,
          biases: Array, critical: list[Array], rng: np.random.Generator, scale: float,
          domain: Domain) -> Prefix:
    """``prefix`` with its next middle layer oriented (:func:`_orient`, the same arguments), or
    the one ``kept`` from an earlier pass on the same layers below, where this pass cannot
    orient the layer (:class:`_Incomplete`) or orients fewer neurons than that one did (a layer
    that held still once stays found: a later pass's clustering, flatness tests and unseen
    weights, on more points, can lose a rare neuron). ``kept`` maps a layer (counted from 1) to
    the prefix that ends with it, the one with the most neurons so far, the latest on ties (its
    rows were refitted on the most points)."""
    layer = len(prefix.widths) + 1
    earlier = kept.get(layer)
    same = earlier is not None and all(
        np.array_equal(w, w_e) and np.array_equal(b, b_e)
        for (w, b), (w_e, b_e) in zip(prefix.layers, earlier.layers[:-1], strict=True))
    try:
        oriented = _orient(oracle, prefix, rows, biases, critical, rng, scale, domain)
    except _Incomplete:
        if same:
            return earlier
        raise
    if same and earlier.widths[-1] > oriented.widths[-1]:
        return earlier
    kept[layer] = oriented
    return oriented


def _orient(oracle: Oracle, prefix: Prefix, rows: Array, biases: Array, critical: list[Array],
            rng: np.random.Generator, scale: float, domain: Domain) -> Prefix:
    """A middle layer's neurons, oriented on top of ``prefix``: by preimages where the layer is
    contractive (:func:`.signs.signs_by_preimage`), by neuron wiggles (:mod:`.wiggle`, from
    each neuron's ``critical`` points) where it is expansive and for the neurons the preimages
    left undecided. Raises :class:`_Incomplete` when the probes show that a neuron of the
    layer is still missing, or when a sign is undecided."""
    layer = len(prefix.widths) + 1
    signs, guessed = np.zeros(len(rows)), np.zeros(len(rows), dtype=bool)
    if len(rows) <= min(prefix.widths):
        try:
            signs = signs_by_preimage(oracle, prefix, rows, biases, rng, bound=scale,
                                      domain=domain)
        except ValueError as err:  # dependent rows: a neuron seen as two, or a wrong one
            raise _Incomplete(f"layer {layer}: {err}", prefix) from err
    if not np.isnan(signs).any() and not signs.all():
        signs, guessed = signs_by_wiggle(oracle, prefix, rows, biases, critical, rng,
                                         scale=scale, known=signs, domain=domain)
    if np.isnan(signs).any():
        raise _Incomplete(f"layer {layer} is missing neurons (its {len(rows)} neurons found "
                          "do not hold the layer still)", prefix)
    if not signs.all():
        raise _Incomplete(f"the signs of {int(np.sum(signs == 0))} of the {len(rows)} neurons "
                          f"of layer {layer} could not be decided (a neuron of the layer not "
                          "found yet moves in the probes)", prefix)
    return prefix.then(rows * signs[:, None], biases * signs, np.flatnonzero(guessed))
