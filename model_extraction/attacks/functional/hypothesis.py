"""The pipeline's first phase: the hypothesis that the victim has one hidden layer.

Before the phases of :mod:`.deep`, which tell the layers apart and extract any depth, the
pipeline assumes one hidden layer and extracts it with the attack of Jagielski et al. (2020, §6;
:mod:`.onelayer`). At depth one every unit's output vector is one vector everywhere: a line's
crossings of the units found are predicted with their slope changes, and the Jacobian of a
region follows from a measured one across them without a query. Neither holds deeper (a
first-layer unit's output vector changes wherever a deeper unit changes state), and those
savings are most of the one-layer attack's economy (docs/deep.md). The hypothesis is refuted
when hyperplanes bend (a critical point where a unit found predicts a crossing, with another
slope change: :class:`~.checks.BentHyperplanesError`, seen within a few lines) or when it
cannot vouch for a model (its :class:`~.result.ExtractionError`: a failed self-check, a width
other than the one given); the queries it spent stay counted, and the deep phases go on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from model_extraction.oracle import Oracle

from .checks import BentHyperplanesError
from .domain import Domain
from .extract import FunctionalExtraction
from .phases import ProgressFn
from .result import ExtractionError, ExtractionResult, PhaseCost

__all__ = ["Refuted", "one_layer_attack", "try_one_layer"]


@dataclass(frozen=True)
class Refuted:
    """Why the hypothesis fell (the one-layer attack's error message), whether hyperplanes bent
    (``False``: it could not vouch for a model) and what it cost."""

    why: str
    bent: bool
    cost: PhaseCost


def one_layer_attack(one_layer: bool | FunctionalExtraction, hidden: tuple[int, ...] | None,
                     *, domain: Domain, seed: int, check_points: int,
                     check_tolerance: float) -> FunctionalExtraction | None:
    """The attack that tests the hypothesis, or ``None`` when it is not tested
    (``one_layer=False``, or ``hidden`` gives two widths or more). ``True``: the one-layer
    attack's defaults on lines through ``domain``'s box (its queries inside it where the
    domain is bounded, else in the paper's setting), with the pipeline's ``seed`` and
    self-check; a :class:`~.extract.FunctionalExtraction`: those settings (``mode="default"``,
    and the pipeline's domain: ``stay_in_bounds=False`` in the paper's setting, the same
    ``input_bounds`` in a bounded one). Either way with ``hidden=(h,)``'s width. Raises
    ``ValueError`` for any other ``one_layer``, an attack that would query elsewhere, or one
    whose ``hidden`` is not ``hidden``'s width."""
    if not isinstance(one_layer, bool | np.bool_ | FunctionalExtraction):
        raise ValueError(f"one_layer={one_layer!r}: True, False or a FunctionalExtraction")
    if not one_layer or (hidden is not None and len(hidden) > 1):
        return None
    width = None if hidden is None else hidden[0]
    if not isinstance(one_layer, FunctionalExtraction):
        return FunctionalExtraction(
            hidden=width, input_bounds=(domain.lo, domain.hi), seed=seed,
            stay_in_bounds=domain.bounded, check_points=check_points,
            check_tolerance=check_tolerance, reference_inputs=domain.reference)
    same = one_layer.stay_in_bounds == domain.bounded and (
        not domain.bounded or tuple(one_layer.input_bounds) == (domain.lo, domain.hi))
    if one_layer.mode != "default" or not same:
        where = (f"input_bounds={(domain.lo, domain.hi)}" if domain.bounded
                 else "stay_in_bounds=False")
        raise ValueError(f"one_layer= must be a FunctionalExtraction with mode='default' and "
                         f"the deep phases' domain, {where} (got mode={one_layer.mode!r}, "
                         f"stay_in_bounds={one_layer.stay_in_bounds}, input_bounds="
                         f"{one_layer.input_bounds})")
    if width is not None and one_layer.hidden not in (None, width):
        raise ValueError(f"one_layer has hidden={one_layer.hidden} and hidden= says {width}: "
                         "give the width once")
    return replace(one_layer, hidden=width) if width is not None else one_layer


def try_one_layer(attack: FunctionalExtraction, oracle: Oracle, d: int,
                   progress: ProgressFn | None) -> ExtractionResult | Refuted:
    """The one-layer attack's result when the hypothesis holds, else :class:`Refuted`: by
    bends, or by the attack's :class:`~.result.ExtractionError` (a model that failed its
    self-check, or a width other than ``hidden=h``: a deeper victim shows more units than its
    first layer has). The oracle's errors (its budget, a precision or output check) pass
    through."""
    before, start = oracle.queries, time.perf_counter()
    try:
        return attack.run(oracle, input_dim=d, progress=progress)
    except BentHyperplanesError as err:
        why, bent = str(err), True
    except ExtractionError as err:
        why, bent = str(err), False
    return Refuted(why, bent, PhaseCost(oracle.queries - before, time.perf_counter() - start))
