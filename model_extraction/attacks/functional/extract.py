"""Functionally-equivalent extraction of one-hidden-layer ReLU networks (Jagielski et al. 2020, §6).

The four phases of §6.2 — critical-point search, weight recovery, global sign recovery, last
layer — in two modes:

``"default"``
    Critical points from batched 2-linearity tests along random lines, and the rows of their
    units from the rank-one Jacobian differences beside them (:mod:`.onelayer.lines`,
    :mod:`.onelayer.regions`, :mod:`.onelayer.weights`); the least precise units re-measured
    where their hyperplane is furthest from all others (:mod:`.onelayer.refine`); all rows and
    output vectors fitted jointly to every Jacobian measured (:mod:`.onelayer.polish`); signs
    from the Jacobians already measured, output weights from the Jacobian jumps and an affine
    term where one is needed (:mod:`.onelayer.build`, :mod:`.affine`); then the self-check and
    its repairs (:mod:`.onelayer.repair`). :mod:`.onelayer.run` runs the phases in order.
    Queries stay inside ``input_bounds`` (:mod:`.domain`) unless ``stay_in_bounds=False``. The
    number of hidden units is found, not given.
``"paper"``
    The reference (:mod:`.onelayer.paper`): Algorithm 1 interval by interval over
    ``t ∈ [-h², h²]``, absolute values from second differences along each ``e_j`` (§6.4.1),
    entry signs from ``e_ref + e_j`` (§6.4.2), global signs through the null space of the
    recovered rows (§6.5), last layer by least squares (§6.6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from model_extraction.oracle import BudgetExhaustedError, as_oracle

from .domain import checked_reference
from .onelayer.run import execute, start, where
from .phases import ProgressFn
from .result import ExtractionResult

Array = NDArray[np.float64]

__all__ = ["FunctionalExtraction", "extract_functional"]


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
        misses it is repaired (lines through the points it failed on) up to 3 times, then
        refused with :class:`ExtractionError`.
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
        (:func:`~model_extraction.attacks.functional.onelayer.polish.polish_layers`; no query, about
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
        run, units, measured = start(self, oracle, d, progress, self._reference(d))
        try:
            return execute(run, units, measured)
        except BudgetExhaustedError as err:
            raise BudgetExhaustedError(
                err.budget, err.used, err.requested, progress=where(run, units)
            ) from None

    def _reference(self, d: int) -> Array | None:
        """The reference inputs as a validated ``(n, d)`` float64 array inside the box."""
        if self.reference_inputs is None:
            return None
        return checked_reference(self.reference_inputs, self.input_bounds, d)


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

    See :class:`FunctionalExtraction` for the parameters. In default mode this is the pipeline
    of :func:`~.deep.extract_deep`, which extracts any depth: the one-hidden-layer attack
    configured here tests its hypothesis first (:mod:`.hypothesis`) and, where hyperplanes bend
    or its model fails its self-check, the deep phases go on (the queries already spent
    counted; a note says so), inside ``input_bounds`` (with the ``reference_inputs``) unless
    ``stay_in_bounds=False``. ``hidden`` may then also be the widths ``(h1, …, hL)``: the deep
    phases run at once. Paper mode runs the one-hidden-layer reference alone.
    """
    widths = None if hidden is None or isinstance(hidden, int) else tuple(hidden)
    if widths is not None and len(widths) == 1:
        hidden, widths = widths[0], None
    if widths is not None and mode != "default":
        raise ValueError("hidden=(h1, h2, ...) needs mode='default': paper mode is the "
                         "one-hidden-layer reference")
    attack = FunctionalExtraction(mode=mode, hidden=None if widths is not None else hidden,
                                  input_bounds=input_bounds, seed=seed, **options)
    if mode != "default":
        return attack.run(oracle, input_dim=input_dim, progress=progress)
    from .deep import extract_deep

    keep = {k: options[k] for k in ("check_points", "check_tolerance") if k in options}
    given = widths or (None if hidden is None else (hidden,))
    bounded = attack.stay_in_bounds
    return extract_deep(
        oracle, input_dim=input_dim, hidden=given, scale=input_bounds[1] - input_bounds[0],
        seed=seed, progress=progress, one_layer=False if widths is not None else attack,
        input_bounds=tuple(input_bounds) if bounded else None,
        reference_inputs=attack.reference_inputs if bounded else None, **keep)
