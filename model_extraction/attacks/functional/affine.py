"""The output layer of the extracted model, with its affine term (§6.6, extended).

The units recovered so far give rows ``r_k`` (unit norm), biases ``β_k`` and output vectors
``g_k = J(y_k > 0) - J(y_k < 0)`` (the Jacobian jump across the hyperplane, which does not depend
on the orientation chosen for the row). The model is

    ``f(x) = Σ_k g_k ReLU(r_k·x + β_k) + S x + c``

and on a bounded domain ``S`` is needed: a unit active on the whole domain, a mirrored pair
``ReLU(z)``, ``ReLU(-z)``, and any unit kept with the opposite orientation
(``g ReLU(-z) = g ReLU(z) - g z``) all add an affine map. Every Jacobian measured is
``J(x) = Σ_k [y_k(x) > 0] g_k r_kᵀ + S``, so ``S`` follows from the Jacobians already paid for and
``c`` from the values: no query, and no least squares in which a feature active on most answered
points is nearly collinear with ``x``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]

__all__ = ["fit_output_layer"]

_ROUND_OFF = 1e-12  # relative errors below this are float64 round-off of the fit


def fit_output_layer(
    rows: Array, biases: Array, outs: Array, jac_points: Array, jacs: Array, x: Array, y: Array
) -> tuple[Array, Array, Array | None, float]:
    """Output weights, output bias and affine term of the extracted model.

    Parameters
    ----------
    rows, biases, outs:
        ``(h, d)`` oriented rows, ``(h,)`` biases and ``(h, K)`` output vectors.
    jac_points, jacs:
        ``(m, d)`` points and their ``(m, K, d)`` measured Jacobians.
    x, y:
        ``(n, d)`` answered queries and their ``(n, K)`` answers.

    Returns ``weight1 (K, h)``, ``bias1 (K,)``, ``skip (K, d)`` or ``None`` when the model without
    an affine term reproduces the answers as well (to a factor 2, or to round-off, 1e-12),
    and the largest error on the answers relative to their scale. ``S`` is the element-wise
    median over the Jacobians (a probe that crossed a hyperplane spoils its own Jacobian, not
    the median).
    """
    w1 = outs.T.copy()
    active = (jac_points @ rows.T + biases) > 0  # (m, h)
    explained = np.einsum("mh,hk,hd->mkd", active.astype(np.float64), outs, rows)
    skip = np.median(jacs - explained, axis=0)
    hidden = np.maximum(x @ rows.T + biases, 0.0) @ w1.T
    scale = max(float(np.max(np.abs(y))), 1.0)
    plain_bias = np.median(y - hidden, axis=0)
    plain_error = float(np.max(np.abs(hidden + plain_bias - y))) / scale
    with_skip = hidden + x @ skip.T
    bias = np.median(y - with_skip, axis=0)
    error = float(np.max(np.abs(with_skip + bias - y))) / scale
    # not for an error at round-off (a term of 1e-13 fitted to it is noise, not a unit)
    if plain_error <= max(2.0 * error, _ROUND_OFF):
        return w1, plain_bias, None, plain_error
    return w1, bias, skip, error
