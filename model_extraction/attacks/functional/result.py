"""What a functionally-equivalent extraction returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model_extraction.network import ReLUNetwork

__all__ = ["ExtractionError", "ExtractionResult", "PhaseCost"]


class ExtractionError(RuntimeError):
    """The attack could not produce a trustworthy model; the message says why and what to do."""


@dataclass
class PhaseCost:
    """Queries and wall time spent in one phase of the attack."""

    queries: int = 0
    seconds: float = 0.0


@dataclass
class ExtractionResult:
    """The extracted network and the cost of getting it.

    ``estimated_bits`` is the attack's own estimate of the precision of each recovered row of
    the first hidden layer (from the residuals of its fits; no access to the victim's
    weights), so it can be reported against a real API where the true weights are unknown;
    NaN for a row it cannot estimate (every row of a one-output victim, whose rank-one fits
    leave no residual). A deeper layer's rows are not estimated: the residuals
    of their fits do not see the errors carried up from the layers below, and can claim
    several bits more than the layer has (``docs/deep.md``). ``check`` is what the
    self-check measured before the model was returned (fresh in-domain ``points`` and held
    ``answers`` compared, ``max_error`` relative to the answers' scale, its ``tolerance``,
    ``passed``, and ``disagreement_bound``: see
    :attr:`~.selfcheck.SelfCheck.disagreement_bound`).
    """

    network: ReLUNetwork
    mode: str
    queries: int
    phases: dict[str, PhaseCost]
    lines: int
    estimated_bits: np.ndarray
    notes: list[str] = field(default_factory=list)
    check: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        """Total wall time of the attack."""
        return sum(p.seconds for p in self.phases.values())

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable summary."""
        bits = self.estimated_bits[np.isfinite(self.estimated_bits)]
        return {
            "mode": self.mode,
            "hidden": self.network.hidden,
            "queries": self.queries,
            "log2_queries": float(np.log2(max(self.queries, 1))),
            "lines": self.lines,
            "seconds": self.seconds,
            "phases": {k: {"queries": v.queries, "seconds": v.seconds}
                       for k, v in self.phases.items()},
            "estimated_bits_mean": float(np.mean(bits)) if bits.size else None,
            "estimated_bits_min": float(np.min(bits)) if bits.size else None,
            "affine_term": self.network.skip is not None,
            "self_check": dict(self.check),
            "notes": list(self.notes),
        }
