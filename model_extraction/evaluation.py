"""How well an extraction worked: fidelity, weight precision, logit error (§6.7, Table 6).

* fidelity: agreement of the decisions of victim and extracted model (the argmax, or the sign of
  the one logit of a binary classifier, ``K = 1``), on a test set and on uniform random inputs
  from the input box, the domain the extraction promises;
* weights: the victim's units whose hyperplane meets the box (the others are constant there, and
  an extraction on the box sees them only through its affine term) are aligned to the extracted
  ones (a permutation, and a positive scale per unit: rows are compared at unit norm, since a row
  is only defined up to a positive factor), then the max and mean absolute error of the first
  layer and its bits of precision, ``-log2(mean absolute error)``, overall and for the worst unit;
* the largest logit error over the random inputs, as ``log2`` (the worst-case measure of the
  cryptanalytic literature); for models extracted from probabilities, whose logits are the
  victim's up to a constant per input, after centring each row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment

from model_extraction.network import ReLUNetwork

__all__ = ["agreement", "align_units", "compare_networks", "units_crossing_box"]

Array = NDArray[np.float64]


def agreement(a: NDArray[Any], b: NDArray[Any]) -> float:
    """Fraction of inputs on which two label vectors agree."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"label arrays differ in shape: {a.shape} vs {b.shape}")
    return float(np.mean(a == b)) if a.size else float("nan")


def units_crossing_box(
    network: ReLUNetwork, input_bounds: tuple[float, float] = (0.0, 1.0)
) -> NDArray[np.bool_]:
    """Which hidden units change state on the box ``[lo, hi]^d``: shape ``(h,)``.

    A unit's pre-activation is affine, so its extremes over the box are at vertices:
    ``Σ_j min(w_j lo, w_j hi) + b`` and the same with ``max``. A unit whose range does not
    contain 0 is active everywhere on the box or nowhere, and no query inside it can tell it
    from an affine term.
    """
    lo, hi = input_bounds
    w, b = network.weight0, network.bias0
    low = np.sum(np.minimum(w * lo, w * hi), axis=1) + b
    high = np.sum(np.maximum(w * lo, w * hi), axis=1) + b
    return (low < 0) & (high > 0)


def align_units(
    victim: ReLUNetwork, extracted: ReLUNetwork, units: NDArray[np.bool_] | None = None
) -> tuple[NDArray[np.int64], Array]:
    """Match each first-layer unit of the victim to one of the extracted model's first layer by
    the cosine of their rows.

    ``units`` (a mask over the victim's units) limits the matching to those units. Returns
    ``match`` (index of the extracted unit for each victim unit, ``-1`` if none) and the cosine of
    each matched pair (negative means the extracted row has the wrong sign).
    """
    a = victim.weight0 / np.linalg.norm(victim.weight0, axis=1, keepdims=True)
    b = extracted.weight0 / np.linalg.norm(extracted.weight0, axis=1, keepdims=True)
    h = len(victim.bias0)
    idx = np.arange(h) if units is None else np.flatnonzero(units)
    cos = a[idx] @ b.T
    rows, cols = linear_sum_assignment(-np.abs(cos))
    match = np.full(h, -1, dtype=np.int64)
    match[idx[rows]] = cols
    cosine = np.full(h, np.nan)
    cosine[idx[rows]] = cos[rows, cols]
    return match, cosine


def _json_width(net: ReLUNetwork) -> int | list[int]:
    return net.hidden if net.depth == 1 else list(net.widths)


def compare_networks(
    victim: ReLUNetwork,
    extracted: ReLUNetwork,
    *,
    test_inputs: Array | None = None,
    input_bounds: tuple[float, float] = (0.0, 1.0),
    n_uniform: int = 10_000,
    seed: int = 0,
    up_to_constant: bool = False,
) -> dict[str, Any]:
    """All of the project's fidelity and precision measures, as a JSON-serialisable dict.

    ``victim`` and ``extracted`` are ReLU networks (the extracted one may carry an affine term;
    the unit alignment and the weight errors are those of the first hidden layer);
    ``test_inputs`` an ``(n, d)`` array; fidelity is measured on ``n_uniform`` points drawn
    uniformly from the box ``input_bounds``. ``up_to_constant``: the extracted logits are the
    victim's up to a constant per input (extraction from probabilities), so the logit error is
    measured after centring each row. Fidelities are fractions in ``[0, 1]``, errors absolute,
    bits ``-log2`` of the mean absolute error of unit-norm rows. When both networks have the
    same depth, two hidden layers or more, ``"layers"`` holds each hidden layer's precision
    (:func:`layer_precision`: units matched, wrong signs, worst and mean bits).
    """
    rng = np.random.default_rng(seed)
    lo, hi = input_bounds
    uniform = rng.uniform(lo, hi, (n_uniform, victim.input_dim))
    crossing = units_crossing_box(victim, input_bounds)
    out: dict[str, Any] = {
        "hidden": _json_width(victim),
        "hidden_extracted": _json_width(extracted),
        "units_crossing_box": int(crossing.sum()),
        "affine_term": extracted.skip is not None,
        "parameters": victim.num_parameters,
        "fidelity_uniform": agreement(victim.predict(uniform), extracted.predict(uniform)),
    }
    if test_inputs is not None:
        t = np.asarray(test_inputs, dtype=np.float64).reshape(len(test_inputs), -1)
        out["fidelity_test"] = agreement(victim.predict(t), extracted.predict(t))
        out["test_inputs"] = len(t)
    gap = victim.logits(uniform) - extracted.logits(uniform)
    if up_to_constant:
        gap -= gap.mean(axis=1, keepdims=True)
    logit_err = float(np.max(np.abs(gap)))
    out["max_logit_error"] = logit_err
    out["log2_max_logit_error"] = float(np.log2(logit_err)) if logit_err > 0 else float("-inf")

    match, cosine = align_units(victim, extracted, crossing)
    ok = match >= 0
    a = victim.weight0 / np.linalg.norm(victim.weight0, axis=1, keepdims=True)
    b = extracted.weight0 / np.linalg.norm(extracted.weight0, axis=1, keepdims=True)
    err = np.abs(a[ok] - b[match[ok]])
    per_unit = err.mean(axis=1)
    out.update(
        {
            "units_matched": int(ok.sum()),
            "wrong_signs": int(np.sum(cosine[ok] < 0)),
            "max_abs_weight_error": float(err.max()) if err.size else float("nan"),
            "mean_abs_weight_error": float(err.mean()) if err.size else float("nan"),
            "mean_bits": float(-np.log2(max(err.mean(), 2.0**-80))) if err.size else 0.0,
            "worst_unit_bits": float(-np.log2(max(per_unit.max(), 2.0**-80)))
            if err.size else 0.0,
        }
    )
    if victim.depth > 1 and victim.depth == extracted.depth:
        out["layers"] = layer_precision(victim, extracted)
    return out


def layer_precision(victim: ReLUNetwork, extracted: ReLUNetwork) -> list[dict[str, Any]]:
    """The precision of every hidden layer of a deep extraction, layer by layer.

    Units are matched by the cosine of their rows, then each victim row is carried into the
    extracted model's coordinates of the layer below (each unit there equals a positive multiple
    of a victim unit; a victim unit with no match there is left out of the rows above, an
    extracted unit with none gets weight 0) and compared with its match as unit-norm rows. Per
    hidden layer: units matched (fewer than the victim's width when units were not found),
    wrong orientations, and bits (``-log2`` of the worst and of the mean absolute error of a
    unit-norm row entry, over the matched units). Raises ``ValueError`` when the depths differ.
    """
    if victim.depth != extracted.depth:
        raise ValueError(f"depths differ: victim {victim.widths}, extracted {extracted.widths}")
    out = []
    below = (np.arange(victim.input_dim), np.arange(victim.input_dim),
             np.ones(victim.input_dim))
    for (wv, _), (we, _) in zip(victim.layers[:-1], extracted.layers[:-1], strict=True):
        mine, theirs, scale = below
        carried = np.zeros((len(wv), we.shape[1]))
        carried[:, theirs] = wv[:, mine] * scale  # the victim's rows on the extracted units below
        a = carried / np.linalg.norm(carried, axis=1, keepdims=True)
        b = we / np.linalg.norm(we, axis=1, keepdims=True)
        cos = a @ b.T
        rows, cols = linear_sum_assignment(-np.abs(cos))
        err = np.abs(a[rows] - b[cols] * np.sign(cos[rows, cols])[:, None])
        out.append({"units_matched": len(rows), "wrong_signs": int(np.sum(cos[rows, cols] < 0)),
                    "worst_bits": float(-np.log2(max(err.max(), 2.0**-80))),
                    "mean_bits": float(-np.log2(max(err.mean(), 2.0**-80)))})
        below = (rows, cols, np.linalg.norm(carried[rows], axis=1)
                 / np.linalg.norm(we[cols], axis=1))
    return out
