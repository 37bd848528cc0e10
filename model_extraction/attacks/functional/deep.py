"""Functionally-equivalent extraction of a two-hidden-layer ReLU network, black box end to end
(after Carlini, Jagielski and Mironov, CRYPTO 2020), in the paper's setting (any float64 input).

The phases, one module each:

1. critical points and their hyperplanes' normals along random lines (:mod:`.critical`);
2. the first layer: the hyperplanes that are flat everywhere (:mod:`.layers`);
3. its signs, from the second layer's critical points (:func:`.signs.signs_from_next_layer`:
   needs a contractive first layer, ``h1 ≤ d``);
4. the second layer's signatures in the first layer's basis, joined across regions and refitted
   through their critical points (:mod:`.signatures`); more lines until every row is known;
5. precision refinement: every hyperplane refitted through points placed on it
   (:mod:`.refinement`);
6. the second layer's signs and the logit layer, by least squares (:mod:`.lastlayer`);
7. the self-check (:mod:`.selfcheck`): the model must match fresh answers to 1e-6, or
   :class:`~.result.ExtractionError` is raised.

Every query goes through the oracle and is counted; nothing reads the victim's weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model_extraction.network import ReLUNetwork
from model_extraction.oracle import Oracle, as_oracle

from .critical import CriticalPoints, find_critical_points, random_line
from .lastlayer import orient_and_fit
from .layers import Hyperplanes, first_layer
from .refinement import refit_first_layer, refit_next_layer
from .result import ExtractionError, ExtractionResult, PhaseCost
from .selfcheck import self_check
from .signatures import Signatures, next_layer
from .signs import signs_from_next_layer

Array = NDArray[np.float64]

__all__ = ["extract_deep"]

_FIRST_LINES = 24
_MORE_LINES = 16


class _Phases:
    """Queries and seconds per phase, and the progress callback."""

    def __init__(self, oracle: Oracle, progress: Callable[..., None] | None) -> None:
        self.oracle, self.progress, self.costs = oracle, progress, {}
        self._mark: tuple[str, int, float] | None = None

    def enter(self, name: str, units: int = 0) -> None:
        self.leave()
        self._mark = (name, self.oracle.queries, time.perf_counter())
        if self.progress is not None:
            self.progress(name, self.oracle.queries, units, None)

    def leave(self) -> None:
        if self._mark is not None:
            name, q, t = self._mark
            cost = self.costs.setdefault(name, PhaseCost())
            cost.queries += self.oracle.queries - q
            cost.seconds += time.perf_counter() - t
            self._mark = None


def _on_planes(found: CriticalPoints, planes: Hyperplanes, scale: float) -> NDArray[np.bool_]:
    """Which critical points lie on one of the first layer's hyperplanes."""
    if not len(planes.rows):
        return np.zeros(len(found), dtype=bool)
    dist = np.abs(found.points @ planes.rows.T + planes.offsets)
    same = np.abs(np.abs(found.normals @ planes.rows.T) - 1) < 1e-5
    return np.any((dist < 1e-7 * scale) & same, axis=1)


def _second_layer(found: CriticalPoints, rows: Array, offsets: Array,
                  rest: NDArray[np.int64]) -> Signatures:
    below = np.maximum(found.points[rest] @ rows.T + offsets, 0.0)
    coef, *_ = np.linalg.lstsq(rows.T, found.normals[rest].T, rcond=None)
    return next_layer(below, coef.T, rest)


def _t_range(reach: float) -> tuple[float, float]:
    """The search interval of each line, asymmetric so that its origin is not a grid point."""
    return -reach, 0.83 * reach


def _bits(residuals: Array) -> float:
    r = residuals[np.isfinite(residuals)]
    return float(-np.log2(max(float(r.max()), 2.0**-60))) if r.size else float("nan")


def extract_deep(
    oracle: Any, *, input_dim: int | None = None, hidden: tuple[int, int] | None = None,
    scale: float = 1.0, reach: float | None = None, seed: int = 0, max_lines: int = 256,
    check_points: int = 256,
    check_tolerance: float = 1e-6, progress: Callable[..., None] | None = None,
    executor: Any = None,
) -> ExtractionResult:
    """Extract a ``d → h1 → h2 → K`` ReLU network from its float64 logits.

    ``oracle``: an :class:`~model_extraction.oracle.Oracle`, a network or a callable
    ``(n, d) → (n, K)``; ``hidden``: the widths, if known (only a check: the attack finds them);
    ``scale``: the spread of the queries (lines through Gaussian points of standard deviation
    ``scale / 2``); ``reach``: how far each line is searched (``t ∈ [-reach, 0.83 reach]``,
    default ``4 scale``; a line meets a hyperplane at ``t ~ (n·o + c) / (n·v)`` with
    ``n·v ~ 1/√d``, so trained high-dimensional victims need more); ``max_lines``: a hard bound;
    ``executor``: a :class:`model_extraction.sweep.Executor` (``make_executor("local")`` for a
    Ray instance on this machine): the per-neuron refinement runs as its tasks, on copies of
    the oracle (it must be picklable), with the same results and the same query count.

    Raises :class:`~.result.ExtractionError` when the self-check fails or the widths found differ
    from ``hidden``, ``ValueError`` for an expansive first layer (``h1 > d``: sign recovery by
    neuron wiggle is not implemented), and the oracle's errors (budget, precision).
    """
    oracle = as_oracle(oracle, input_dim=input_dim)
    d = input_dim if input_dim is not None else oracle.input_dim
    if d is None:
        raise ValueError("input_dim is required: the oracle does not say its number of inputs")
    rng = np.random.default_rng(seed)
    reach = 4.0 * scale if reach is None else reach
    phases = _Phases(oracle, progress)
    phases.enter("critical points")
    lines = [random_line(rng, d, scale) for _ in range(_FIRST_LINES)]
    found = find_critical_points(oracle, lines, t_range=_t_range(reach))
    planes = Hyperplanes(np.zeros((0, d)), np.zeros(0), ())
    while True:
        phases.enter("first layer")
        planes = _more_planes(oracle, found, planes, rng, scale)
        found, second, signs = _grow(oracle, found, planes, lines, rng, phases, scale, reach,
                                     max_lines)
        phases.enter("refinement", len(planes.rows) + len(second.rows))
        network, residuals, held = _build(oracle, found, planes, signs, second, rng, scale,
                                          executor)
        phases.enter("self-check", sum(network.widths))
        fresh = rng.standard_normal((check_points, d)) * scale
        check, _, _ = self_check(oracle, network, fresh, *held, check_tolerance)
        if check.passed or len(lines) >= max_lines:
            break
        phases.enter("critical points", sum(network.widths))
        more = [random_line(rng, d, scale) for _ in range(_MORE_LINES)]
        found = found.join(find_critical_points(oracle, more, first_line=len(lines),
                                                t_range=_t_range(reach)))
        lines += more
    phases.leave()
    if not check.passed:
        raise ExtractionError(
            f"the extracted {d}-{'-'.join(map(str, network.widths))}-{network.num_outputs} "
            f"network misses the oracle by a relative {check.max_error:.1e} (tolerance "
            f"{check_tolerance:.0e}) after {len(lines)} lines and {oracle.queries} queries: not "
            "returned. More lines (max_lines=) or a wider reach (reach=) may help.")
    if hidden is not None and tuple(hidden) != network.widths:
        raise ExtractionError(f"found widths {network.widths}, not the {tuple(hidden)} given")
    return ExtractionResult(
        network=network, mode="deep", queries=oracle.queries, phases=phases.costs,
        lines=len(lines), estimated_bits=np.array([_bits(r) for r in residuals]),
        notes=[], check=check.as_dict())


def _more_planes(oracle: Oracle, found: CriticalPoints, planes: Hyperplanes,
                 rng: np.random.Generator, scale: float) -> Hyperplanes:
    """``planes`` plus the first-layer hyperplanes among the points not on one of them."""
    free = np.flatnonzero(~_on_planes(found, planes, scale))
    new = first_layer(oracle, found.subset(free), rng, scale=scale)
    if not len(planes.rows) and not len(new.rows):
        raise ExtractionError(f"no first-layer hyperplane found ({oracle.queries} queries): is "
                              "the victim a ReLU network?")
    return Hyperplanes(np.concatenate([planes.rows, new.rows]),
                       np.concatenate([planes.offsets, new.offsets]),
                       planes.members + tuple(free[m] for m in new.members))


def _build(oracle: Oracle, found: CriticalPoints, planes: Hyperplanes, signs: Array,
           second: Signatures, rng: np.random.Generator, scale: float,
           executor: Any) -> tuple[ReLUNetwork, list[Array], tuple[Array, Array]]:
    """Refinement, the last layer's signs and the logit layer: the network, the refits'
    residuals per layer, and the answers the logit layer was fitted to (held for the check)."""
    if not len(second.rows):
        raise ExtractionError(
            f"no second hidden layer seen ({oracle.queries} queries): a one-hidden-layer "
            "network is extracted by extract_functional")
    rows, offsets, first_residuals = refit_first_layer(
        oracle, planes.rows * signs[:, None], planes.offsets * signs, rng, scale=scale,
        executor=executor)
    v, b, second_residuals = refit_next_layer(
        oracle, (rows, offsets), second.rows, second.biases,
        [found.points[m] for m in second.members], rng, scale=scale, executor=executor)
    d = rows.shape[1]
    x_fit = rng.standard_normal((4 * (len(rows) + len(v) + 1), d)) * scale
    y_fit = np.asarray(oracle(x_fit), dtype=np.float64)
    v, b, a, a0, _ = orient_and_fit(np.maximum(x_fit @ rows.T + offsets, 0.0), v, b, y_fit)
    network = ReLUNetwork(rows, offsets, a, a0, {"extracted_by": "functional/deep"},
                          hidden_layers=((v, b),))
    return network, [first_residuals, second_residuals], (x_fit, y_fit)


def _grow(oracle: Oracle, found: CriticalPoints, planes: Hyperplanes, lines: list[Any],
          rng: np.random.Generator, phases: _Phases, scale: float, reach: float,
          max_lines: int) -> tuple[CriticalPoints, Signatures, Array]:
    """Signs of the first layer and the second layer's signatures, with more lines until every
    second-layer row is known on every first-layer unit and a batch of lines found no new
    neuron (or ``max_lines``)."""
    d = found.points.shape[1]
    before = -1
    while True:
        phases.enter("signatures", len(planes.rows))
        rest = np.flatnonzero(~_on_planes(found, planes, scale))
        signs, inside = signs_from_next_layer(planes.rows, planes.offsets,
                                              found.points[rest], found.normals[rest])
        second = _second_layer(found, planes.rows * signs[:, None], planes.offsets * signs,
                               rest[inside])
        complete = len(second.rows) == before and second.known.all()
        if complete or len(lines) >= max_lines:
            break
        before = len(second.rows)
        phases.enter("critical points", len(planes.rows))
        more = [random_line(rng, d, scale) for _ in range(_MORE_LINES)]
        found = found.join(find_critical_points(oracle, more, first_line=len(lines),
                                                t_range=_t_range(reach)))
        lines += more
    return found, second, signs
