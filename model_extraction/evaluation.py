"""How well an extraction worked: fidelity, weight precision, logit error (§6.7, Table 6).

* fidelity: agreement of the predicted labels of victim and extracted model, on a test set and
  on uniform random inputs from the input box;
* weights: extracted units are aligned to the victim's (a permutation, and a positive scale per
  unit: rows are compared at unit norm, since a row is only defined up to a positive factor), then
  the max and mean absolute error of the first layer and its bits of precision,
  ``-log2(mean absolute error)``, overall and for the worst unit;
* the largest logit error over the random inputs, as ``log2`` (the worst-case measure of the
  cryptanalytic literature).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment

from model_extraction.network import ReLUNetwork

__all__ = ["agreement", "align_units", "compare_networks"]

Array = NDArray[np.float64]


def agreement(a: NDArray[Any], b: NDArray[Any]) -> float:
    """Fraction of inputs on which two label vectors agree."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"label arrays differ in shape: {a.shape} vs {b.shape}")
    return float(np.mean(a == b)) if a.size else float("nan")


def align_units(victim: ReLUNetwork, extracted: ReLUNetwork) -> tuple[NDArray[np.int64], Array]:
    """Match each victim unit to an extracted unit by the cosine of their rows.

    Returns ``match`` (index of the extracted unit for each victim unit, ``-1`` if none) and the
    cosine of each matched pair (negative means the extracted row has the wrong sign).
    """
    a = victim.weight0 / np.linalg.norm(victim.weight0, axis=1, keepdims=True)
    b = extracted.weight0 / np.linalg.norm(extracted.weight0, axis=1, keepdims=True)
    cos = a @ b.T
    rows, cols = linear_sum_assignment(-np.abs(cos))
    match = np.full(victim.hidden, -1, dtype=np.int64)
    match[rows] = cols
    cosine = np.full(victim.hidden, np.nan)
    cosine[rows] = cos[rows, cols]
    return match, cosine


def compare_networks(
    victim: ReLUNetwork,
    extracted: ReLUNetwork,
    *,
    test_inputs: Array | None = None,
    input_bounds: tuple[float, float] = (0.0, 1.0),
    n_uniform: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """All of the project's fidelity and precision measures, as a JSON-serialisable dict."""
    rng = np.random.default_rng(seed)
    lo, hi = input_bounds
    uniform = rng.uniform(lo, hi, (n_uniform, victim.input_dim))
    out: dict[str, Any] = {
        "hidden": victim.hidden,
        "hidden_extracted": extracted.hidden,
        "parameters": victim.num_parameters,
        "fidelity_uniform": agreement(victim.predict(uniform), extracted.predict(uniform)),
    }
    if test_inputs is not None:
        t = np.asarray(test_inputs, dtype=np.float64).reshape(len(test_inputs), -1)
        out["fidelity_test"] = agreement(victim.predict(t), extracted.predict(t))
        out["test_inputs"] = len(t)
    logit_err = float(np.max(np.abs(victim.logits(uniform) - extracted.logits(uniform))))
    out["max_logit_error"] = logit_err
    out["log2_max_logit_error"] = float(np.log2(logit_err)) if logit_err > 0 else float("-inf")

    match, cosine = align_units(victim, extracted)
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
    return out
