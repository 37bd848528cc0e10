"""The singular value decomposition the phases share: LAPACK's divide-and-conquer driver
(``gesdd``, numpy's), and where it does not converge, on rare finite matrices, the slower
QR-iteration driver (``gesvd``, scipy's), which converges where ``gesdd`` does not."""

from __future__ import annotations

import numpy as np
import scipy.linalg
from numpy.typing import NDArray

Array = NDArray[np.float64]

__all__ = ["thin_svd"]


def thin_svd(a: Array) -> tuple[Array, Array, Array]:
    """``u`` ``(m, k)``, ``s`` ``(k,)`` (descending), ``vt`` ``(k, n)`` of ``a`` ``(m, n)``,
    ``k = min(m, n)``. Raises :class:`numpy.linalg.LinAlgError` only when neither driver
    converges (``ValueError`` for a non-finite ``a``: callers test that first)."""
    try:
        return np.linalg.svd(a, full_matrices=False)
    except np.linalg.LinAlgError:  # gesdd does not converge on rare matrices
        return scipy.linalg.svd(a, full_matrices=False, lapack_driver="gesvd")
