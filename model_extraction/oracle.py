"""The oracle: the attacker's only view of a victim, and what each view costs.

An oracle takes a batch of inputs ``(n, d)`` and returns one output row per input. It counts
every row it evaluates (finite-difference probes included: a probe is a forward pass of the
victim like any other), refuses a batch that would overrun its query budget *before*
evaluating it, and says what kind of output it exposes (Jagielski et al. 2020, §3 and Table 1:
raw logits for functionally-equivalent extraction, probabilities, top-k probabilities or only
labels for learning-based extraction).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from model_extraction.network import decisions

__all__ = [
    "BudgetExhaustedError",
    "CallableOracle",
    "InsufficientPrecisionError",
    "LogitDifferenceOracle",
    "ModelOracle",
    "Oracle",
    "OracleOutputError",
    "OutputKind",
    "apply_output_policy",
    "as_oracle",
    "keep_top_k",
]


class OutputKind(StrEnum):
    """What the victim's API reveals for each query."""

    LOGITS = "logits"
    """Raw logits as float64 (the threat model of functionally-equivalent extraction, §6.1)."""
    PROBABILITIES = "probabilities"
    """The full softmax probability vector."""
    TOP_K = "top_k"
    """Only the k largest probabilities; the others are reported as 0 (the paper's WSL-5)."""
    LABEL = "label"
    """Only the predicted class, as a one-column integer array."""
    UNKNOWN = "unknown"
    """A user's callable that did not declare what it returns; attacks check it themselves."""


class BudgetExhaustedError(RuntimeError):
    """The oracle's query budget cannot pay for the batch that was asked for.

    Attributes
    ----------
    budget, used, requested:
        The budget, the queries already paid for, and the size of the refused batch.
    progress:
        Set by attacks that catch and re-raise it: a sentence saying how far they got.
    """

    def __init__(self, budget: int, used: int, requested: int, progress: str = "") -> None:
        self.budget, self.used, self.requested, self.progress = budget, used, requested, progress
        message = (
            f"query budget exhausted: {used} of {budget} queries used, a batch of {requested} "
            f"more was refused (nothing was evaluated)."
        )
        if progress:
            message += f" {progress}"
        message += " Raise the budget or ask for less (a smaller model, fewer checks)."
        super().__init__(message)


class OracleOutputError(ValueError):
    """The oracle returned something an attack cannot use (NaN, wrong shape, wrong type)."""


class InsufficientPrecisionError(OracleOutputError):
    """The outputs are too imprecise for the attack: rounded, quantised, float32 or noisy.

    Functionally-equivalent extraction (§6.1) measures differences of outputs far below the
    precision a rounding or noise defence leaves, so such an oracle is refused, not turned into
    a silently wrong model.
    """


ModelFn = Callable[[NDArray[np.float64]], ArrayLike]


class Oracle:
    """Base class: validation, query counting and the budget.

    Subclasses implement :meth:`_evaluate`. Calling the oracle on ``x`` of shape ``(n, d)``
    returns an ``(n, K)`` array and adds ``n`` to :attr:`queries`.

    Parameters
    ----------
    input_dim:
        ``d``; ``None`` if unknown (then any width is passed through).
    output_kind:
        What the outputs are (:class:`OutputKind`).
    budget:
        Maximum number of input rows this oracle will ever evaluate; ``None`` for no limit.
    """

    def __init__(
        self,
        *,
        input_dim: int | None,
        output_kind: OutputKind | str,
        budget: int | None = None,
    ) -> None:
        if budget is not None and budget < 0:
            raise ValueError(f"budget must be a non-negative number of queries, got {budget}")
        self.input_dim = input_dim
        self.output_kind = OutputKind(output_kind)
        self.budget = budget
        self.queries = 0
        self.calls = 0

    @property
    def remaining(self) -> int | None:
        """Queries left in the budget (``None`` when unlimited)."""
        return None if self.budget is None else self.budget - self.queries

    def _evaluate(self, x: NDArray[np.float64]) -> ArrayLike:
        raise NotImplementedError

    def __call__(self, x: ArrayLike) -> NDArray[Any]:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or (self.input_dim is not None and x.shape[1] != self.input_dim):
            width = "d" if self.input_dim is None else str(self.input_dim)
            raise ValueError(f"oracle expects a batch of shape (n, {width}); got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("oracle inputs contain NaN or inf")
        n = x.shape[0]
        if self.budget is not None and self.queries + n > self.budget:
            raise BudgetExhaustedError(self.budget, self.queries, n)
        if n == 0:
            return np.zeros((0, 0))
        out = np.asarray(self._evaluate(x))
        self.queries += n
        self.calls += 1
        if out.ndim == 1:
            out = out[:, None]
        if out.ndim != 2 or out.shape[0] != n:
            raise OracleOutputError(
                f"the victim returned shape {out.shape} for a batch of {n} inputs; "
                "expected (n, K): one row of outputs per input row"
            )
        if out.dtype.kind == "f" and not np.all(np.isfinite(out)):
            bad = int(np.sum(~np.all(np.isfinite(out), axis=1)))
            raise OracleOutputError(
                f"the victim returned NaN or inf for {bad} of {n} inputs; check the model and "
                "the input range (an overflow in the victim cannot be extracted around)"
            )
        return out


def _softmax(z: NDArray[np.float64]) -> NDArray[np.float64]:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def apply_output_policy(
    logits: ArrayLike, kind: OutputKind | str = OutputKind.LOGITS, k: int = 5
) -> NDArray[Any]:
    """What an API of output ``kind`` reveals of a batch of ``(n, K)`` logits (§3, Table 1).

    ``logits``: the float64 logits themselves; ``probabilities``: their softmax;
    ``top_k``: the softmax with all but the ``k`` largest entries of each row set to 0 (ties
    broken by the lower class index); ``label``: the argmax as an ``(n, 1)`` int64 array.
    One logit (``K = 1``) is a binary classifier that decides by sign: its label is ``z > 0``
    and its probabilities are the softmax of ``(0, z)``, ``(1 - σ(z), σ(z))``.
    The one place this project turns logits into what a victim's API returns: the in-process
    :class:`ModelOracle` and the HTTP server (:mod:`model_extraction.serving`) both call it.
    """
    kind = OutputKind(kind)
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must have shape (n, K); got {z.shape}")
    if kind is OutputKind.LOGITS:
        return z
    if kind is OutputKind.LABEL:
        return decisions(z)[:, None]
    if kind is OutputKind.UNKNOWN:
        raise ValueError("choose an output kind: logits, probabilities, top_k or label")
    probs = _softmax(np.concatenate([np.zeros_like(z), z], axis=1) if z.shape[1] == 1 else z)
    return keep_top_k(probs, k) if kind is OutputKind.TOP_K else probs


def keep_top_k(probs: ArrayLike, k: int) -> NDArray[np.float64]:
    """Set all but the ``k`` largest entries of each row to 0 (ties: lower index kept)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    out = np.array(probs, dtype=np.float64)
    if k < out.shape[1]:
        drop = np.argsort(-out, axis=1, kind="stable")[:, k:]
        np.put_along_axis(out, drop, 0.0, axis=1)
    return out


class ModelOracle(Oracle):
    """An oracle over a model function that returns logits, with an output policy.

    Parameters
    ----------
    model:
        A :class:`~model_extraction.network.ReLUNetwork` (anything with ``.logits``), or a
        callable mapping ``(n, d)`` float64 inputs to ``(n, K)`` logits.
    output:
        Which view of the logits the attacker gets (:class:`OutputKind`).
    k:
        For ``top_k``: how many probabilities are revealed.
    budget:
        Query budget (rows), ``None`` for unlimited.
    """

    def __init__(
        self,
        model: Any,
        *,
        output: OutputKind | str = OutputKind.LOGITS,
        k: int = 5,
        budget: int | None = None,
        input_dim: int | None = None,
    ) -> None:
        self.model = model
        fn = getattr(model, "logits", model)
        if not callable(fn):
            raise TypeError(f"model must be a network or a callable, got {type(model).__name__}")
        self._fn: ModelFn = fn
        if input_dim is None:
            input_dim = getattr(model, "input_dim", None)
        super().__init__(input_dim=input_dim, output_kind=output, budget=budget)
        if self.output_kind is OutputKind.UNKNOWN:
            raise ValueError("a ModelOracle knows its output kind; choose one of logits, "
                             "probabilities, top_k, label")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.k = k

    def _evaluate(self, x: NDArray[np.float64]) -> NDArray[Any]:
        logits = np.asarray(self._fn(x), dtype=np.float64)
        if logits.ndim == 1:  # one logit per input: a binary classifier
            logits = logits[:, None]
        if logits.ndim != 2:
            return logits
        return apply_output_policy(logits, self.output_kind, self.k)


class CallableOracle(Oracle):
    """Wrap a user's function ``(n, d) float64 -> (n, K)`` as a counted, budgeted oracle.

    Nothing is assumed about what the function returns (``output_kind`` defaults to
    ``unknown``); each attack checks the outputs it needs and says so when they do not fit.
    """

    def __init__(
        self,
        fn: ModelFn,
        *,
        input_dim: int | None = None,
        output_kind: OutputKind | str = OutputKind.UNKNOWN,
        budget: int | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"expected a callable, got {type(fn).__name__}")
        super().__init__(input_dim=input_dim, output_kind=output_kind, budget=budget)
        self.fn = fn

    def _evaluate(self, x: NDArray[np.float64]) -> ArrayLike:
        return self.fn(x)


class LogitDifferenceOracle(Oracle):
    """Logits up to a constant per input, from an oracle that returns exact probabilities.

    ``log p_i - log p_r = z_i - z_r``: for a ReLU victim the differences of its logits to a
    reference class ``r`` are piecewise linear in the input, so functionally-equivalent
    extraction (§6, whose §6.1 threat model is raw logits) can run on an API that returns
    float64 probabilities through this adapter. (``log p`` itself is *not* piecewise linear:
    it subtracts a log-sum-exp that depends on the input.) The extracted network then computes
    the victim's logits minus its logit ``r``: the same argmax and the same probabilities.

    Each row's log-ratios are taken against its own largest class (``log p_i - log p_max``,
    whose reference is never tiny), then re-expressed against ``r``; either way every class
    needs a non-zero probability. A probability of exactly 0 is told apart: where the row's
    other probabilities carry full float64 mantissas and sum to 1, the softmax underflowed (a
    logit gap beyond about 745 at that input: keep the queries in the API's input domain);
    otherwise the API rounds or truncates (top-k), and the oracle is refused as such. Float32
    probabilities raise :class:`InsufficientPrecisionError`; rows that are not probability
    vectors raise :class:`OracleOutputError`. Queries are counted, and budgets enforced, by the
    wrapped oracle as well as by this one.
    """

    def __init__(self, oracle: Oracle, *, reference: int = 0) -> None:
        if not isinstance(oracle, Oracle):
            raise TypeError(f"expected an Oracle returning probabilities, got {type(oracle)}")
        kind = oracle.output_kind
        if kind is OutputKind.TOP_K:
            raise InsufficientPrecisionError(
                "insufficient precision: a top-k oracle reports most probabilities as 0, and "
                "log-probability differences need all of them. Use a learning-based attack."
            )
        if kind not in (OutputKind.PROBABILITIES, OutputKind.UNKNOWN):
            raise ValueError(
                f"LogitDifferenceOracle turns probabilities into logit differences; this oracle "
                f"returns {kind.value}" + (" (use it directly)" if kind is OutputKind.LOGITS
                                           else "")
            )
        if reference < 0:
            raise ValueError(f"reference must be a class index, got {reference}")
        super().__init__(input_dim=oracle.input_dim, output_kind=OutputKind.LOGITS)
        self.oracle = oracle
        self.reference = reference

    def _evaluate(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        p = np.asarray(self.oracle(x))
        if p.ndim != 2 or p.dtype.kind != "f" or p.shape[1] < 2:
            raise OracleOutputError(
                f"expected (n, K) float probabilities with K >= 2; got {p.dtype} of shape "
                f"{p.shape} (labels cannot be turned into logits: use a learning-based attack)"
            )
        if p.dtype != np.float64:
            raise InsufficientPrecisionError(
                f"insufficient precision: the oracle returns {p.dtype} probabilities; logit "
                "differences for functionally-equivalent extraction need float64 (§6.1)"
            )
        if self.reference >= p.shape[1]:
            raise ValueError(f"reference class {self.reference} >= K = {p.shape[1]}")
        if not np.any(p < 0) and _looks_rounded(p[p > 0]):
            raise InsufficientPrecisionError(
                "insufficient precision: the probabilities are rounded (to a few decimals, or "
                "to a binary precision coarser than float64); log-probability differences need "
                "them to full float64 precision. Use a learning-based attack on such an API."
            )
        if np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-3):
            raise OracleOutputError(
                "the oracle's rows are not probability vectors (negative entries, or sums "
                "other than 1); LogitDifferenceOracle needs the softmax of the logits"
            )
        zero = np.any(p == 0, axis=1)
        if np.any(zero):
            raise _zero_probability_error(p, zero)
        top = np.log(p.max(axis=1, keepdims=True))
        ratios = np.log(p) - top  # log p_i - log p_max = z_i - z_max, each finite
        r = self.reference
        return ratios - ratios[:, r : r + 1]


def _looks_rounded(values: NDArray[np.float64]) -> bool:
    """Whether positive ``values`` are rounded: to a binary precision coarser than float64 (the
    low 16 bits of every mantissa zero, as in float32) or to ``k ≤ 10`` decimals (every value
    a multiple of ``10^-k``, none below it)."""
    if not values.size:
        return True
    mantissa, _ = np.frexp(values)
    if not np.any((mantissa * 2.0**53).astype(np.int64) % (1 << 16) != 0):
        return True
    return any(bool(np.all(values >= 0.5 * 10.0**-k)) and np.allclose(
        values * 10.0**k, np.round(values * 10.0**k), rtol=0, atol=1e-6) for k in range(1, 11))


def _zero_probability_error(p: NDArray[np.float64], zero: NDArray[np.bool_]) -> OracleOutputError:
    """Why a row holds a probability of exactly 0: softmax underflow, or rounding/top-k."""
    rows = p[zero]
    exact_sums = np.allclose(rows.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    if not _looks_rounded(rows[rows > 0]) and exact_sums:
        return InsufficientPrecisionError(
            f"the softmax underflowed: {int(zero.sum())} of {len(p)} answers hold a probability "
            "of exactly 0 although the others carry full float64 precision, so some logit gap "
            "there exceeds about 745. Those inputs are too far out for logit differences from "
            "probabilities: keep the queries inside the API's input domain (input_bounds)."
        )
    return InsufficientPrecisionError(
        f"insufficient precision: {int(zero.sum())} of {len(p)} answers contain a probability of "
        "exactly 0 and the others are rounded (a rounded or top-k output, or a clipped noisy "
        "one); log-probability differences need every probability to full float64 precision. "
        "Use a learning-based attack on such an API."
    )


def as_oracle(obj: Any, *, input_dim: int | None = None, budget: int | None = None) -> Oracle:
    """Coerce ``obj`` to an :class:`Oracle`.

    An ``Oracle`` is returned as is; a network (anything with ``.logits``) becomes a logit
    :class:`ModelOracle`; any other callable becomes a :class:`CallableOracle`; an
    ``http(s)://host:port/v2/models/NAME`` URL becomes a logit
    :class:`~model_extraction.remote.RemoteOracle` (Open Inference Protocol).
    """
    if isinstance(obj, str) and obj.startswith(("http://", "https://")):
        from model_extraction.remote import RemoteOracle

        return RemoteOracle(obj, input_dim=input_dim, budget=budget)
    if isinstance(obj, Oracle):
        if budget is not None and obj.budget is None:
            obj.budget = budget
        return obj
    if hasattr(obj, "logits"):
        return ModelOracle(obj, budget=budget, input_dim=input_dim)
    if callable(obj):
        return CallableOracle(obj, input_dim=input_dim, budget=budget)
    raise TypeError(
        f"cannot use a {type(obj).__name__} as an oracle: pass an Oracle, a network, or a "
        "callable mapping an (n, d) float64 array to an (n, K) array"
    )
