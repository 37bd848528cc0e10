"""One run of the one-hidden-layer attack (Jagielski et al. 2020, §6), phase after phase."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from model_extraction.oracle import Oracle

from ..checks import check_logit_oracle
from ..domain import Domain
from ..phases import PhaseLog, ProgressFn
from ..result import ExtractionError, ExtractionResult
from .build import build_network
from .lines import search_lines
from .paper import paper_rows
from .polish import polish_units
from .refine import refine
from .repair import check_model
from .state import Measured, Run, Units

if TYPE_CHECKING:
    from ..extract import FunctionalExtraction

Array = NDArray[np.float64]

__all__ = ["execute", "start", "where"]

_REPAIRS = 3  # a model that fails its self-check is repaired at most this many times


def start(cfg: FunctionalExtraction, oracle: Oracle, d: int, progress: ProgressFn | None = None,
          reference: Array | None = None) -> tuple[Run, Units, Measured]:
    """A run of ``cfg`` on ``oracle`` over ``d`` inputs that has found nothing yet."""
    lo, hi = cfg.input_bounds
    domain = Domain(lo, hi, d, bounded=cfg.stay_in_bounds and cfg.mode == "default")
    run = Run(cfg, oracle, d, domain, PhaseLog(oracle, progress, hidden=cfg.hidden),
              np.random.default_rng(cfg.seed), reference)
    return run, Units(), Measured(np.random.default_rng([cfg.seed, 1]))


def where(run: Run, units: Units) -> str:
    """How far the run got, for an error message."""
    return (f"The attack was in phase '{run.log.phase}' after {run.lines} lines, with "
            f"{len(units)} hidden units recovered.")


def execute(run: Run, units: Units, measured: Measured) -> ExtractionResult:
    """The phases: the oracle check, the units (critical points and rows, then refinement
    and polish; paper mode: §6.3–6.4), the network (signs, last layer), the self-check, and up
    to ``_REPAIRS`` repairs (lines through the points it failed on, and the phases again).

    Raises :class:`~model_extraction.attacks.functional.result.ExtractionError` if the model
    still fails its self-check, or as :func:`.build.build_network` says; the oracle check's
    errors (:func:`~model_extraction.attacks.functional.checks.check_logit_oracle`), a victim
    whose hyperplanes bend or that is not piecewise linear (:mod:`.lines`), and the oracle's
    own (its budget) pass through.
    """
    cfg = run.cfg
    run.log.enter("check", 0)
    if cfg.check_oracle:
        check_logit_oracle(run.oracle, run.d, run.centre, run.width, run.rng,
                           margin=0.05 if run.domain.bounded else 0.0)
    run.log.leave(0)
    if cfg.mode == "paper":
        paper_rows(run, units, measured)
    else:
        search_lines(run, units, measured)
        _improve(run, units, measured)
    built = len(run.notes)  # the notes before those of the model built next
    network = build_network(run, units, measured)
    check, lines = check_model(run, units, measured, network)
    repairs = 0
    while (not check.passed and cfg.mode == "default" and repairs < _REPAIRS
           and run.lines < cfg.max_lines):
        # A unit was missed, most likely: search the lines from the points where the
        # model is wrong to points where it is right (its hyperplane lies between).
        repairs += 1
        del run.notes[built:]  # they describe a model that is not returned
        run.notes.append(f"the self-check found a relative error of {check.max_error:.1e} "
                         f"with {len(units)} units; searched {len(lines)} lines through the "
                         "points it failed on")
        search_lines(run, units, measured, lines)
        _improve(run, units, measured)
        built = len(run.notes)
        network = build_network(run, units, measured)
        check, lines = check_model(run, units, measured, network)
    if not check.passed:
        raise ExtractionError(
            f"the extracted model disagrees with the oracle: relative error "
            f"{check.max_error:.1e} on {check.points} fresh in-domain points and "
            f"{check.answers} answers already held, above the {check.tolerance:.0e} it must "
            f"meet ({len(units)} units found in {run.lines} lines, "
            f"{run.oracle.queries} queries). The victim may not be a one-hidden-layer ReLU "
            "network on this input domain, or units were missed: raise max_lines, give "
            "reference_inputs, or check input_bounds."
        )
    if run.domain.bounded and run.reference is None:
        run.notes.append("verified on uniform points of the box only: units that change "
                         "state only near natural data (far from the box's bulk) cannot be "
                         "seen without reference_inputs")
    return ExtractionResult(
        network=network, mode=cfg.mode, queries=sum(p.queries for p in run.log.costs.values()),
        phases=run.log.costs, lines=run.lines,
        estimated_bits=_estimated_bits(units, network.num_outputs, cfg.mode),
        notes=run.notes, check=check.as_dict(),
    )


def _estimated_bits(units: Units, outputs: int, mode: str) -> Array:
    """``-log2`` of each row's estimated mean absolute error (at most 60). NaN for every row
    in default mode when the victim has one output: its Jacobian differences are ``1 × d``,
    rank one exactly, and leave no residual to estimate from (the cap, 60 bits, whatever the
    rows' error: ``test_the_attacks_own_precision_estimate_is_nan_where_it_cannot_be_made``)."""
    if mode == "default" and outputs == 1:
        return np.full(len(units), np.nan)
    return -np.log2(np.maximum(np.array(units.errors, dtype=np.float64), 2.0**-60))


def _improve(run: Run, units: Units, measured: Measured) -> None:
    """Refinement, then the joint polish (default mode; each when turned on)."""
    if run.cfg.refine_bits > 0 and len(units) > 0:
        run.log.enter("refinement", len(units))
        refine(run, units, measured)
        run.log.leave(len(units))
    if run.cfg.polish and len(units) > 0:
        run.log.enter("polish", len(units))
        polish_units(run, units, measured)
        run.log.leave(len(units))
