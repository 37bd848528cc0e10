"""Preflight checks: is this oracle one that functionally-equivalent extraction can use?

§6.1 assumes the adversary sees the raw logits as 64-bit floats, of a network that is piecewise
linear (ReLU). Each violated assumption would otherwise turn into a silently wrong model, so each
is refused here with a message saying what was seen and what to do. Costs about 50 queries.
A smooth victim that the check let through is refused once a line search shows it
(:func:`refuse_curved`).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from model_extraction.oracle import InsufficientPrecisionError, Oracle, OutputKind

from .search import LineSearchStats

__all__ = ["BentHyperplanesError", "OracleMismatchError", "OraclePrecisionError",
           "check_logit_oracle", "refuse_curved"]


class OracleMismatchError(ValueError):
    """The oracle does not expose what functionally-equivalent extraction needs."""


class BentHyperplanesError(OracleMismatchError):
    """Hyperplanes that bend: the victim is not one ReLU layer on the domain (a deeper network,
    or an API that clips or transforms its inputs)."""


class OraclePrecisionError(OracleMismatchError, InsufficientPrecisionError):
    """The oracle's outputs are rounded or noisy: too imprecise for §6 extraction."""


def check_logit_oracle(
    oracle: Oracle, d: int, centre: NDArray[np.float64], width: float, rng: np.random.Generator,
    *, margin: float = 0.0,
) -> int:
    """Check ``oracle`` and return ``K``, its number of outputs; raise if it is unusable.

    Queries lie in the box of side ``width`` about ``centre``, at least ``margin · width``
    inside its faces. Costs 48 queries.
    """
    kind = oracle.output_kind
    if kind not in (OutputKind.LOGITS, OutputKind.UNKNOWN):
        raise OracleMismatchError(
            f"this oracle returns {kind.value}; functionally-equivalent extraction needs raw "
            "float64 logits (§6.1). Use a learning-based attack, or an API that returns logits"
            + (" (or wrap exact float64 probabilities in LogitDifferenceOracle: their log "
               "differences are the logits up to a constant per input)."
               if kind is OutputKind.PROBABILITIES else ".")
        )
    x = centre + rng.uniform(-0.5, 0.5, (8, d)) * width * (1 - 2 * margin)
    raw = np.asarray(oracle(x))
    if raw.dtype.kind in "iub" or (raw.dtype.kind == "f" and np.all(raw == np.round(raw))
                                   and raw.shape[1] == 1):
        raise OracleMismatchError(
            "the oracle returns class labels, not logits: functionally-equivalent extraction "
            "needs the raw float64 logits (§6.1). Use a learning-based attack on a label oracle."
        )
    if raw.dtype != np.float64:
        raise OracleMismatchError(
            f"the oracle returns {raw.dtype} outputs; functionally-equivalent extraction needs "
            "float64 logits (§6.1: the attack measures differences far below float32 precision). "
            "Run the victim in float64 (e.g. model.double()) and return float64 arrays."
        )
    y = raw.astype(np.float64)
    k = y.shape[1]
    if np.all(y.astype(np.float32).astype(np.float64) == y):
        raise OracleMismatchError(
            "the oracle's outputs are exactly float32 values converted to float64: the victim "
            "computes in float32. Run it in float64 (e.g. model.double()) so the logits carry "
            "53 bits."
        )
    if k > 1 and np.all(y >= 0) and np.allclose(y.sum(axis=1), 1.0, rtol=0, atol=1e-9):
        raise OracleMismatchError(
            "the oracle returns probabilities (each row sums to 1); functionally-equivalent "
            "extraction needs logits. If the probabilities are exact float64, wrap the oracle in "
            "model_extraction.oracle.LogitDifferenceOracle (log-probability differences are the "
            "logits up to a constant per input)."
        )
    # Rounded outputs: a tiny move must change them, and their low mantissa bits must be used.
    step = rng.standard_normal(d)
    step *= 1e-7 * width / np.linalg.norm(step)
    y2 = np.asarray(oracle(x + step), dtype=np.float64)
    mantissa, _ = np.frexp(np.abs(y[y != 0]))
    low_bits_used = mantissa.size == 0 or np.any(
        (mantissa * 2.0**53).astype(np.int64) % (1 << 16) != 0
    )
    varies = bool(np.any(y != y[0]))  # a victim that is constant here proves nothing
    if (varies and np.all(y2 == y)) or not low_bits_used:
        raise OraclePrecisionError(
            "insufficient precision: the oracle's outputs look rounded (a small move of the input "
            "leaves them unchanged, or their low-order bits are all zero). Functionally-"
            "equivalent extraction needs full-precision float64 logits; a rounding defence "
            "defeats it, by design."
        )
    # Noise: two equal tiny steps must change a piecewise-linear output by equal amounts.
    y3 = np.asarray(oracle(x + 2 * step), dtype=np.float64)
    second = np.max(np.abs(y - 2 * y2 + y3), axis=1)
    first = np.max(np.abs(y3 - y), axis=1)
    roundoff = 64 * np.finfo(np.float64).eps * (1 + np.max(np.abs(y), axis=1))
    noisy = int(np.sum(second > 1e-4 * first + roundoff))
    if noisy >= 4:
        raise OraclePrecisionError(
            f"insufficient precision: the oracle's outputs are noisy or finely rounded ({noisy} "
            "of 8 pairs of equal tiny steps changed them by unequal amounts, which a piecewise-"
            "linear victim cannot do). A noise or rounding defence defeats functionally-"
            "equivalent extraction; use a learning-based attack."
        )
    # Piecewise linearity: second differences along short segments vanish except at a kink.
    base = centre + rng.uniform(-0.25, 0.25, (8, d)) * width
    u = rng.standard_normal((8, d))
    u *= 1e-3 * width / np.linalg.norm(u, axis=1, keepdims=True)
    z = np.asarray(oracle(np.concatenate([base - u, base, base + u])), dtype=np.float64)
    lo, mid, hi = z[:8], z[8:16], z[16:]
    curvature = np.max(np.abs(lo - 2 * mid + hi), axis=1)
    slope = np.max(np.abs(hi - lo), axis=1)
    curved = int(np.sum(curvature > 1e-6 * slope + 1e-12 * np.max(np.abs(mid))))
    if curved >= 4:
        raise OracleMismatchError(
            f"the victim is not piecewise linear: {curved} of 8 short segments are curved. "
            "Functionally-equivalent extraction applies to ReLU networks (§6.1); a tanh, sigmoid "
            "or softmax output cannot be extracted this way, nor can outputs that the API bends "
            "with a smooth defence (such as reverse sigmoid)."
        )
    return k


def refuse_curved(stats: LineSearchStats, line: int) -> None:
    """Raise if the line search along the ``line``-th line saw a smooth, not
    piecewise-linear, output."""
    if stats.curved:
        raise OracleMismatchError(
            f"the victim is not piecewise linear: along line {line} the search "
            f"rejected {stats.rejected} intervals as curved for {stats.kinks} critical "
            f"points ({stats.queries} queries), where a ReLU network needs a few "
            "halvings per critical point. Functionally-equivalent extraction "
            "applies to ReLU networks that return raw logits (§6.1); a smooth activation "
            "(tanh, sigmoid), or a smooth output defence such as reverse sigmoid, defeats "
            "it. Use a learning-based attack."
        )
