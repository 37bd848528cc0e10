"""Global sign recovery (§6.5) and last-layer extraction (§6.6).

A critical point fixes a hyperplane but not which side of it the ReLU is active on. Two methods:

* :func:`signs_from_jacobians` (default, no queries): every Jacobian already measured is
  ``J = Σ_i A(1)_i [unit i active] σ_i r_iᵀ``. Expressed in the basis of the recovered rows
  (``C = J R⁺``, which needs the rows to be linearly independent, as §6.1 assumes), column ``i``
  of ``C`` is ``σ_i g_i`` where unit ``i`` is active and ``0`` where it is not; which of the two
  is seen, given the side of hyperplane ``i`` the Jacobian was measured on, is the sign.
* :func:`signs_from_nullspace` (the paper's mode): from the critical point of unit ``i``, step
  along ``w_i = R⁺ e_i``, a direction that moves unit ``i``'s pre-activation and leaves every other
  unit's unchanged (it is defined up to the null space of ``R``, §6.5). Only on the active side
  does the output change: 2 queries per unit.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linprog

from model_extraction.oracle import Oracle

from .domain import Domain
from .prefix import Prefix

Array = NDArray[np.float64]

__all__ = ["fit_last_layer", "signs_by_preimage", "signs_from_jacobians",
           "signs_from_next_layer", "signs_from_nullspace"]


def signs_from_jacobians(
    rows: Array, biases: Array, outs: Array, points: Array, jacs: Array
) -> tuple[Array, Array]:
    """Signs ``σ`` (``±1``, shape ``(h,)``) from Jacobians ``jacs`` (``m × K × d``) at ``points``.

    ``rows`` are unit normals ``r_i`` with biases ``β_i`` (so ``y_i = r_i·x + β_i``) and ``outs``
    the ``(h, K)`` vectors ``g_i``. Returns the signs and a per-unit confidence in ``[0, 1]``
    (the worst distance of a vote from the 0/1 decision boundary, doubled).
    """
    m, k, d = jacs.shape
    # Solve C R = J for every Jacobian at once: Rᵀ Cᵀ = Jᵀ, with (m K) right-hand sides.
    coeffs = np.linalg.lstsq(rows.T, jacs.reshape(m * k, d).T, rcond=None)[0]  # (h, m K)
    c = coeffs.T.reshape(m, k, -1)
    y = points @ rows.T + biases  # (m, h)
    g2 = np.einsum("hk,hk->h", outs, outs)
    # Column i of C is σ_i g_i where unit i is active and 0 elsewhere, so its score along g_i is
    # 1 or 0 on the side y_i > 0 (σ = +1 or -1) and 0 or -1 on the side y_i < 0.
    score = np.einsum("mkh,hk->mh", c, outs) / g2
    active_if_positive = np.where(y > 0, score, 1.0 + score)  # ≈ 1 ⇒ σ = +1, ≈ 0 ⇒ σ = -1
    weight = np.abs(y) > 1e-12 * (1 + np.abs(biases))
    votes = np.where(weight, active_if_positive, 0.5)
    mean = votes.sum(0) / np.maximum(weight.sum(0), 1)
    signs = np.where(mean >= 0.5, 1.0, -1.0)
    confidence = np.abs(mean - 0.5) * 2
    return signs, confidence


def signs_from_nullspace(
    oracle: Oracle, rows: Array, points: Array, values: Array, step: float
) -> Array:
    """Paper-mode global sign recovery: 2 queries per unit from its critical point ``points[i]``.

    ``values`` are the outputs at ``points`` (already paid for).
    """
    w = np.linalg.pinv(rows)  # (d, h): rows @ w = I
    w = w / np.linalg.norm(w, axis=0, keepdims=True)
    h = rows.shape[0]
    probes = np.concatenate([points + step * w.T, points - step * w.T])
    out = np.asarray(oracle(probes), dtype=np.float64)
    up = np.linalg.norm(out[:h] - values, axis=1)
    down = np.linalg.norm(out[h:] - values, axis=1)
    return np.where(up >= down, 1.0, -1.0)


def fit_last_layer(
    weight0: Array, bias0: Array, x: Array, y: Array
) -> tuple[Array, Array, float]:
    """Least squares for ``A(1), B(1)`` from queries already answered (§6.6).

    Returns the weights ``(K, h)``, the bias ``(K,)`` and the relative residual of the fit.
    """
    hidden = np.maximum(x @ weight0.T + bias0, 0.0)
    design = np.concatenate([hidden, np.ones((len(x), 1))], axis=1)
    scale = np.maximum(np.abs(design).max(axis=0), 1e-300)
    sol, *_ = np.linalg.lstsq(design / scale, y, rcond=None)
    sol = sol / scale[:, None]
    resid = float(np.max(np.abs(design @ sol - y)) / max(float(np.max(np.abs(y))), 1e-300))
    return sol[:-1].T.copy(), sol[-1].copy(), resid


def signs_from_next_layer(rows: Array, offsets: Array, points: Array,
                          normals: Array) -> tuple[Array, NDArray[np.bool_]]:
    """Orientations of a contractive layer (``h ≤ d``) from the next layer's critical points
    (the preimage argument of Carlini et al., CRYPTO 2020, §4.4, with unit rows).

    At a critical point of a next-layer neuron the normal is ``g = Σ_{i active} v_i σ_i r_i``:
    expressed in the basis of the ``rows`` ``(h, d)`` (unique when they are independent), its
    coefficient on row ``i`` is non-zero exactly where unit ``i`` is active. Which side of
    hyperplane ``i`` the point lies on then says the sign; every point votes. ``points`` and
    ``normals`` are ``(m, d)``. Returns the signs ``(h,)`` and which points were consistent with
    the layer (normal inside the rows' span; the others belong to no next-layer neuron).

    Raises ``ValueError`` for an expansive layer (``h > d``): the coefficients are then not
    unique (deep extraction refuses an expansive first layer below others).
    """
    h, d = rows.shape
    if h > d:
        raise ValueError(f"sign recovery by preimages needs a contractive layer (h <= d); this "
                         f"one has {h} units on {d} inputs")
    coef, *_ = np.linalg.lstsq(rows.T, normals.T, rcond=None)  # (h, m)
    inside = np.linalg.norm(rows.T @ coef - normals.T, axis=0) <= 1e-6
    side = np.sign(points @ rows.T + offsets).T  # (h, m)
    active = np.abs(coef) > 1e-6 * np.abs(coef).max(axis=0, keepdims=True)
    votes = np.sum(np.where(active, side, -side)[:, inside], axis=1)
    return np.where(votes >= 0, 1.0, -1.0), inside


def all_active(prefix: Prefix, rows: Array,
                biases: Array) -> tuple[Array, Array, list[tuple[Array, Array]]]:
    """Where every unit of ``prefix`` is active, its layers are affine in the first layer's
    activations ``a``: layer ``l ≥ 2`` is ``M_l a + m_l`` (the ``constraints``) and the layer
    ``rows``, ``biases`` on top of it is ``P a + q``. Returns ``P``, ``q``, the constraints."""
    h1 = len(prefix.layers[0][1])
    m_mat, m_vec, constraints = np.eye(h1), np.zeros(h1), []
    for w, b in prefix.layers[1:]:
        m_mat, m_vec = w @ m_mat, w @ m_vec + b
        constraints.append((m_mat, m_vec))
    return rows @ m_mat, rows @ m_vec + biases, constraints


def preimage(p_row: Array, q: float, constraints: list[tuple[Array, Array]], bound: float,
              rng: np.random.Generator) -> tuple[Array, float] | None:
    """First-layer activations ``a`` ``(h1,)`` in ``[0, bound]`` with ``p_row · a + q = 0`` and
    every first-layer unit and every ``constraints`` row held by a margin ``t`` (``a ≥ t``, ``M
    a + m ≥ t`` for each ``(M, m)``: the prefix's deeper units active, from
    :func:`all_active`, and any other affine condition): the largest margin is found first,
    then a random vertex with at least half of it (so that tries land in different places):
    ``(a, t)``, or ``None`` when no such point exists."""
    h1 = len(p_row)
    upper = [np.hstack([-np.eye(h1), np.ones((h1, 1))])]
    limits = [np.zeros(h1)]
    for m_mat, m_vec in constraints:
        upper.append(np.hstack([-m_mat, np.ones((len(m_vec), 1))]))
        limits.append(m_vec)
    problem = {"A_ub": np.vstack(upper), "b_ub": np.concatenate(limits),
               "A_eq": np.append(p_row, 0.0)[None], "b_eq": [-q], "method": "highs"}
    res = linprog(-np.eye(h1 + 1)[-1], bounds=[(0.0, bound)] * (h1 + 1), **problem)
    if res.status != 0 or res.x[-1] <= 1e-6 * bound:
        return None
    tilt = np.append(rng.standard_normal(h1), 0.0)
    res = linprog(tilt, bounds=[(0.0, bound)] * h1 + [(0.5 * res.x[-1], bound)], **problem)
    return None if res.status != 0 else (res.x[:-1], float(res.x[-1]))


def preimage_in_box(p_row: Array, q: float, constraints: list[tuple[Array, Array]],
                    first: tuple[Array, Array], domain: Domain,
                    rng: np.random.Generator) -> tuple[Array, float] | None:
    """:func:`preimage` for an API that enforces a box: inputs ``x`` ``(d,)`` in the box
    shrunk by ``1%`` of its width on every side, whose first-layer activations ``a = W1 x +
    b1`` (``first = (W1, b1)``) meet the same conditions (a linear program in ``x``): ``(x,
    t)``, or ``None`` when the box holds no such point."""
    w1, b1 = first
    d, lead = w1.shape[1], 0.01 * domain.width
    upper = [np.hstack([-w1, np.ones((len(b1), 1))])]
    limits = [b1]
    for m_mat, m_vec in constraints:
        upper.append(np.hstack([-m_mat @ w1, np.ones((len(m_vec), 1))]))
        limits.append(m_mat @ b1 + m_vec)
    problem = {"A_ub": np.vstack(upper), "b_ub": np.concatenate(limits),
               "A_eq": np.append(p_row @ w1, 0.0)[None], "b_eq": [-q - p_row @ b1],
               "method": "highs"}
    box = [(domain.lo + lead, domain.hi - lead)] * d
    res = linprog(-np.eye(d + 1)[-1], bounds=[*box, (0.0, None)], **problem)
    if res.status != 0 or res.x[-1] <= 1e-6 * domain.width:
        return None
    tilt = np.append(rng.standard_normal(d), 0.0)
    res = linprog(tilt, bounds=[*box, (0.5 * res.x[-1], None)], **problem)
    return None if res.status != 0 else (res.x[:-1], float(res.x[-1]))


def how_far_moved(y: Array) -> tuple[Array, float]:
    """How far each probe of ``y`` (the answers at ``x``, ``x ± εΔ``, ``x ± εΔ/16``) moved the
    logits from ``x`` ``(4,)``, and the least move that is not rounding."""
    return np.linalg.norm(y[1:] - y[0], axis=1), 1e-6 * (1.0 + np.abs(y).max())


def side_that_moved(y: Array) -> float:
    """``+1`` or ``-1`` when exactly one side of the probe moved the logits (``y``: the answers
    at ``x``, ``x ± εΔ``, ``x ± εΔ/16``), linearly in ``ε``; ``nan`` when both sides moved
    linearly (a unit of the layer that the step did not hold still: one is missing); ``0``
    when undecided (nothing moved, or not linearly: another kink within the step)."""
    moved, least = how_far_moved(y)  # up, down, up/16, down/16

    def linear(big: float, small: float) -> bool:
        return big > least and abs(big / max(small, 1e-300) - 16.0) <= 0.16

    for side, (big, small, big16, small16) in ((1.0, moved), (-1.0, moved[[1, 0, 3, 2]])):
        if linear(big, big16) and small <= 1e-4 * big and small16 <= 1e-4 * big:
            return side
    return np.nan if linear(moved[0], moved[2]) and linear(moved[1], moved[3]) else 0.0


def signs_by_preimage(oracle: Oracle, prefix: Prefix, rows: Array, biases: Array,
                      rng: np.random.Generator, *, bound: float = 1.0,
                      tries: int = 8, domain: Domain | None = None) -> Array:
    """Orientations of a middle layer (rows ``(h, h_{T})`` and biases ``(h,)`` on top of the
    oriented ``prefix``) by preimages (Carlini et al., CRYPTO 2020, §4.4), exact and with no
    search over ``2^h``.

    For each unit ``j`` a linear program finds first-layer activations, all active, with every
    prefix unit active too and unit ``j`` exactly at 0; in that region the layer is affine in
    them (``P a + q``), so the step ``δ = P⁺ e_j`` moves unit ``j`` alone. Its input-space
    preimage ``Δ`` (first layer: ``h_1 ≤ d``) is probed both ways at two lengths: only the side
    where unit ``j`` is active moves the logits. A point where the unit's effect does not reach
    the output is tried again elsewhere, ``tries`` times. ``bound`` caps the activations
    (the spread of the queries). Costs 5 queries per unit and try.

    Returns the signs ``(h,)``: 0 for a unit left undecided, ``nan`` for one whose probes moved
    the logits on both sides at every point tried (a unit not in ``rows`` moved: the layer is
    incomplete). In a bounded ``domain`` the points are found in the box
    (:func:`preimage_in_box`) and the probes kept in it. Raises ``ValueError`` when the layer
    is wider than what the layers below let through where all are active (``P`` has no right
    inverse: :mod:`.wiggle` orients such a layer).
    """
    p_mat, q, constraints = all_active(prefix, rows, biases)
    delta, *_ = np.linalg.lstsq(p_mat, np.eye(len(rows)), rcond=None)  # (h1, h)
    if np.abs(p_mat @ delta - np.eye(len(rows))).max() > 1e-8:
        raise ValueError(f"a middle layer of {len(rows)} units on top of layers of widths "
                         f"{prefix.widths}: sign recovery by preimages needs it contractive")
    w1, b1 = prefix.layers[0]
    back = np.linalg.pinv(w1)  # (d, h1): first-layer activations to inputs
    signs = np.zeros(len(rows))
    for _ in range(tries):
        pending = np.flatnonzero((signs == 0) | np.isnan(signs))
        probes, units = [], []
        for j in pending:
            reach = max([np.abs(delta[:, j]).max()]
                        + [np.abs(m @ delta[:, j]).max() for m, _ in constraints])
            if domain is not None and domain.bounded:
                found = preimage_in_box(p_mat[j], float(q[j]), constraints, (w1, b1), domain,
                                        rng)
                if found is None:
                    continue
                x, margin = found
                move = back @ delta[:, j]
                eps = min(0.25 * margin / reach,
                          0.5 * 0.01 * domain.width / max(np.abs(move).max(), 1e-300))
                steps = np.array([0.0, eps, -eps, eps / 16, -eps / 16])
                probes.append(x[None] + steps[:, None] * move)
            else:
                found = preimage(p_mat[j], float(q[j]), constraints, bound, rng)
                if found is None:
                    continue
                a, margin = found
                eps = 0.25 * margin / reach
                steps = np.array([0.0, eps, -eps, eps / 16, -eps / 16])
                probes.append(((a - b1)[None] + steps[:, None] * delta[:, j]) @ back.T)
            units.append(j)
        if not units:
            break
        y = np.asarray(oracle(np.concatenate(probes)), dtype=np.float64).reshape(
            len(units), 5, -1)
        for j, answers in zip(units, y, strict=True):
            signs[j] = side_that_moved(answers)
        if np.all(np.abs(signs) == 1):
            break
    return signs


def signs_beside_linear(rows: Array, offsets: Array, linear: Array, points: Array,
                        normals: Array, least: int = 3) -> tuple[Array, Array]:
    """Orientations of a contractive first layer ``rows`` ``(h, d)``, ``offsets`` ``(h,)``
    beside ``k`` units active everywhere the attack queried, known only by directions
    ``linear`` ``(k, d)`` off the rows' span (:func:`.layers.active_throughout`), from deeper
    neurons' critical points ``points`` and unit ``normals`` ``(m, d)``; and those units' rows.

    A deeper normal is ``g = Σ_{i active} c_i r_i + Σ_u c_u w_u``, ``w_u = Σ_j B_uj r_j +
    Σ_v Γ_uv e_v`` for the units ``u`` active throughout. In the basis of the rows and the
    directions ``e``, its coefficient on an inactive row ``j`` is ``c_Eᵀ m_j`` (``c_E``: its
    coefficients on ``e``; ``m_j = Γ⁻¹ B_j``, the same at every point), on an active one that
    plus ``c_j``: on the side of hyperplane ``j`` where the unit is inactive the coefficients
    fit ``c_Eᵀ m_j`` (at ``least`` points or more, 9 in 10 of them within ``1e-6`` of the
    largest coefficient), which orients it, and ``m_j`` gives the rows ``e_v + Σ_j m_jv r_j``,
    which span what the units active throughout do (with ``k = 0``, the coefficients vanish
    on the inactive side: the preimage argument of :func:`signs_from_next_layer`).

    Returns the signs ``(h,)`` (0 where neither side or both fit) and the rows ``(k, d)``."""
    h, k = len(rows), len(linear)
    basis = np.vstack([rows, linear])
    coef, *_ = np.linalg.lstsq(basis.T, normals.T, rcond=None)  # (h + k, m)
    inside = np.linalg.norm(basis.T @ coef - normals.T, axis=0) <= 1e-6
    coef, at = coef[:, inside], points[inside]
    c_e = coef[h:].T  # (m, k)
    tol = 1e-6 * np.abs(coef).max(axis=0)  # per point
    side = np.sign(at @ rows.T + offsets)  # (m, h)
    signs, m = np.zeros(h), np.zeros((h, k))
    for j in range(h):
        fits = {}
        for s in (1.0, -1.0):
            pts = side[:, j] == s
            if pts.sum() < max(least, k + 2):
                continue
            mj = (np.linalg.lstsq(c_e[pts], coef[j, pts], rcond=None)[0] if k
                  else np.zeros(0))
            good = np.abs(coef[j, pts] - c_e[pts] @ mj) <= tol[pts]
            if good.mean() >= 0.9:
                fits[s] = mj
        if len(fits) == 1:
            (s, mj), = fits.items()
            signs[j], m[j] = -s, mj  # inactive where r·x + c has sign s
    return signs, linear + m.T @ rows
