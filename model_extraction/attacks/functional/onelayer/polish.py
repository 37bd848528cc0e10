"""Joint least-squares polish of the network's layers from every Jacobian measured (no queries).

Once every hyperplane is approximately known, the activation pattern of each measured point is
known too, and every Jacobian the attack measured obeys one bilinear model (§6.4's structure,
used globally)::

    J(x) = B + Σ_k σ_k(x) g_k r_kᵀ,    σ_k(x) = [r_k · x + b_k > 0]

with ``B`` a constant ``K × d`` matrix. A unit's row was first fitted from the two Jacobians beside
one of its critical points; here all rows ``r_k`` and output vectors ``g_k`` are fitted jointly
to all the Jacobians, which averages the finite-difference noise of hundreds of them.

The fit is a Gauss–Newton step on the residuals of the current estimates (so rounding is relative
to the corrections, not to the weights themselves). A forward difference's noise is the oracle's
rounding over the step (measured: ``1.8e-16 |y| / step`` at the median, whatever the step), so
the inverse variance of an entry is its step squared; but the steps within one Jacobian vary by
orders of magnitude (each column gets the room its coordinate has), and the normal equations
below allow one weight per Jacobian. Each squared residual is weighted by its Jacobian's median
step, not its square: with the square, the hundreds of short-step Jacobians of the line search
outvoted the few long-step ones a refined unit rests on, and the polish made 512-unit victims
less precise (39.9 against 41.4 bits before it, on the victim of seed 1; 41.4 with this weight,
both refitted from the same saved Jacobians). A probe that crossed a
hyperplane (decidable now, without a query) and a probe much shorter than its Jacobian's typical
step are treated as missing: their residual is set to what the model predicts, which makes the
iteration converge linearly (as expectation–maximisation does), hence ten steps. With one
weight per Jacobian the normal equations of the rows share one matrix
across the ``d`` input coordinates, and the output vectors are solved for through its Schur
complement: one ``hK × hK`` system for all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ..jacobian import room_from
from .state import Measured, Run, Units

Array = NDArray[np.float64]

__all__ = ["Polished", "polish_layers", "polish_units"]


@dataclass(frozen=True)
class Polished:
    """Units re-fitted by :func:`polish_layers`."""

    rows: Array  # (h, d) unit norm, oriented as the input rows
    outs: Array  # (h, K) output vectors g_k for the unit-norm rows
    errors: Array  # (h,) estimated mean absolute error of the unit-norm rows' entries
    used: int  # observations (Jacobian, coordinate) used
    missing: int  # observations treated as missing


def polish_layers(
    points: Array,
    jacs: Array,
    steps: Array,
    rows: Array,
    biases: Array,
    outs: Array,
    *,
    iterations: int = 10,
    keep: float = 0.5,
) -> Polished:
    """Re-fit the rows and output vectors of all units jointly from the Jacobians ``jacs``
    (``M × K × d``) measured at ``points`` (``M × d``) with per-coordinate ``steps``
    (``M × d``, signed).

    ``rows`` (unit norm), ``biases`` and ``outs`` are the current estimates of the ``h`` units;
    the hyperplanes decide each point's activation pattern. ``iterations`` Gauss–Newton steps;
    a probe shorter than ``keep`` times its Jacobian's median step is left out.
    """
    m_count, k_out, d = jacs.shape
    size = np.abs(steps)
    typical = np.median(size, axis=1)
    forward, backward = room_from(points, rows, biases)
    crossed = size >= np.where(steps > 0, forward, backward)  # the probe met a hyperplane
    present = ~crossed & (size >= keep * typical[:, None])
    w2 = typical  # one weight per Jacobian (see the module docstring)
    # A unit on the same side at every (weighted) point is indistinguishable from the constant
    # B: it keeps its estimate, with no error estimate.
    sig_all = (points @ rows.T + biases > 0).astype(np.float64)
    q_all = sig_all.T @ w2
    free = np.flatnonzero(np.minimum(q_all, w2.sum() - q_all) > 1e-9 * w2.sum())
    all_rows, all_outs = rows.copy(), outs.copy()
    errors = np.full(len(rows), np.inf)
    if not len(free):
        return Polished(rows=all_rows, outs=all_outs, errors=errors, used=int(present.sum()),
                        missing=int((~present).sum()))
    rows, outs, sig = rows[free].copy(), outs[free].copy(), sig_all[:, free]
    h = len(free)
    pair = (sig * w2[:, None]).T @ sig  # T[k, l] = Σ_m w² σ_mk σ_ml
    q = sig.T @ w2  # Σ_m w² σ_mk
    total = float(w2.sum())
    eye = np.eye(k_out)
    inverse = np.zeros((k_out + h, k_out + h))
    for _ in range(iterations):
        # Residuals of the current model, its constant B re-fitted; missing entries set to 0.
        model = (sig @ (outs[:, :, None] * rows[:, None, :]).reshape(h, -1)).reshape(jacs.shape)
        e = jacs - model
        wk = w2[:, None] * present
        base = np.einsum("md,mkd->kd", wk, e) / np.maximum(wk.sum(axis=0), 1e-300)
        e = np.where(present[:, None, :], e - base[None], 0.0)
        # Per coordinate j, unknowns (ΔB[:, j], Δr_·j) share the matrix A.
        a_mat = np.block([[total * eye, q[None, :] * outs.T],
                          [(q[None, :] * outs.T).T, pair * (outs @ outs.T)]])
        inverse = np.linalg.inv(a_mat)
        big = ((sig * w2[:, None]).T @ e.reshape(m_count, -1)).reshape(h, k_out, d)
        r_b = np.einsum("m,mkd->kd", w2, e)
        r_r = np.einsum("hkd,hk->hd", big, outs)
        r_g = np.einsum("hkd,hd->hk", big, rows)
        # Coupling of Δg_(k,c) with coordinate j's unknowns: C_j = C_hat · diag(r_kj).
        c_hat = np.zeros((k_out + h, h, k_out))
        c_hat[:k_out] = (q[:, None, None] * eye[None]).transpose(1, 0, 2)
        c_hat[k_out:] = pair[:, :, None] * outs[:, None, :]
        c_hat = c_hat.reshape(k_out + h, h * k_out)
        gram_r = rows @ rows.T
        schur = np.kron(pair * gram_r, eye) - (c_hat.T @ inverse @ c_hat) * np.kron(
            gram_r, np.ones((k_out, k_out)))
        z = inverse @ np.concatenate([r_b, r_r])  # (K + h, d)
        rhs = r_g - np.einsum("hkd,hd->hk", (c_hat.T @ z).reshape(h, k_out, d), rows)
        # Scaling g_k up and r_k down changes nothing: pin Δg_k orthogonal to g_k, with a
        # penalty on each unit's own K × K block.
        unit_g = outs / np.maximum(np.linalg.norm(outs, axis=1, keepdims=True), 1e-300)
        scale = np.trace(schur) / (h * k_out)
        units = np.arange(h)
        schur.reshape(h, k_out, h, k_out)[units, :, units, :] += scale * (
            unit_g[:, :, None] * unit_g[:, None, :])
        dg = np.linalg.solve(schur, rhs.reshape(-1)).reshape(h, k_out)
        coupled = c_hat @ (dg[:, :, None] * rows[:, None, :]).reshape(h * k_out, d)
        step = inverse @ (np.concatenate([r_b, r_r]) - coupled)
        outs = outs + dg
        rows = rows + step[k_out:]
        norm = np.linalg.norm(rows, axis=1)
        rows, outs = rows / norm[:, None], outs * norm[:, None]
    # Noise per unit weight from the last residuals; the rows' variance from A⁻¹.
    dof = max(1, int(present.sum()) * k_out - (h + k_out) * d - h * k_out)
    sigma2 = float(np.sum(w2[:, None, None] * e**2) / dof)
    var = sigma2 * np.maximum(np.diagonal(inverse)[k_out:], 0.0)
    all_rows[free], all_outs[free] = rows, outs
    errors[free] = np.sqrt(2 / np.pi) * np.sqrt(var)
    return Polished(rows=all_rows, outs=all_outs, errors=errors, used=int(present.sum()),
                    missing=int((~present).sum()))


def polish_units(run: Run, units: Units, measured: Measured) -> None:
    """Re-fit all rows and output vectors jointly from every Jacobian measured
    (:func:`polish_layers`, no query). A unit keeps its estimate if the polished row moved
    further than its estimated error allows (a wrong activation pattern, say), or if the polish
    does not claim a smaller error for it: with hundreds of units the joint fit has not
    converged for every unit after its ten iterations."""
    rows, biases = np.array(units.rows), np.array(units.biases)
    try:
        got = polish_layers(np.array(measured.jac_points), np.array(measured.jacs),
                            np.array(measured.jac_steps), rows, biases, np.array(units.outs))
    except np.linalg.LinAlgError:
        run.notes.append("the joint polish was skipped: too few Jacobians for its system")
        return
    moved = np.abs(got.rows - rows).mean(axis=1)
    kept = unimproved = 0
    for i in range(len(units)):
        if not (moved[i] <= max(1e-8, 64 * units.errors[i]) and np.isfinite(got.errors[i])):
            kept += 1
            continue
        if not got.errors[i] < units.errors[i]:
            unimproved += 1
            continue
        units.rows[i] = got.rows[i]
        units.outs[i] = got.outs[i]
        units.biases[i] = -float(got.rows[i] @ units.points[i])
        units.errors[i] = float(got.errors[i])
    if kept:
        run.notes.append(f"the joint polish moved {kept} rows too far; they kept their "
                         "first estimate")
    if unimproved:
        run.notes.append(f"the joint polish did not improve the estimated error of "
                         f"{unimproved} rows; they kept their first estimate")
