"""A singular value decomposition that does not stop a run where LAPACK's divide-and-conquer
driver (``gesdd``, numpy's) does not converge, on rare finite matrices: the slower
QR-iteration driver (``gesvd``, scipy's) answers there. The phases where such a failure was
met or where one would stop a layer use it (the joint solve, :mod:`.joint`; the row space of
:mod:`.critical`)."""

from __future__ import annotations

import numpy as np
import scipy.linalg
from numpy.typing import NDArray

Array = NDArray[np.float64]

__all__ = ["thin_svd"]


def thin_svd(a: Array) -> tuple[Array, Array, Array]:
    """``u`` ``(m, k)``, ``s`` ``(k,)`` (descending), ``vt`` ``(k, n)`` of ``a`` ``(m, n)``,
    ``k = min(m, n)``. Raises :class:`numpy.linalg.LinAlgError` when neither driver
    converges, and ``ValueError`` for a non-finite ``a`` (numpy's driver fails on it, and
    scipy's refuses it: callers test that first)."""
    try:
        return np.linalg.svd(a, full_matrices=False)
    except np.linalg.LinAlgError:  # gesdd does not converge on rare matrices
        return scipy.linalg.svd(a, full_matrices=False, lapack_driver="gesvd")
