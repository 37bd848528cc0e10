"""The self-check: the extracted model is compared with the oracle before it is returned.

An attack must never hand back a model it cannot vouch for. The model is evaluated on fresh
points of the input domain (queried now, and counted) and on every answer already held; the
largest error, relative to the scale of the answers, must stay under the precision the attack
claims. Whatever went wrong upstream (a missed unit, a wrong sign without an affine term to
absorb it, a victim that is not a one-hidden-layer ReLU network on the domain) shows up here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model_extraction.network import ReLUNetwork
from model_extraction.oracle import Oracle

Array = NDArray[np.float64]

__all__ = ["SelfCheck", "self_check", "self_check_drawn"]


@dataclass(frozen=True)
class SelfCheck:
    """What the self-check measured.

    ``points``: fresh in-domain queries; ``answers``: answers already held that were compared;
    ``max_error``: the largest absolute error over both, divided by ``max(1, max |answer|)``;
    ``tolerance``: the bound it had to meet.

    A passed check is a statistical statement about the distribution the fresh points were
    drawn from: :attr:`disagreement_bound`.
    """

    points: int
    answers: int
    max_error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return bool(self.max_error <= self.tolerance)

    @property
    def disagreement_bound(self) -> float:
        """An upper bound on the share of the fresh points' distribution (the one-layer
        attack's: uniform on the box, or half box and half reference inputs when it is given
        them; the deep attack's: Gaussian of standard deviation ``scale``) on which the
        model may still differ from the oracle beyond the tolerance, at 95% confidence, when
        none of the ``points`` did: ``1 - 0.05^(1/points)``, about ``3 / points`` (a region of
        share ``p`` is missed by all of them with probability ``(1 - p)^points``). It holds for
        this one check: an attack that checks again after a repair has had several chances to
        pass.
        1 without fresh points; NaN for a failed check."""
        if not self.passed:
            return float("nan")
        return 1.0 if self.points == 0 else float(-np.expm1(np.log(0.05) / self.points))

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed,
                "disagreement_bound": self.disagreement_bound}


def _relative_errors(network: ReLUNetwork, x: Array, y: Array) -> Array:
    if not len(x):
        return np.zeros(0)
    scale = max(float(np.max(np.abs(y))), 1.0)
    return np.max(np.abs(network.logits(x) - y), axis=1) / scale


def self_check(
    oracle: Oracle, network: ReLUNetwork, fresh: Array, held_x: Array, held_y: Array,
    tolerance: float,
) -> tuple[SelfCheck, Array, Array]:
    """Compare ``network`` with ``oracle`` on the ``(n, d)`` points ``fresh`` (``n`` queries)
    and on the held answers ``held_x`` ``(m, d)`` → ``held_y`` ``(m, K)``.

    Returns the :class:`SelfCheck`, the answers at ``fresh`` ``(n, K)``, and each point's
    relative error, fresh points first ``(n + m,)``.
    """
    answers = np.asarray(oracle(fresh), dtype=np.float64) if len(fresh) else np.zeros((0, 0))
    errors = np.concatenate([_relative_errors(network, fresh, answers),
                             _relative_errors(network, held_x, held_y)])
    worst = float(errors.max()) if errors.size else 0.0
    return SelfCheck(len(fresh), len(held_x), worst, tolerance), answers, errors


def self_check_drawn(
    oracle: Oracle, network: ReLUNetwork, draw: Callable[[int], Array], count: int,
    held_x: Array, held_y: Array, tolerance: float, block: int = 8192,
) -> tuple[SelfCheck, Array]:
    """:func:`self_check` on ``count`` fresh points drawn ``block`` at a time by ``draw(n) →
    (n, d)`` (``count`` queries; one block of points is held at a time, not ``count × d``
    floats), and on the held answers. Returns the :class:`SelfCheck` and the points that failed
    it, fresh ones first ``(f, d)``."""
    top, worst, kept, gaps = 1.0, 0.0, [held_x[:0]], [np.zeros(0)]
    for start in range(0, count, block):
        fresh = draw(min(block, count - start))
        answers = np.asarray(oracle(fresh), dtype=np.float64)
        gap = np.max(np.abs(network.logits(fresh) - answers), axis=1)
        top, worst = max(top, float(np.max(np.abs(answers)))), max(worst, float(gap.max()))
        kept.append(fresh[gap > tolerance])  # fails for no scale, since it is at least 1
        gaps.append(gap[gap > tolerance])
    held = _relative_errors(network, held_x, held_y)
    failed = np.concatenate(kept)[np.concatenate(gaps) / top > tolerance]
    worst = max(worst / top, float(held.max()) if held.size else 0.0)
    return (SelfCheck(count, len(held_x), worst, tolerance),
            np.concatenate([failed, held_x[held > tolerance]]))
