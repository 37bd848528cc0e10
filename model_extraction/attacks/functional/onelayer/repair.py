"""The one-hidden-layer attack's self-check
(:func:`~model_extraction.attacks.functional.selfcheck.self_check`) on fresh points of the box
and every answer held, and the lines a repair searches when it fails."""

from __future__ import annotations

import numpy as np

from model_extraction.network import ReLUNetwork

from ..search import Line
from ..selfcheck import SelfCheck, self_check
from .state import Measured, Run, Units

__all__ = ["check_model"]

_REPAIR_LINES = 8  # lines through points the model failed on, at most


def check_model(run: Run, units: Units, measured: Measured, network: ReLUNetwork
                ) -> tuple[SelfCheck, list[Line]]:
    """Self-check ``network`` on ``check_points`` fresh points of the box (half of them
    reference inputs, when given) and on every answer held; also the lines from points it failed
    on to points it passed (to any fresh point if it passed none; at most ``_REPAIR_LINES``):
    a unit the model lacks has its hyperplane between them."""
    run.log.enter("self-check", len(units))
    n = run.cfg.check_points
    fresh = run.domain.uniform(run.rng, n)
    if run.reference is not None and n:
        take = run.rng.choice(len(run.reference), min(n // 2, len(run.reference)),
                              replace=False)
        fresh = np.concatenate([fresh[: n - len(take)], run.reference[take]])
    held_x, held_y = measured.answers()
    check, answers, errors = self_check(run.oracle, network, fresh, held_x, held_y,
                                        run.cfg.check_tolerance)
    if len(fresh):
        measured.remember(fresh, answers)
    run.log.leave(len(units))
    points = np.concatenate([fresh, held_x])
    bad = np.flatnonzero(errors > check.tolerance)
    good = np.flatnonzero(errors[: len(fresh)] <= check.tolerance)
    if not len(good):  # wrong everywhere checked: any other point will do
        good = np.arange(len(fresh))
    lines = []
    if len(bad) and len(good):
        bad = run.rng.choice(bad, min(len(bad), _REPAIR_LINES), replace=False)
        for i, j in zip(bad, run.rng.choice(good, len(bad)), strict=True):
            if i == j:
                continue
            a, b = points[i], points[j]
            lines.append(Line(0.5 * (a + b), 0.5 * (b - a)))
    return check, lines
