"""Functionally-equivalent extraction of one-hidden-layer ReLU networks (Jagielski et al. 2020, §6).

The four phases of §6.2 — critical-point search, weight recovery, global sign recovery, last
layer — in two modes:

``"default"``
    Critical points from batched 2-linearity tests along random lines (the grid split at the
    midpoints between the crossings of the units already known; a line that shows nothing new
    searched on further out); each unit's signed row from a rank-one fit of the difference of
    the Jacobians of the two regions beside its critical point (regions shared by neighbouring
    critical points are measured once, and a region separated from a measured one only by
    known units' critical points is derived from it without a query); steps sized from the
    gap to the neighbouring critical points, with probes that crossed another hyperplane
    detected by the fit and measured again (unless clean fits of the same regions vouch for
    them: two critical points merged into one are skipped without re-measuring their
    neighbours); units already known are recognised on later lines without
    a query; the least precise units re-measured where their hyperplane is furthest from all
    others; then all rows and output vectors fitted jointly to every Jacobian measured (no
    query; a unit keeps its estimate unless the fit claims a smaller error); signs from the
    Jacobians already measured; output weights from the Jacobian jumps, and an affine term from
    the Jacobians where one is needed (:mod:`.affine`); then the self-check (:mod:`.selfcheck`).
    Queries stay inside ``input_bounds`` (:mod:`.domain`) unless ``stay_in_bounds=False``. The
    number of hidden units is found, not given.
``"paper"``
    The reference: Algorithm 1 interval by interval over ``t ∈ [-h², h²]``, absolute values
    from second differences along each ``e_j`` (§6.4.1), entry signs from ``e_ref + e_j``
    (§6.4.2), global signs through the null space of the recovered rows (§6.5), last layer by
    least squares (§6.6).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from model_extraction.network import ReLUNetwork
from model_extraction.oracle import BudgetExhaustedError, Oracle, as_oracle

from .affine import fit_output_layer
from .checks import BentHyperplanesError, OracleMismatchError, check_logit_oracle
from .domain import Domain
from .jacobian import jacobian_columns, jacobians, room_from
from .polish import polish_layers
from .result import ExtractionError, ExtractionResult, PhaseCost
from .rows import RowFit, fit_row
from .search import Kink, Line, LineSearchStats, search_line, search_line_paper
from .selfcheck import SelfCheck, self_check
from .signs import fit_last_layer, signs_from_jacobians, signs_from_nullspace

Array = NDArray[np.float64]
ProgressFn = Callable[[str, int, int, int | None], None]

__all__ = ["FunctionalExtraction", "extract_functional"]

# A region's Jacobian is derived from a measured one across at most this many known critical
# points, each of a unit whose row is known to this mean absolute error (about 36 bits). The
# error each crossed unit carries over goes into the new unit's estimate (so the refinement
# picks it up if it matters).
_MAX_CROSSED = 8
_TRUSTED_ERROR = 2.0**-36
# A Jacobian difference this close to rank one (estimated row error) is one ReLU's.
_CLEAN_FIT = 1e-9
# A line whose stretch t ∈ [-1, 1] shows no new unit is searched on out to |t| = _OUTER, with
# _OUTER_GRID initial intervals on each side (see _Run._critical_points).
_OUTER = 8.0
_OUTER_GRID = 16
# Equal initial intervals of t ∈ [-1, 1]; the midpoints between known units' crossings are added.
_GRID = 32
# A victim that is not a one-hidden-layer ReLU network on the domain is refused once this many
# critical points sat where a known unit crosses the line but with another slope change (a
# hyperplane that bends: a deeper network, or an API that clips or transforms its inputs), and
# they are more than _BENT_SHARE of the critical points of known units seen so far.
_BENT = 4
_BENT_SHARE = 0.05
# A model that fails its self-check is repaired at most _REPAIRS times, each with at most
# _REPAIR_LINES lines through points it failed on.
_REPAIRS = 3
_REPAIR_LINES = 8


def _meeting_point(ya: Array, ma: Array, yb: Array, mb: Array, ta: float, tb: float) -> float:
    """Where the affine pieces ``ya + ma (t - ta)`` and ``yb + mb (t - tb)`` meet (least
    squares over the outputs): the critical point between two measured regions."""
    dm = ma - mb
    return ta + float((yb - ya - mb * (tb - ta)) @ dm) / float(dm @ dm)


def _slope_mismatch(fit: RowFit, line: Line, kink: Kink) -> float:
    """Relative gap between the slope change the line search saw at ``kink`` and the one the
    fitted unit predicts along ``line`` (``g · (r·v)``)."""
    seen = kink.slope_change
    gap = float(np.linalg.norm(fit.out * float(fit.row @ line.direction) - seen))
    scale = float(np.linalg.norm(seen))
    return gap / scale if scale > 0 else (np.inf if gap > 0 else 0.0)


def _signed_steps(size: Array, forward: Array, backward: Array) -> Array:
    """Steps of at most ``size`` and at most half the room ahead, forwards unless there is
    more room behind than in front (then backwards, negative)."""
    back = (0.5 * forward < size) & (backward > forward)
    # A floor keeps a point that lies on a known hyperplane (no room either way) from a zero
    # step; its probe then crosses, and the checks downstream see it.
    ahead = np.maximum(np.minimum(size, 0.5 * forward), 1e-9 * size)
    behind = np.maximum(np.minimum(size, 0.5 * backward), 1e-9 * size)
    return np.where(back, -behind, ahead)


@dataclass
class _Units:
    """Units recovered so far (unit-norm rows ``r``, biases ``β``, output vectors ``g``)."""

    rows: list[Array] = field(default_factory=list)
    biases: list[float] = field(default_factory=list)
    outs: list[Array] = field(default_factory=list)
    points: list[Array] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, row: Array, bias: float, out: Array, point: Array, error: float) -> bool:
        """Add a unit, or keep the more precise copy if the same hyperplane is already known."""
        for n, (r, b) in enumerate(zip(self.rows, self.biases, strict=True)):
            c = float(r @ row)
            if abs(c) > 1 - 1e-6 and abs(np.sign(c) * b - bias) <= 1e-3 * (1 + abs(bias)):
                if error < self.errors[n]:
                    sign = float(np.sign(c))
                    self.rows[n], self.biases[n] = sign * row, sign * bias
                    # g = J(y > 0) - J(y < 0) does not change when the row is flipped.
                    self.outs[n], self.points[n], self.errors[n] = out, point, error
                return False
        self.rows.append(row)
        self.biases.append(bias)
        self.outs.append(out)
        self.points.append(point)
        self.errors.append(error)
        return True


@dataclass(frozen=True, kw_only=True)
class FunctionalExtraction:
    """Functionally-equivalent extraction (§6), configured once and run on an oracle.

    Parameters
    ----------
    mode:
        ``"default"`` (this project's improved attack) or ``"paper"`` (the reference).
    hidden:
        Number of hidden units, if known; it is then only a check (default mode) or the stopping
        rule (paper mode, which needs it for its ``[-h², h²]`` range and stops at ``h`` units).
    input_bounds:
        The box ``[lo, hi]^d`` the API accepts (MNIST: ``(0, 1)``). Default mode keeps every
        query inside it, finite-difference probes included, and extracts the victim on it.
    stay_in_bounds:
        Default mode: ``False`` restores the paper's setting (§6.1: any float64 input; lines run
        far outside the box, which then only sets the scale). Paper mode always queries so.
    reference_inputs:
        Optional ``(n, d)`` natural inputs the attacker holds (unlabelled, inside the box): two
        lines in three then pass through them (see :meth:`.domain.Domain.random_line`), so that
        the hyperplanes that matter where the data lives are crossed (on MNIST many never meet a
        line through the centre of the box), and half the self-check's points are taken there.
    check_points:
        Fresh in-domain queries of the self-check (plus the answers already held).
    check_tolerance:
        Largest error the self-check accepts, relative to ``max(1, max |answer|)``; a model that
        misses it is repaired (lines through the points it failed on) up to ``_REPAIRS`` times,
        then refused with :class:`ExtractionError`.
    seed:
        Seed of the random lines.
    max_lines:
        Hard bound on the number of lines searched (the attack never loops forever).
    patience:
        Default mode: stop after this many consecutive lines that reveal no new unit.
    step_fraction:
        Default mode: finite-difference step as a fraction of the distance to the neighbouring
        critical points on the line.
    refine_bits:
        Default mode: once every hyperplane is approximately known, measure again each unit
        whose estimated precision is below this many bits, at the point of its hyperplane that
        is furthest from all others and with the largest steps that stay in one linear region
        (2(d + 1) queries per unit). ``0`` turns the refinement off.
    refine_share:
        Default mode: the refinement spends at most this fraction of the queries already spent,
        on the least precise units first.
    polish:
        Default mode: finally fit all rows and output vectors jointly to every Jacobian measured
        (:func:`~model_extraction.attacks.functional.polish.polish_layers`; no query, about
        1.5 s at ``h = 128`` and up to a minute at ``h = 512`` on a 2-core CPU).
    """

    mode: Literal["default", "paper"] = "default"
    hidden: int | None = None
    input_bounds: tuple[float, float] = (0.0, 1.0)
    seed: int = 0
    max_lines: int = 64
    patience: int = 4
    step_fraction: float = 0.25
    refine_bits: float = 40.0
    refine_share: float = 0.25
    check_oracle: bool = True
    polish: bool = True
    stay_in_bounds: bool = True
    reference_inputs: Any = None
    check_points: int = 256
    check_tolerance: float = 1e-6

    def __post_init__(self) -> None:
        if self.mode not in ("default", "paper"):
            raise ValueError(f"mode must be 'default' or 'paper', got {self.mode!r}")
        if self.hidden is not None and self.hidden < 1:
            raise ValueError(f"hidden must be a positive number of units, got {self.hidden}")
        lo, hi = self.input_bounds
        if not hi > lo:
            raise ValueError(f"input_bounds must be (low, high) with low < high, got {lo, hi}")
        if self.mode == "paper" and self.hidden is None:
            raise ValueError("paper mode needs hidden=h (it searches t in [-h², h²] as §6.3 does)")
        if self.refine_bits < 0 or self.refine_share < 0:
            raise ValueError("refine_bits and refine_share must be non-negative")
        if self.max_lines < 1 or self.patience < 1 or not 0 < self.step_fraction <= 1:
            raise ValueError("max_lines, patience >= 1 and 0 < step_fraction <= 1 are required")
        if self.check_points < 0 or not self.check_tolerance > 0:
            raise ValueError("check_points >= 0 and check_tolerance > 0 are required")

    # ------------------------------------------------------------------ run
    def run(
        self, oracle: Any, *, input_dim: int | None = None, progress: ProgressFn | None = None
    ) -> ExtractionResult:
        """Extract the victim behind ``oracle``.

        ``oracle`` is an :class:`~model_extraction.oracle.Oracle`, a network, or any callable
        mapping an ``(n, d)`` float64 array to ``(n, K)`` float64 logits. ``input_dim`` is
        required when the oracle does not know ``d``. ``progress(phase, queries, units, h)`` is
        called as the attack goes.
        """
        oracle = as_oracle(oracle, input_dim=input_dim)
        d = input_dim if input_dim is not None else oracle.input_dim
        if d is None:
            raise ValueError("input_dim is required: the oracle does not say its number of inputs")
        if oracle.input_dim is None:
            oracle.input_dim = d
        reference = self._reference(d)
        run = _Run(self, oracle, d, progress, reference)
        try:
            return run.execute()
        except BudgetExhaustedError as err:
            raise BudgetExhaustedError(
                err.budget, err.used, err.requested, progress=run.where()
            ) from None

    def _reference(self, d: int) -> Array | None:
        """The reference inputs as a validated ``(n, d)`` float64 array inside the box."""
        if self.reference_inputs is None:
            return None
        ref = np.asarray(self.reference_inputs, dtype=np.float64)
        ref = ref.reshape(len(ref), -1) if ref.ndim > 2 else ref
        lo, hi = self.input_bounds
        if ref.ndim != 2 or ref.shape[1] != d or len(ref) < 2:
            raise ValueError(f"reference_inputs must be at least 2 rows of {d} inputs; got "
                             f"shape {ref.shape}")
        if not np.all(np.isfinite(ref)) or ref.min() < lo or ref.max() > hi:
            raise ValueError(f"reference_inputs must be finite and inside input_bounds "
                             f"{self.input_bounds}; scale them as the API expects")
        return ref


def extract_functional(
    oracle: Any,
    *,
    input_dim: int | None = None,
    hidden: int | tuple[int, ...] | None = None,
    mode: Literal["default", "paper"] = "default",
    input_bounds: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
    progress: ProgressFn | None = None,
    **options: Any,
) -> ExtractionResult:
    """Functionally-equivalent extraction (§6) as one function call.

    See :class:`FunctionalExtraction` for the parameters. ``hidden`` may also be the widths
    ``(h1, …, hL)`` of two or more hidden layers: :func:`~.deep.extract_deep` then runs, in the
    paper's setting only (``stay_in_bounds=False``). Without ``hidden``, in that setting, a
    victim whose hyperplanes bend (the one-layer attack's
    :class:`~.checks.BentHyperplanesError`) is extracted as a deep network, the queries already
    spent counted, and a note says so.
    """
    widths = None if hidden is None or isinstance(hidden, int) else tuple(hidden)
    if widths is not None and len(widths) == 1:
        hidden, widths = widths[0], None
    deep_ok = mode == "default" and options.get("stay_in_bounds", True) is False
    if widths is not None:
        if not deep_ok:
            raise ValueError("hidden=(h1, h2, ...) needs mode='default' and stay_in_bounds=False:"
                             " deep networks are extracted in the paper's setting only")
        return _deep(oracle, input_dim, widths, input_bounds, seed, progress, options)
    attack = FunctionalExtraction(
        mode=mode, hidden=hidden, input_bounds=input_bounds, seed=seed, **options
    )
    oracle = as_oracle(oracle, input_dim=input_dim)
    try:
        return attack.run(oracle, input_dim=input_dim, progress=progress)
    except BentHyperplanesError as err:
        if not deep_ok or hidden is not None:
            raise
        spent = oracle.queries
        try:
            result = _deep(oracle, input_dim, None, input_bounds, seed, progress, options)
        except ExtractionError as deep_err:
            raise ExtractionError(f"{err} Extracted as a deep network instead: "
                                  f"{deep_err}") from deep_err
        result.notes.insert(0, f"the one-hidden-layer attack found bent hyperplanes after "
                               f"{spent:,} queries (counted): extracted as a deep network")
        return result


def _deep(oracle: Any, input_dim: int | None, widths: tuple[int, ...] | None,
                bounds: tuple[float, float], seed: int, progress: ProgressFn | None,
                options: dict[str, Any]) -> ExtractionResult:
    from .deep import extract_deep

    keep = {k: options[k] for k in ("check_points", "check_tolerance") if k in options}
    return extract_deep(oracle, input_dim=input_dim, hidden=widths,  # type: ignore[arg-type]
                        scale=bounds[1] - bounds[0], seed=seed, progress=progress, **keep)


class _Run:
    """State of one extraction (phases, costs, the units found)."""

    def __init__(self, cfg: FunctionalExtraction, oracle: Oracle, d: int,
                 progress: ProgressFn | None, reference: Array | None = None) -> None:
        self.cfg, self.oracle, self.d = cfg, oracle, d
        self.reference = reference
        lo, hi = cfg.input_bounds
        self.domain = Domain(lo, hi, d, bounded=cfg.stay_in_bounds and cfg.mode == "default")
        self.bent = self.matched = 0
        self.rng = np.random.default_rng(cfg.seed)
        self.keep_rng = np.random.default_rng([cfg.seed, 1])
        self.progress = progress
        self.phases: dict[str, PhaseCost] = {}
        self.phase = "start"
        self.units = _Units()
        self.lines = 0
        self.notes: list[str] = []
        self.centre = self.domain.centre
        self.width = self.domain.width
        # Every answered query that the last layer may reuse (§6.6).
        self.seen_x: list[Array] = []
        self.seen_y: list[Array] = []
        self.jac_points: list[Array] = []
        self.jacs: list[Array] = []
        self.jac_steps: list[Array] = []

    # ---------------------------------------------------------------- helpers
    def where(self) -> str:
        return (
            f"The attack was in phase '{self.phase}' after {self.lines} lines, with "
            f"{len(self.units)} hidden units recovered."
        )

    def _tick(self) -> None:
        if self.progress is not None:
            self.progress(self.phase, self.oracle.queries, len(self.units), self.cfg.hidden)

    def _enter(self, phase: str) -> tuple[str, int, float]:
        self.phase = phase
        self._tick()
        return phase, self.oracle.queries, time.perf_counter()

    def _leave(self, mark: tuple[str, int, float]) -> None:
        phase, q0, t0 = mark
        cost = self.phases.setdefault(phase, PhaseCost())
        cost.queries += self.oracle.queries - q0
        cost.seconds += time.perf_counter() - t0
        self._tick()

    def _random_line(self, length: float) -> Line:
        origin = self.centre + self.rng.uniform(-0.25, 0.25, self.d) * self.width
        direction = self.rng.standard_normal(self.d)
        direction *= length / np.linalg.norm(direction)
        return Line(origin, direction)

    # ------------------------------------------------------------------ main
    def execute(self) -> ExtractionResult:
        mark = self._enter("check")
        if self.cfg.check_oracle:
            check_logit_oracle(self.oracle, self.d, self.centre, self.width, self.rng,
                               margin=0.05 if self.domain.bounded else 0.0)
        self._leave(mark)
        if self.cfg.mode == "paper":
            self._paper_rows()
        else:
            self._find_units()
        network = self._build()
        check, lines = self._self_check(network)
        repairs = 0
        while (not check.passed and self.cfg.mode == "default" and repairs < _REPAIRS
               and self.lines < self.cfg.max_lines):
            # A unit was missed, most likely: search the lines from the points where the
            # model is wrong to points where it is right (its hyperplane lies between).
            repairs += 1
            self.notes.append(f"the self-check found a relative error of {check.max_error:.1e};"
                              f" searched {len(lines)} lines through the points it failed on")
            self._default_rows(lines)
            self._improve()
            network = self._build()
            check, lines = self._self_check(network)
        if not check.passed:
            raise ExtractionError(
                f"the extracted model disagrees with the oracle: relative error "
                f"{check.max_error:.1e} on {check.points} fresh in-domain points and "
                f"{check.answers} answers already held, above the {check.tolerance:.0e} it must "
                f"meet ({len(self.units)} units found in {self.lines} lines, "
                f"{self.oracle.queries} queries). The victim may not be a one-hidden-layer ReLU "
                "network on this input domain, or units were missed: raise max_lines, give "
                "reference_inputs, or check input_bounds."
            )
        if self.domain.bounded and self.reference is None:
            self.notes.append("verified on uniform points of the box only: units that change "
                              "state only near natural data (far from the box's bulk) cannot be "
                              "seen without reference_inputs")
        errors = np.maximum(np.array(self.units.errors), 2.0**-60)
        return ExtractionResult(
            network=network,
            mode=self.cfg.mode,
            queries=sum(p.queries for p in self.phases.values()),
            phases=self.phases,
            lines=self.lines,
            estimated_bits=-np.log2(errors),
            notes=self.notes,
            check=check.as_dict(),
        )

    def _find_units(self) -> None:
        """Default mode: critical points and rows, then refinement and joint polish."""
        self._default_rows()
        self._improve()

    def _improve(self) -> None:
        if self.cfg.refine_bits > 0 and len(self.units) > 0:
            mark = self._enter("refinement")
            self._refine()
            self._leave(mark)
        if self.cfg.polish and len(self.units) > 0:
            mark = self._enter("polish")
            self._polish()
            self._leave(mark)

    def _check_units(self) -> None:
        """Refuse a run that found no unit (paper mode), or a number other than ``hidden=``."""
        if not len(self.units) and self.cfg.mode == "paper":
            raise ExtractionError(
                "no hidden unit was found: the victim looks affine along every line searched "
                "(a network with no active ReLU cannot be told from a linear model)"
            )
        if self.cfg.hidden is not None and len(self.units) != self.cfg.hidden:
            raise ExtractionError(
                f"found {len(self.units)} distinct hidden units, but hidden={self.cfg.hidden} was "
                f"given, after {self.lines} lines (the bound is max_lines={self.cfg.max_lines}). "
                "Check h, or raise max_lines; units whose outgoing weights are all zero are "
                "invisible to any query, and a unit whose hyperplane does not meet the input box "
                "is constant on it (the model's affine term carries it): leave hidden unset."
            )

    def _signs(self, rows: Array, biases: Array, outs: Array, pick: NDArray[np.int64]) -> Array:
        """Global signs (§6.5): the null-space steps in paper mode; in default mode votes of the
        Jacobians already measured, where the rows are independent (elsewhere the affine term
        makes any orientation exact, and the rows keep the one they were found with)."""
        if self.cfg.mode == "paper":
            if np.linalg.matrix_rank(rows) < len(rows):
                raise ExtractionError(
                    "the recovered rows are linearly dependent; paper mode's sign recovery "
                    "(§6.5) assumes h < d independent rows. Use the default mode."
                )
            points = np.array(self.units.points)
            values = np.asarray(self.oracle(points), dtype=np.float64)
            self._remember(points, values)
            return signs_from_nullspace(self.oracle, rows, points, values, 1e-3 * self.width)
        if np.linalg.matrix_rank(rows) < len(rows):
            self.notes.append("the rows are linearly dependent (h > d, or inputs that never "
                              "vary): unit orientations left as found; the affine term makes "
                              "the model exact")
            return np.ones(len(rows))
        # Every Jacobian votes on every unit's sign; a few hundred votes per unit decide it
        # (the votes are 0 or 1 up to rounding), so large victims use a random subset (pick).
        signs, confidence = signs_from_jacobians(
            rows, biases, outs, np.array([self.jac_points[i] for i in pick]),
            np.array([self.jacs[i] for i in pick]),
        )
        weak = int(np.sum(confidence < 0.5))
        if weak:
            self.notes.append(f"{weak} unit signs were decided with low confidence")
        return signs

    def _jacobian_subset(self) -> NDArray[np.int64]:
        """At most 512 of the Jacobians measured, at random: enough for signs and ``S``."""
        pick = np.arange(len(self.jacs))
        if len(pick) > 512:
            pick = np.sort(self.keep_rng.choice(len(pick), 512, replace=False))
        return pick

    def _build(self) -> ReLUNetwork:
        """Signs and last layer of the units found: the extracted network."""
        self._check_units()
        if not len(self.units):
            self._measure_affine()
        rows = np.array(self.units.rows).reshape(-1, self.d)
        biases = np.array(self.units.biases)
        k = np.asarray(self.seen_y[0]).shape[1]
        outs = np.array(self.units.outs).reshape(len(rows), k)
        pick = self._jacobian_subset()
        mark = self._enter("signs")
        signs = self._signs(rows, biases, outs, pick) if len(rows) else np.ones(0)
        self._leave(mark)

        mark = self._enter("last layer")
        w0, b0 = rows * signs[:, None], biases * signs
        x, y = np.concatenate(self.seen_x), np.concatenate(self.seen_y)
        if len(x) > 20 * (len(rows) + 1) + 2000:
            pick = self.rng.choice(len(x), 20 * (len(rows) + 1) + 2000, replace=False)
            x, y = x[pick], y[pick]
        skip = None
        if self.cfg.mode == "paper":
            w1, b1, resid = fit_last_layer(w0, b0, x, y)
        else:
            w1, b1, skip, resid = fit_output_layer(
                w0, b0, outs, np.array([self.jac_points[i] for i in pick]),
                np.array([self.jacs[i] for i in pick]), x, y)
            if skip is not None:
                self.notes.append("the model carries an affine term (units active on the whole "
                                  "domain, mirrored units, or orientations left as found)")
        if resid > 1e-6:
            self.notes.append(
                f"the last layer leaves a relative residual of {resid:.1e} on "
                "answered queries: the extracted model does not reproduce them exactly"
            )
        self._leave(mark)
        return ReLUNetwork(
            w0, b0, w1, b1,
            {"kind": "extracted", "mode": self.cfg.mode, "queries": self.oracle.queries,
             "input_bounds": list(self.cfg.input_bounds)},
            skip=skip,
        )

    def _measure_affine(self) -> None:
        """No unit changes state on any line searched: measure the Jacobian at the centre of
        the box (``d + 1`` queries), from which the affine model follows."""
        self.notes.append("no hidden unit changes state along the lines searched: the model is "
                          "affine on the domain (the self-check tests it)")
        if not self.jacs:
            centre = self.centre[None, :]
            steps = np.full((1, self.d), 0.25 * self.width)
            values, jacs = self._jacobians(centre, steps)
            self._remember(centre, values)
            self.jac_points.extend(centre)
            self.jacs.extend(jacs)
            self.jac_steps.extend(steps)

    def _self_check(self, network: ReLUNetwork) -> tuple[SelfCheck, list[Line]]:
        """:func:`~.selfcheck.self_check` on fresh points of the box (half of them reference
        inputs, when given) and on every answer held; with the lines from points it failed on
        to points it passed (to any fresh point if it passed none; at most
        ``_REPAIR_LINES``), for a repair."""
        mark = self._enter("self-check")
        n = self.cfg.check_points
        fresh = self.domain.uniform(self.rng, n)
        if self.reference is not None and n:
            take = self.rng.choice(len(self.reference), min(n // 2, len(self.reference)),
                                   replace=False)
            fresh = np.concatenate([fresh[: n - len(take)], self.reference[take]])
        held_x, held_y = np.concatenate(self.seen_x), np.concatenate(self.seen_y)
        check, answers, errors = self_check(self.oracle, network, fresh, held_x, held_y,
                                            self.cfg.check_tolerance)
        if len(fresh):
            self._remember(fresh, answers)
        self._leave(mark)
        points = np.concatenate([fresh, held_x])
        bad = np.flatnonzero(errors > check.tolerance)
        good = np.flatnonzero(errors[: len(fresh)] <= check.tolerance)
        if not len(good):  # wrong everywhere checked: any other point will do
            good = np.arange(len(fresh))
        lines = []
        if len(bad) and len(good):
            bad = self.rng.choice(bad, min(len(bad), _REPAIR_LINES), replace=False)
            for i, j in zip(bad, self.rng.choice(good, len(bad)), strict=True):
                if i == j:
                    continue
                a, b = points[i], points[j]
                lines.append(Line(0.5 * (a + b), 0.5 * (b - a)))
        return check, lines

    def _remember(self, x: Array, y: Array) -> None:
        """Keep answered queries for the last layer (§6.6), at most 256 rows per batch.

        The least squares needs a few thousand rows in all; keeping every probe of paper mode
        (``8d`` rows of ``d`` floats per unit) would take gigabytes at ``h = 128``.
        """
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if len(x) > 256:
            keep = self.keep_rng.choice(len(x), 256, replace=False)
            x, y = x[keep], y[keep]
        self.seen_x.append(x)
        self.seen_y.append(y)

    # ----------------------------------------------------------- default mode
    def _default_rows(self, lines: list[Line] | None = None) -> None:
        """Search lines until ``patience`` lines in a row add no unit (default mode); with
        ``lines`` (the self-check's repair lines), search exactly those."""
        cfg = self.cfg
        length = 2.0 * np.sqrt(self.d) * self.width
        idle = 0
        queue = list(lines) if lines is not None else None
        while self.lines < cfg.max_lines and (idle < cfg.patience if queue is None else queue):
            if cfg.hidden is not None and len(self.units) >= cfg.hidden:
                break
            if queue:
                line = queue.pop(0)
            elif self.domain.bounded:
                line = self.domain.random_line(self.rng, self.reference, self.lines % 3)
            else:
                line = self._random_line(length)
            added = self._process_line(line)
            if added is None:
                idle += 1
                length *= 2.0  # units not seen yet have their hyperplanes further out
                continue
            # A line whose new critical points were all refused (crowded hyperplanes) adds
            # nothing either: it counts towards the patience, or the search would run to
            # max_lines on a victim whose units are all found.
            idle = 0 if added else idle + 1

    def _process_line(self, line: Line) -> int | None:
        """Critical points of ``line`` and the rows of its new units: how many units were
        added, or ``None`` when the line showed no new critical point."""
        mark = self._enter("critical points")
        self.lines += 1
        if self.domain.bounded:
            t_range = self.domain.segment(line)
            kinks = self._search(line, t_range, _GRID, self._known(line))
            match = self._classify(kinks, line)
        else:
            kinks, match, t_range = self._critical_points(line)
        self._refuse_bent(kinks, match, line)
        self._leave(mark)
        new = [int(i) for i in np.flatnonzero(match < 0)]
        if not new:
            return None
        mark = self._enter("weights")
        added = self._recover_on_line(line, kinks, new, match, t_range)
        self._leave(mark)
        return added

    def _critical_points(
        self, line: Line
    ) -> tuple[list[Kink], NDArray[np.int64], tuple[float, float]]:
        """Critical points of ``line``, the known unit of each (``-1``: new), and the stretch
        of ``t`` searched.

        The stretch ``t ∈ [-1, 1]`` is searched first. If it shows no new unit, the line is
        searched on out to ``|t| = _OUTER``: a unit whose hyperplane passes far from the box
        centre crosses a random line far out, if at all (about a third of what the centre of
        the line cost, measured at h = 128–512). The 512-unit victim of seed 3 lost a unit 3.3
        from the centre without it (99.98% test fidelity).
        """
        known = self._known(line)
        t_range = (-1.0, 1.0)
        kinks = self._search(line, t_range, _GRID, known)
        match = self._classify(kinks, line)
        if not np.any(match < 0):
            t_range = (-_OUTER, _OUTER)
            kinks = (self._search(line, (-_OUTER, -1.0), _OUTER_GRID, known) + kinks
                     + self._search(line, (1.0, _OUTER), _OUTER_GRID, known))
            match = self._classify(kinks, line)
        return kinks, match, t_range

    def _known(self, line: Line) -> Array | None:
        return self._predicted_crossings(line)[0] if len(self.units) else None

    def _refuse_bent(self, kinks: list[Kink], match: NDArray[np.int64], line: Line) -> None:
        """Raise once critical points keep sitting where a known unit crosses ``line`` with
        another slope change: a first-layer hyperplane is flat and its unit's output vector is
        the same everywhere on it, so the victim is not a one-hidden-layer ReLU network on the
        domain. Seen within the first few lines after the units concerned were found (each
        line costs at most ``3 (grid + 1)`` queries plus its halvings and Jacobians)."""
        if not len(self.units) or not kinks:
            return
        t_pred, _ = self._predicted_crossings(line)
        ts = np.array([k.t for k in kinks])
        near = np.min(np.abs(ts[:, None] - t_pred[None, :]), axis=1) <= 1e-6 * (1 + np.abs(ts))
        self.matched += int(np.sum(match >= 0))
        self.bent += int(np.sum(near & (match < 0)))
        if self.bent >= _BENT and self.bent > _BENT_SHARE * (self.matched + self.bent):
            raise BentHyperplanesError(
                f"the victim is not a one-hidden-layer ReLU network on this input domain: "
                f"{self.bent} critical points lay on hyperplanes already found but changed the "
                f"slope differently than there ({self.matched} matched), so those hyperplanes "
                f"bend (after {self.lines} lines, {self.oracle.queries} queries). A deeper "
                "network, or an API that clips or transforms its inputs (is input_bounds the "
                "range the API accepts?), cannot be extracted this way."
            )

    def _search(
        self, line: Line, t_range: tuple[float, float], grid: int, known: Array | None
    ) -> list[Kink]:
        kinks, stats = search_line(self.oracle, line, t_range, grid=grid, known=known)
        self._refuse_curved(stats)
        return kinks

    def _refuse_curved(self, stats: LineSearchStats) -> None:
        """Raise if the line search saw a smooth, not piecewise-linear, output."""
        if stats.curved:
            raise OracleMismatchError(
                f"the victim is not piecewise linear: along line {self.lines} the search "
                f"rejected {stats.rejected} intervals as curved for {stats.kinks} critical "
                f"points ({stats.queries} queries), where a ReLU network needs a few "
                "halvings per critical point. Functionally-equivalent extraction "
                "applies to ReLU networks that return raw logits (§6.1); a smooth activation "
                "(tanh, sigmoid), or a smooth output defence such as reverse sigmoid, defeats "
                "it. Use a learning-based attack."
            )

    def _classify(self, kinks: list[Kink], line: Line) -> NDArray[np.int64]:
        """For each of ``kinks``, the known unit it belongs to, or ``-1`` if it is new.

        Predicted from the units found so far, with no query: unit ``k`` crosses the line at
        ``t = -(r_k · origin + b_k) / (r_k · direction)``, where the slope changes by
        ``g_k |r_k · direction|``.
        """
        match = np.full(len(kinks), -1, dtype=np.int64)
        if not len(self.units) or not kinks:
            return match
        t_pred, dm_pred = self._predicted_crossings(line)
        for i, kink in enumerate(kinks):
            dt = np.abs(t_pred - kink.t)
            j = int(np.argmin(dt))
            close = dt[j] <= 1e-6 * (1 + abs(kink.t))
            same = np.linalg.norm(dm_pred[j] - kink.slope_change) <= 1e-4 * np.linalg.norm(
                kink.slope_change
            )
            if close and same:
                match[i] = j
        return match

    def _predicted_crossings(self, line: Line) -> tuple[Array, Array]:
        """Where each known unit crosses ``line`` (``t``) and the slope change it makes there."""
        rows = np.array(self.units.rows)
        speed = rows @ line.direction  # dy/dt of each known unit
        with np.errstate(divide="ignore", invalid="ignore"):
            t_pred = -(rows @ line.origin + np.array(self.units.biases)) / speed
        return t_pred, np.array(self.units.outs) * np.abs(speed)[:, None]

    def _plan_regions(
        self, line: Line, edges: Array, new: list[int], match: NDArray[np.int64]
    ) -> tuple[list[int], dict[int, tuple[int, Array, float]]]:
        """Which regions of the line to measure, and how each needed region follows from them.

        The new critical point ``i`` needs the Jacobians of regions ``i`` and ``i + 1`` (region
        ``s`` lies between critical points ``s - 1`` and ``s``). Between two new critical points
        every critical point on the line belongs to a known unit ``k``, and crossing it changes
        the Jacobian by ``± g_k r_kᵀ``, known without a query. So one measured region serves
        every needed region of its stretch of the line, as long as it is at most
        ``_MAX_CROSSED`` known, precise units away: the widest such region is measured (the
        widest region allows the largest steps). Returns the regions to measure and, for each
        needed region, ``(measured region, Jacobian offset, error of the offset)``; the error
        combines those of the units crossed.
        """
        width = np.diff(edges)
        rows = outs = np.zeros((0, self.d))
        trusted = np.zeros(0, dtype=bool)
        errors = np.zeros(0)
        if len(self.units):
            rows, outs = np.array(self.units.rows), np.array(self.units.outs)
            errors = np.array(self.units.errors)
            trusted = errors <= _TRUSTED_ERROR
        bounds = [-1, *new, len(edges) - 2]
        plan: dict[int, tuple[int, Array, float]] = {}
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            # Regions a + 1 .. b lie between new critical points a and b (or the line's ends).
            sides = sorted({s for s in (a + 1, b) if (s == a + 1 and a >= 0) or
                            (s == b and b < len(edges) - 2)})
            if not sides:
                continue

            def reach(s: int, w: int) -> bool:
                between = match[min(s, w) : max(s, w)]
                return len(between) <= _MAX_CROSSED and bool(np.all(trusted[between]))

            candidates = range(a + 1, b + 1)
            common = [w for w in candidates if all(reach(s, w) for s in sides)]
            if common:
                choice = {s: max(common, key=lambda w: width[w]) for s in sides}
            else:
                choice = {s: max((w for w in candidates if reach(s, w)), key=lambda w: width[w])
                          for s in sides}
            for s, w in choice.items():
                lo, hi = min(s, w), max(s, w)
                offset, spread = np.zeros((0,)), 0.0
                if hi > lo:
                    ks = match[lo:hi]
                    turn = np.sign(rows[ks] @ line.direction) * (1.0 if s > w else -1.0)
                    offset = np.einsum("k,kc,kd->cd", turn, outs[ks], rows[ks])
                    # Each crossed unit adds its own error to the derived Jacobian's entries.
                    spread = float(np.hypot.reduce(np.linalg.norm(outs[ks], axis=1) * errors[ks]))
                plan[s] = (w, offset, spread)
        measure = sorted({w for w, _, _ in plan.values()})
        return measure, plan

    def _recover_on_line(
        self, line: Line, kinks: list[Kink], new: list[int], match: NDArray[np.int64],
        t_range: tuple[float, float],
    ) -> int:
        """Rows of the new units on ``line`` from the Jacobians of the regions beside them.

        ``match`` gives the known unit of each critical point (``-1`` for the ``new`` ones).
        Returns how many units were added.
        """
        ts = np.array([k.t for k in kinks])
        speed = float(np.linalg.norm(line.direction))
        # Region s lies between kink s-1 and kink s (region 0 before the first kink).
        # The outer regions end where the search ended: kinks beyond it are unknown.
        edges = np.concatenate([[t_range[0]], ts, [t_range[1]]])
        measured, plan = self._plan_regions(line, edges, new, match)
        centres = np.array([0.5 * (edges[s] + edges[s + 1]) for s in measured])
        half = np.array([0.5 * (edges[s + 1] - edges[s]) for s in measured]) * speed
        steps = np.minimum(self.cfg.step_fraction * half, 0.5 * self.width)
        points = line.at(centres)
        # Probes stay clear of the hyperplanes already known (no query is needed to know where
        # they are), probing backwards where there is more room behind.
        known_fwd, known_back = self._room(points)
        col_steps = _signed_steps(steps[:, None], known_fwd, known_back)
        values, jacs = self._jacobians(points, col_steps)
        self._remember(points, values)
        # Each needed region s is measured region src[s], shifted by the known units between.
        index = {s: n for n, s in enumerate(measured)}
        src = {s: index[w] for s, (w, _, _) in plan.items()}

        def side(s: int) -> Array:
            w, offset, _ = plan[s]
            return jacs[index[w]] + offset if offset.size else jacs[index[w]]

        # With K = 1 every difference is rank one, so crossings are caught by measuring each
        # column a second time with half the step: inside one linear region both agree.
        multi = values.shape[1] > 1
        unchecked = np.full(col_steps.shape, not multi)
        flipped = np.zeros(col_steps.shape, dtype=bool)
        remeasured: set[int] = set()

        def clean(fit: RowFit) -> bool:
            # With K > 1 a clean rank-one difference is one ReLU's. If the slope change the
            # line search saw disagrees even after both Jacobians were measured again, the
            # search's slope is the one that is off (a neighbouring critical point inside its
            # probes); the strict cross-check below still tests the unit along a fresh direction.
            return multi and fit.error_estimate < _CLEAN_FIT

        fits: dict[int, RowFit] = {}
        for _round in range(6):
            bad = np.zeros(col_steps.shape, dtype=bool)
            if unchecked.any():
                bad |= self._half_step_mismatches(points, values, jacs, col_steps, unchecked)
            # A probe that crossed another hyperplane breaks the rank-one structure: the fit
            # flags its column, on either side. A column that a clean fit of the same region
            # vouches for is not to blame: two critical points merged into one on the line
            # (a rank-two difference) must not send their neighbours' columns to re-measurement.
            diffs = {i: side(i + 1) - side(i) for i in new}
            suspects = {}
            vouched = np.zeros(col_steps.shape, dtype=bool)
            for i in new:
                fits[i] = fit_row(diffs[i], orient=line.direction)
                suspects[i] = fits[i].suspicious_columns()
                if clean(fits[i]):
                    for s_ in (src[i], src[i + 1]):
                        vouched[s_] = True
                        vouched[s_, suspects[i]] = False
            for i in new:
                cols = suspects[i]
                for s_ in (src[i], src[i + 1]):
                    bad[s_, cols[~vouched[s_, cols]]] = True
            # A probe that crossed the unit's *own* hyperplane keeps the difference rank one but
            # clips its entry: it measured the column only up to the crossing, so that
            # |D_j| |s| = |slope change| |t - t_i| exactly, where an uncrossed probe towards
            # the hyperplane gives less. No fit is needed for this test.
            for i in new:
                seen = kinks[i].slope_change
                size = np.linalg.norm(diffs[i], axis=0)
                sign = np.sign(seen @ diffs[i])  # sign of the row's entries (r · v > 0)
                for s_, direction in ((src[i], 1.0), (src[i + 1], -1.0)):
                    # Before the kink y_i < 0 and a probe goes towards 0 if s r_j > 0.
                    towards = direction * col_steps[s_] * sign > 0
                    with np.errstate(divide="ignore", invalid="ignore"):
                        ratio = size * np.abs(col_steps[s_]) / (
                            np.linalg.norm(seen) * abs(centres[s_] - kinks[i].t))
                    bad[s_] |= towards & (ratio > 0.999)
            # Well-fitted hyperplanes of this line's new units (each through its critical point)
            # show which probes crossed one of them.
            good = [i for i in new if fits[i].error_estimate < 1e-8]
            if good:
                line_rows = np.array([fits[i].row for i in good])
                line_b = -np.sum(line_rows * line.at(ts[good]), axis=1)
                line_fwd, line_back = room_from(points, line_rows, line_b)
                fwd, back = np.minimum(known_fwd, line_fwd), np.minimum(known_back, line_back)
            else:
                fwd, back = known_fwd, known_back
            room = np.where(col_steps > 0, fwd, back)
            bad |= np.abs(col_steps) >= 0.99 * room
            # The slope change the line search saw must be what the fitted unit predicts. If
            # not, and nothing is suspect, probes crossed a hyperplane without breaking the
            # rank-one structure (any hyperplane when K = 1): re-measure both Jacobians, once.
            # Not when the fit is not clean and clean fits of other critical points vouch for
            # both Jacobians (a merged critical point: nothing to repair).
            for i in new:
                sides = [src[i], src[i + 1]]
                merged = not clean(fits[i]) and bool(vouched[sides].all())
                if (not bad[sides].any() and i not in remeasured and not merged
                        and _slope_mismatch(fits[i], line, kinks[i]) > 1e-4):
                    remeasured.add(i)
                    bad[sides] = True
            if not bad.any():
                break
            # First probe the other way with the same step (a crossed hyperplane lies ahead, and
            # a large step keeps the precision); a column already turned, or with little room
            # behind, shrinks by 8 instead.
            size = np.abs(col_steps)
            turned = np.minimum(size, 0.5 * np.where(col_steps > 0, back, fwd))
            turn = bad & ~flipped & (turned >= size / 8.0)
            col_steps = np.where(
                turn, -np.sign(col_steps) * turned,
                np.where(bad, _signed_steps(size / 8.0, fwd, back), col_steps))
            flipped |= turn
            pairs = np.argwhere(bad).astype(np.int64)
            probe_steps = col_steps[pairs[:, 0], pairs[:, 1]]
            cols = jacobian_columns(self.oracle, points, values, pairs, probe_steps)
            jacs[pairs[:, 0], :, pairs[:, 1]] = cols
            if not multi:
                unchecked |= bad
        else:
            self.notes.append("some Jacobian columns stayed inconsistent after 6 re-measurements")
            fits = {i: fit_row(side(i + 1) - side(i), orient=line.direction) for i in new}

        # The value at each needed region that was not measured (one query each) places the
        # crossing below; the measured ones have theirs.
        derived = sorted(s for s in plan if s not in index)
        side_t = {s: 0.5 * (edges[s] + edges[s + 1]) for s in plan}
        side_value = {s: values[index[s]] for s in plan if s in index}
        if derived:
            at = line.at(np.array([side_t[s] for s in derived]))
            got = np.asarray(self.oracle(at), dtype=np.float64)
            self._remember(at, got)
            side_value.update(zip(derived, got, strict=True))
        self.jac_points.extend(points)
        self.jacs.extend(jacs)
        self.jac_steps.extend(col_steps)
        found: list[tuple[Array, float, Array, Array, float]] = []
        strict: list[bool] = []
        for i in new:
            fit = fits[i]
            # Refine the crossing from the two regions' exact affine pieces along the line.
            t = _meeting_point(side_value[i], side(i) @ line.direction, side_value[i + 1],
                               side(i + 1) @ line.direction, side_t[i], side_t[i + 1])
            if not edges[i] < t < edges[i + 2]:
                t = kinks[i].t
            point = line.at(np.array([t]))[0]
            bias = -float(fit.row @ point)
            off = _slope_mismatch(fit, line, kinks[i]) > 1e-3
            if fit.error_estimate > 1e-6 or (off and not clean(fit)):
                self.notes.append(f"a critical point at t={t:.6g} was not a single ReLU; skipped")
                continue
            # Kept on a clean fit alone, the unit must pass a strict cross-check: a probe that
            # only just crossed the unit's own hyperplane leaves the fit clean but a few entries
            # slightly clipped, which the slope change seen would have exposed.
            strict.append(off)
            # A derived side carries the errors of the units it was derived across.
            error = float(np.hypot(fit.error_estimate, np.hypot(plan[i][2], plan[i + 1][2])
                                   / max(float(np.linalg.norm(fit.out)), 1e-300)))
            found.append((fit.row, bias, fit.out, point, error))
        added = 0
        tolerance = np.where(strict, 1e-6, 1e-3)
        for unit, real in zip(found, self._cross_check(found, tolerance), strict=True):
            if real:
                added += self.units.add(*unit)
            else:
                self.notes.append(
                    "a critical point did not behave as one ReLU along a second direction "
                    "(two close critical points merged on the line); skipped"
                )
        return added

    def _cross_check(
        self, found: list[tuple[Array, float, Array, Array, float]], tolerance: Array
    ) -> list[bool]:
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
        u = self.rng.standard_normal((n, self.d))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        delta = 1e-4 * self.width
        p = np.array([f[3] for f in found])
        u = self.domain.inward(p, u, delta)
        x = np.concatenate([p - delta * u, p, p + delta * u])
        y = np.asarray(self.oracle(x), dtype=np.float64)
        self._remember(x, y)
        left, mid, right = y[:n], y[n : 2 * n], y[2 * n :]
        jump = (right - 2 * mid + left) / delta
        expected = np.array([f[2] * abs(float(f[0] @ ui)) for f, ui in zip(found, u, strict=True)])
        noise = 1e-12 * (np.abs(mid).max(axis=1) + 1.0) / delta
        err = np.linalg.norm(jump - expected, axis=1)
        return list(err <= tolerance * np.linalg.norm(expected, axis=1) + noise)

    def _refine(self) -> None:
        """Re-measure weak units where all the other hyperplanes are far away (default mode).

        With every hyperplane approximately known, the attack can choose, for unit ``i``, the
        point ``p`` of its hyperplane with the largest clearance ``c`` to all the others, take
        the two Jacobians at ``p ± (c/2) rᵢ`` and give each column the largest step (forward or
        backward) that provably stays inside the linear region. The finite-difference error is
        the oracle's rounding divided by the step, so larger steps give more bits.
        """
        errors = np.array(self.units.errors)
        weak = np.flatnonzero(errors > 2.0 ** -self.cfg.refine_bits)
        # The weakest first, within a share of what finding the units cost.
        affordable = int(self.cfg.refine_share * self.oracle.queries // (2 * (self.d + 1)))
        weak = weak[np.argsort(-errors[weak], kind="stable")][:affordable]
        h = len(self.units)
        chunk = max(1, int(2e7 // (2 * h * self.d)))  # bounds the (2n, h, d) step array
        improved = 0
        for start in range(0, len(weak), chunk):
            improved += self._refine_units(weak[start : start + chunk])
        if len(weak):
            self.notes.append(f"refinement re-measured {len(weak)} units, {improved} more "
                              "precisely")

    def _refine_units(self, weak: NDArray[np.int64]) -> int:
        """:meth:`_refine` for the units ``weak``; returns how many got more precise."""
        units = self.units
        rows, biases = np.array(units.rows), np.array(units.biases)
        d, n = self.d, len(weak)
        candidates = 64
        xs = self.centre + self.rng.uniform(-0.5, 0.5, (n, candidates, d)) * self.width
        r_w, b_w = rows[weak], biases[weak]
        on = xs - (np.einsum("ncd,nd->nc", xs, r_w) + b_w[:, None])[..., None] * r_w[:, None, :]
        on = np.concatenate([on, np.array(units.points)[weak][:, None, :]], axis=1)
        y = np.einsum("ncd,hd->nch", on, rows) + biases  # (n, candidates + 1, h)
        y[np.arange(n), :, weak] = np.inf
        clearance = np.abs(y).min(axis=2)
        if self.domain.bounded:
            # Moving along r_i by c must not leave the box either (points outside it: < 0).
            lo, hi = self.domain.lo, self.domain.hi
            speed = np.abs(r_w)[:, None, :]
            with np.errstate(divide="ignore", invalid="ignore"):
                face = np.where(speed > 0, np.minimum(hi - on, on - lo) / speed, np.inf)
            clearance = np.minimum(clearance, face.min(axis=2))
        best = np.argmax(clearance, axis=1)
        p = on[np.arange(n), best]
        c = clearance[np.arange(n), best]
        room_ok = c > 1e-6 * self.width  # a hyperplane met only where the box pins it
        if not room_ok.all():
            weak, p, c, r_w, n = weak[room_ok], p[room_ok], c[room_ok], r_w[room_ok], int(
                room_ok.sum())
            if not n:
                return 0
        shift = 0.5 * c[:, None] * r_w
        points = np.concatenate([p + shift, p - shift])  # (2n, d): the y_i > 0 side, then < 0
        forward, backward = self._room(points)
        room = np.maximum(forward, backward)
        cap = self.width * np.sqrt(d)
        steps = 0.5 * np.minimum(room, cap) * np.where(forward >= backward, 1.0, -1.0)
        values = np.asarray(self.oracle(points), dtype=np.float64)
        self._remember(points, values)
        cols = np.stack(np.meshgrid(np.arange(2 * n), np.arange(d), indexing="ij"), -1)
        cols = cols.reshape(-1, 2)
        slopes = jacobian_columns(self.oracle, points, values, cols, steps.reshape(-1))
        jacs = slopes.reshape(2 * n, d, -1).transpose(0, 2, 1)
        self.jac_points.extend(points)
        self.jacs.extend(jacs)
        self.jac_steps.extend(steps)
        improved = 0
        for m, i in enumerate(weak.tolist()):
            fit = fit_row(jacs[m] - jacs[n + m], orient=rows[i])
            if fit.error_estimate >= units.errors[i]:
                continue
            if float(fit.row @ rows[i]) < 1 - 64 * max(units.errors[i], 1e-12):
                self.notes.append("a refined row disagreed with its first estimate; kept the first")
                continue
            # The crossing on the segment between the two points, from both affine pieces.
            u = 2 * shift[m]
            t = _meeting_point(values[n + m], jacs[n + m] @ u, values[m], jacs[m] @ u, 0.0, 1.0)
            point = (p[m] - shift[m]) + np.clip(t, 0.0, 1.0) * u
            units.rows[i], units.biases[i] = fit.row, -float(fit.row @ point)
            units.outs[i], units.points[i], units.errors[i] = fit.out, point, fit.error_estimate
            improved += 1
        return improved

    def _polish(self) -> None:
        """Re-fit all rows and output vectors jointly from every Jacobian measured
        (:func:`~.polish.polish_layers`, no query). A unit keeps its estimate if the polished
        row moved further than its estimated error allows (a wrong activation pattern, say), or
        if the polish does not claim a smaller error for it: with hundreds of units the joint
        fit has not converged for every unit after its ten iterations."""
        units = self.units
        rows, biases = np.array(units.rows), np.array(units.biases)
        try:
            got = polish_layers(np.array(self.jac_points), np.array(self.jacs),
                                np.array(self.jac_steps), rows, biases, np.array(units.outs))
        except np.linalg.LinAlgError:
            self.notes.append("the joint polish was skipped: too few Jacobians for its system")
            return
        moved = np.abs(got.rows - rows).mean(axis=1)
        kept = unimproved = 0
        for i in range(len(units)):
            if not (moved[i] <= max(1e-8, 64 * units.errors[i]) and np.isfinite(got.errors[i])):
                kept += 1
                continue
            if not got.errors[i] < units.errors[i]:
                unimproved += 1
                continue
            units.rows[i] = got.rows[i]
            units.outs[i] = got.outs[i]
            units.biases[i] = -float(got.rows[i] @ units.points[i])
            units.errors[i] = float(got.errors[i])
        if kept:
            self.notes.append(f"the joint polish moved {kept} rows too far; they kept their "
                              "first estimate")
        if unimproved:
            self.notes.append(f"the joint polish did not improve the estimated error of "
                              f"{unimproved} rows; they kept their first estimate")

    def _room(self, points: Array) -> tuple[Array, Array]:
        """:func:`~.jacobian.room_from` the hyperplanes of the units found so far and the
        faces of the box (when queries must stay inside it)."""
        fwd, back = self.domain.face_room(points)
        if not len(self.units):
            return fwd, back
        f, b = room_from(points, np.array(self.units.rows), np.array(self.units.biases))
        return np.minimum(f, fwd), np.minimum(b, back)

    def _half_step_mismatches(
        self, points: Array, values: Array, jacs: Array, col_steps: Array, unchecked: Array
    ) -> NDArray[np.bool_]:
        """Re-measure the unchecked columns at half their step; mark those that disagree.

        Marks them checked. A disagreement means the probe left the linear region: the column
        is to be measured again. Returns a mask shaped like ``col_steps``.
        """
        pairs = np.argwhere(unchecked).astype(np.int64)
        unchecked[:] = False
        half = 0.5 * col_steps[pairs[:, 0], pairs[:, 1]]
        again = jacobian_columns(self.oracle, points, values, pairs, half)[:, 0]
        first = jacs[pairs[:, 0], 0, pairs[:, 1]]
        scale = np.abs(values[pairs[:, 0], 0]) + 1.0
        tol = 1e-9 * np.maximum(np.abs(first), np.abs(again)) + 1e-13 * scale / np.abs(half)
        bad = np.zeros(col_steps.shape, dtype=bool)
        flag = np.abs(first - again) > tol
        bad[pairs[flag, 0], pairs[flag, 1]] = True
        return bad

    def _jacobians(self, points: Array, steps: Array) -> tuple[Array, Array]:
        chunk = max(1, 16_384 // (self.d + 1))
        vals, jacs = [], []
        for s in range(0, len(points), chunk):
            v, j = jacobians(self.oracle, points[s : s + chunk], steps[s : s + chunk])
            vals.append(v)
            jacs.append(j)
        return np.concatenate(vals), np.concatenate(jacs)

    # ------------------------------------------------------------- paper mode
    def _paper_rows(self) -> None:
        from .paper import recover_row_second_differences

        h = int(self.cfg.hidden or 0)
        while self.lines < self.cfg.max_lines and len(self.units) < h:
            origin = self.centre + self.rng.uniform(-0.25, 0.25, self.d) * self.width
            v = self.rng.standard_normal(self.d)
            line = Line(origin, v / np.linalg.norm(v) * self.width)
            self.lines += 1
            mark = self._enter("critical points")
            kinks, stats = search_line_paper(self.oracle, line, (-float(h) ** 2, float(h) ** 2))
            self._leave(mark)
            self._refuse_curved(stats)
            mark = self._enter("weights")
            for kink in kinks:
                point = line.at(np.array([kink.t]))[0]
                row, out, err, xs, ys = recover_row_second_differences(
                    self.oracle, point, self.width
                )
                self._remember(xs, ys)
                if err > 1e-8:
                    # The probes at ±c met another hyperplane: §6.4's sizes are then sums of two
                    # units' second differences. The pair test exposes it; look elsewhere.
                    self.notes.append(
                        f"a critical point gave inconsistent second differences (relative "
                        f"error {err:.1e}); skipped"
                    )
                    continue
                self.units.add(row, -float(row @ point), out, point, err)
                if len(self.units) >= h:
                    break
            self._leave(mark)
