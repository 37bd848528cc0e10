"""Weight recovery: first-layer rows from the difference of the Jacobians across a critical point.

Crossing hyperplane ``i`` changes only ReLU ``i``, so the Jacobians of the two adjacent linear
regions differ by a rank-one matrix (Jagielski et al. 2020, §6.4; Milli et al. 2019)::

    J(y_i > 0 side) - J(y_i < 0 side) = g_i r_iᵀ,    g_i = A(1)_i (the logit weights of unit i)

where ``r_i`` is the unit normal of the hyperplane. The paper extracts this difference one
coordinate at a time from second differences (§6.4.1) and recovers the signs of the entries from
directions ``e_j + e_k`` (§6.4.2); a rank-one fit of the whole difference gives the signed row
directly, and the fit's residual flags any coordinate whose probe crossed *another* hyperplane.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]

__all__ = ["RowFit", "fit_row"]


@dataclass(frozen=True)
class RowFit:
    """A rank-one fit ``D ≈ g rᵀ`` of a Jacobian difference ``D`` (``K × d``)."""

    row: Array  # (d,) unit norm
    out: Array  # (K,)
    residual: Array  # (d,) per-column residual norm
    noise: float  # robust per-column noise level (median residual)

    @property
    def error_estimate(self) -> float:
        """Estimated mean absolute error of the entries of the unit-norm row."""
        return float(np.sqrt(2 / np.pi) * self.noise / max(np.linalg.norm(self.out), 1e-300))

    def suspicious_columns(self, factor: float = 30.0) -> NDArray[np.int64]:
        """Columns whose residual is far above the noise: a probe crossed another hyperplane."""
        floor = 1e-14 * float(np.linalg.norm(self.out)) * float(np.max(np.abs(self.row)))
        return np.flatnonzero(self.residual > factor * max(self.noise, floor)).astype(np.int64)


def fit_row(diff: Array, orient: Array | None = None) -> RowFit:
    """Rank-one fit of ``diff`` (``K × d``); ``row`` is oriented so that ``row · orient >= 0``.

    With ``K = 1`` the fit is exact and the residual carries no information (zero).
    """
    diff = np.asarray(diff, dtype=np.float64)
    u, s, vt = np.linalg.svd(diff, full_matrices=False)
    row = vt[0].copy()
    if orient is not None and float(row @ orient) < 0:
        row = -row
    out = diff @ row
    residual = np.linalg.norm(diff - np.outer(out, row), axis=0)
    noise = float(np.median(residual)) if diff.shape[0] > 1 else 0.0
    return RowFit(row=row, out=out, residual=residual, noise=noise)
