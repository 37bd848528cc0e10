"""Choosing which pool inputs to label, paying the oracle for them, and turning its answers into
training targets (§4: the attacker holds unlabeled in-distribution data and a query budget).

The attacker labels a seeded random subset of its pool, one query per input; the rest of the
pool stays unlabeled and free. What a query reveals depends on the API (§3, Table 2):

- ``probabilities`` (or ``logits``, softmaxed): the full distribution is the target;
- ``top_k`` (the paper's WSL-5): the ``k`` revealed probabilities are kept and the mass they
  leave, ``1 − Σ revealed``, is spread uniformly over the unrevealed classes — the least
  committal distribution consistent with the answer;
- ``label``: a one-hot target (a hard label).

Everything the attacker is given is checked before a single query is spent: an empty pool, a
budget larger than the pool or than the oracle's remaining budget, inputs of the wrong shape for
the victim. Deployed APIs are imperfect: they round probabilities (to 2 decimals, say: rows
sum to 0.99–1.01 and hold many zeros) or clip and renormalise noise
(:mod:`model_extraction.defenses`). A probability row is usable when it is non-negative and
sums to 1 within what rounding explains (:func:`sum_tolerance`); it is then renormalised. The
answers are paid for in two steps: a first batch of :data:`FIRST_BATCH` queries is checked,
and an API whose first answers are mostly unusable (logits or garbage declared as
probabilities, labels out of range) is refused with
:class:`~model_extraction.oracle.OracleOutputError` before the rest of the budget is spent.
After that nothing is refused: an unusable answer (a row rounded to all zeros, say) labels
nothing, its input joins the unlabeled part of the pool, and the count is reported
(:attr:`LabelledQueries.unusable`, a warning).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from model_extraction.datasets import Dataset
from model_extraction.oracle import BudgetExhaustedError, Oracle, OracleOutputError, OutputKind

__all__ = [
    "FIRST_BATCH",
    "MAX_UNUSABLE",
    "Answers",
    "LabelledQueries",
    "as_images",
    "query_pool",
    "read_answers",
    "rounding_decimals",
    "select_queries",
    "sum_tolerance",
    "targets_from_outputs",
]

SUM_TOLERANCE = 1e-3
"""How far from 1 an unrounded probability row may sum (float32 victims round)."""

FIRST_BATCH = 32
"""Queries of the first batch, whose answers are checked before the rest of the budget is spent."""

MAX_UNUSABLE = 0.25
"""The API is refused when more than this share of its first batch of answers is unusable."""


def as_images(
    pool: Dataset | ArrayLike, input_shape: Sequence[int] | None = None
) -> NDArray[np.float32]:
    """The attacker's pool as float32 ``(n, C, H, W)`` images in ``[0, 1]``.

    Accepts a :class:`~model_extraction.datasets.Dataset` (its labels are ignored: the attacker
    does not have them), an ``(n, C, H, W)`` array, or ``(n, d)`` rows with ``input_shape``.
    """
    if isinstance(pool, Dataset):
        x = pool.to_float(np.float32)
    else:
        x = np.asarray(pool, dtype=np.float32)
        if x.ndim == 2 and input_shape is not None:
            if int(np.prod(input_shape)) != x.shape[1]:
                raise ValueError(
                    f"pool rows have {x.shape[1]} values but input_shape {tuple(input_shape)} "
                    f"has {int(np.prod(input_shape))}"
                )
            x = x.reshape(len(x), *input_shape)
        elif x.ndim != 4:
            raise ValueError(
                f"the pool must be images of shape (n, C, H, W), or (n, d) rows with "
                f"input_shape=(C, H, W); got an array of shape {x.shape}"
            )
    if len(x) == 0:
        raise ValueError("the pool is empty: learning-based extraction needs unlabeled inputs "
                         "to query (and, for MixMatch, to learn from)")
    if not np.all(np.isfinite(x)):
        raise ValueError("the pool contains NaN or inf")
    return x


def select_queries(pool_size: int, queries: int, seed: int) -> NDArray[np.int64]:
    """A seeded random subset of ``queries`` distinct pool indices (§4, Table 3)."""
    if pool_size < 1:
        raise ValueError("the pool is empty")
    if queries < 1:
        raise ValueError(f"the query budget must be at least 1, got {queries}")
    if queries > pool_size:
        raise ValueError(
            f"a budget of {queries} queries is larger than the pool of {pool_size} inputs: each "
            f"query labels a distinct pool input; lower the budget or give a larger pool"
        )
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool_size, size=queries, replace=False)).astype(np.int64)


@dataclass(frozen=True)
class LabelledQueries:
    """The labelled part of the attacker's data set.

    Attributes
    ----------
    indices:
        Pool indices that were queried (each cost one query).
    targets:
        ``(n, K)`` float32 distributions to learn from (one-hot for labels).
    labels:
        ``(n,)`` the victim's top-1 answer.
    output_kind:
        What the oracle revealed.
    num_classes, k:
        ``K``, and for ``top_k`` how many probabilities each answer revealed.
    unusable:
        Pool indices that were queried (and paid for) but whose answers could not be used
        (see :func:`read_answers`); they are not in ``indices`` and stay unlabeled.
    """

    indices: NDArray[np.int64]
    targets: NDArray[np.float32]
    labels: NDArray[np.int64]
    output_kind: OutputKind
    num_classes: int
    k: int | None = None
    unusable: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def spent(self) -> int:
        """Queries paid for: the labelled inputs and those whose answers were unusable."""
        return len(self.indices) + len(self.unusable)

    @property
    def hard(self) -> bool:
        """True when only labels were revealed."""
        return self.output_kind is OutputKind.LABEL


def _resolve_kind(oracle: Oracle, output: OutputKind | str | None) -> OutputKind:
    kind = OutputKind(output) if output is not None else oracle.output_kind
    if kind is OutputKind.UNKNOWN:
        raise ValueError(
            "the oracle does not say what it returns; pass output='probabilities', 'top_k', "
            "'label' or 'logits' (or build it with CallableOracle(..., output_kind=...))"
        )
    return kind


def _resolve_classes(oracle: Oracle, num_classes: int | None) -> int | None:
    if num_classes is None:
        num_classes = getattr(getattr(oracle, "model", None), "num_classes", None)
    if num_classes is not None and int(num_classes) < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    return None if num_classes is None else int(num_classes)


def _check_shape(oracle: Oracle, input_shape: tuple[int, ...]) -> None:
    d = int(np.prod(input_shape))
    if oracle.input_dim is not None and oracle.input_dim != d:
        raise ValueError(
            f"the pool's inputs have shape {input_shape} ({d} values) but the victim takes "
            f"{oracle.input_dim} values per input: give a pool from the victim's input domain"
        )
    expected = getattr(getattr(oracle, "model", None), "input_shape", None)
    if expected is not None and tuple(int(s) for s in expected) != tuple(input_shape):
        raise ValueError(
            f"the pool's inputs have shape {input_shape} but the victim takes images of shape "
            f"{tuple(expected)}: give a pool from the victim's input domain"
        )


def rounding_decimals(values: ArrayLike, largest: int = 6) -> int | None:
    """The fewest decimals ``d ≤ largest`` such that every positive entry of ``values`` is a
    multiple of ``10^-d`` (an API that rounds to ``d`` decimals); ``None`` when they are not
    rounded to decimals (or none is positive)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return None
    for d in range(largest + 1):
        scaled = v * 10.0**d
        if np.allclose(scaled, np.round(scaled), rtol=0, atol=1e-6):
            return d
    return None


def sum_tolerance(decimals: int | None, num_classes: int) -> float:
    """How far from 1 a row of ``num_classes`` probabilities may sum: :data:`SUM_TOLERANCE`
    for unrounded answers; rounded to ``d`` decimals, each entry moves by at most
    ``0.5·10^-d``, so the sum by at most ``K·0.5·10^-d`` (at most 0.5: a row must still carry
    most of a distribution's mass)."""
    if decimals is None:
        return SUM_TOLERANCE
    return min(0.5, max(SUM_TOLERANCE, 0.5 * num_classes * 10.0**-decimals))


@dataclass(frozen=True)
class Answers:
    """An oracle's answers to a batch, read as training targets (:func:`read_answers`).

    ``targets`` ``(n, K)`` float32 distributions and ``labels`` ``(n,)`` the victim's top-1
    class, both meaningful only where ``usable`` ``(n,)`` is true; ``problem`` says why the
    first unusable row is unusable (empty when all are usable).
    """

    targets: NDArray[np.float32]
    labels: NDArray[np.int64]
    num_classes: int
    usable: NDArray[np.bool_]
    problem: str = ""


def _read_labels(out: NDArray[Any], num_classes: int | None) -> Answers:
    """One class index per row → one-hot targets; non-integers and out-of-range are unusable."""
    if out.shape[1] != 1:
        raise OracleOutputError(
            f"a label oracle must return one class index per input, shape (n, 1); got "
            f"{out.shape} (declare output='probabilities' if these are distributions)"
        )
    if num_classes is None:
        raise ValueError("a label oracle does not reveal the number of classes; pass "
                         "num_classes")
    col = out[:, 0].astype(np.float64) if out.dtype.kind in "fiub" else None
    if col is None:
        raise OracleOutputError(f"a label oracle returned {out.dtype} values, not class indices")
    integer = np.isfinite(col) & (col == np.round(col))
    usable = integer & (col >= 0) & (col < num_classes)
    labels = np.where(usable, col, 0).astype(np.int64)
    targets = np.zeros((len(col), num_classes), np.float32)
    targets[np.arange(len(col)), labels] = 1.0
    problem = ""
    if not usable.all():
        i = int(np.argmin(usable))
        problem = (f"row {i} is {col[i]:.4g}: " + ("not integers" if not integer[i] else
                   f"labels outside 0..{num_classes - 1}"))
    return Answers(targets, np.where(usable, labels, -1), num_classes, usable, problem)


def _row_problem(row: NDArray[np.float64], total: float, tol: float, decimals: int | None,
                 i: int) -> str:
    """Why probability row ``i`` (summing to ``total``) is not usable, in words."""
    where = f"row {i}: sum {total:.4g}, min {row.min():.4g}, max {row.max():.4g}"
    rounding = (f"even allowing for rounding to {decimals} decimals (±{tol:.3g})"
                if decimals is not None else f"(±{tol:.3g})")
    if not np.all(np.isfinite(row)):
        return f"{where}: NaN or inf"
    if row.min() < 0 or row.max() > 1 + tol:
        return (f"{where}: entries outside [0, 1], so these look like logits or scores; if the "
                "API returns logits, declare output='logits'")
    if total <= 0:
        return f"{where}: every probability is 0 (nothing to learn from)"
    return f"{where}: the entries are in [0, 1] but do not sum to 1 {rounding}"


def _read_probabilities(out: NDArray[np.float64], kind: OutputKind,
                        k: int | None) -> Answers:
    """Probability or top-k rows → distributions; rounding-aware (:func:`sum_tolerance`)."""
    width = out.shape[1]
    decimals = rounding_decimals(out)
    tol = sum_tolerance(decimals, width)
    finite = np.all(np.isfinite(out), axis=1)
    clean = np.where(finite[:, None], out, 0.0)
    sums = clean.sum(axis=1)
    inside = finite & np.all(clean >= 0, axis=1) & np.all(clean <= 1 + tol, axis=1) & (sums > 0)
    revealed = clean > 0
    if kind is OutputKind.PROBABILITIES:
        usable = inside & (np.abs(sums - 1.0) <= tol)
        targets = clean / np.where(usable, sums, 1.0)[:, None]
    else:  # top-k: the revealed probabilities sum to at most 1; the rest is spread
        usable = inside & (sums <= 1.0 + tol)
        if k is not None:
            usable &= revealed.sum(axis=1) <= k
        hidden = width - revealed.sum(axis=1)
        rest = np.clip(1.0 - sums, 0.0, None) / np.maximum(hidden, 1)
        targets = np.where(revealed, clean, rest[:, None])
        targets /= np.where(usable, targets.sum(axis=1), 1.0)[:, None]
    problem = ""
    if not usable.all():
        i = int(np.argmin(usable))
        if k is not None and inside[i] and revealed[i].sum() > k:
            problem = f"a top-{k} oracle revealed up to {int(revealed.sum(axis=1).max())} " \
                      "probabilities per answer"
        else:
            problem = _row_problem(out[i], float(sums[i]), tol, decimals, i)
    labels = np.where(usable, np.argmax(clean, axis=1), -1).astype(np.int64)
    targets = np.where(usable[:, None], targets, 0.0).astype(np.float32)
    return Answers(targets, labels, width, usable, problem)


def read_answers(
    outputs: ArrayLike, kind: OutputKind | str, num_classes: int | None = None,
    k: int | None = None,
) -> Answers:
    """Read a batch of an oracle's answers as training targets, row by row.

    ``outputs`` is ``(n, K)`` (``(n, 1)`` class indices for ``label``). A row is usable when it
    is what ``kind`` promises: a probability row non-negative and summing to 1 within
    :func:`sum_tolerance` (rounded APIs included; it is renormalised), a top-k row revealing at
    most ``k`` entries that sum to at most 1, a label a class index in ``0..K-1``, logits
    finite. Raises :class:`OracleOutputError` when the batch as a whole is not what ``kind``
    says (wrong shape or type, a width other than ``num_classes``), ``ValueError`` for a label
    oracle without ``num_classes``.
    """
    kind = OutputKind(kind)
    out = np.asarray(outputs)
    if out.ndim != 2 or len(out) == 0:
        raise OracleOutputError(f"expected a non-empty (n, K) array of answers, got {out.shape}")
    if kind is OutputKind.LABEL:
        return _read_labels(out, num_classes)
    if out.dtype.kind not in "fiu":
        raise OracleOutputError(f"expected numeric answers, got dtype {out.dtype}")
    out = out.astype(np.float64)
    width = out.shape[1]
    if num_classes is not None and width != num_classes:
        raise OracleOutputError(f"the oracle returned {width} values per input for "
                                f"{num_classes} classes")
    if width < 2:
        raise OracleOutputError(
            f"the oracle returned {width} value per input; a {kind.value} oracle returns one "
            f"per class (declare output='label' if it returns class indices)"
        )
    if kind is not OutputKind.LOGITS:
        return _read_probabilities(out, kind, k)
    usable = np.all(np.isfinite(out), axis=1)
    z = np.where(usable[:, None], out, 0.0)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    labels = np.where(usable, np.argmax(z, axis=1), -1).astype(np.int64)
    problem = "" if usable.all() else f"row {int(np.argmin(usable))}: NaN or inf"
    return Answers(p.astype(np.float32), labels, width, usable, problem)


def targets_from_outputs(
    outputs: ArrayLike, kind: OutputKind | str, num_classes: int | None = None,
    k: int | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.int64], int]:
    """Check an oracle's answers against what it promised; return ``(targets, labels, K)``.

    The strict form of :func:`read_answers`: ``targets`` ``(n, K)`` distributions (see the
    module docstring for ``top_k`` and rounding), ``labels`` ``(n,)`` the victim's top-1
    classes. Raises :class:`OracleOutputError` when any answer is not what ``kind`` says (a row
    that does not sum to 1 even allowing for rounding, negative probabilities, more than ``k``
    revealed entries, labels that are not class indices).
    """
    kind = OutputKind(kind)
    answers = read_answers(outputs, kind, num_classes, k)
    if not answers.usable.all():
        bad, n = int((~answers.usable).sum()), len(answers.usable)
        raise OracleOutputError(_refusal(kind, bad, n, answers.problem))
    return answers.targets, answers.labels, answers.num_classes


def _refusal(kind: OutputKind, bad: int, n: int, problem: str) -> str:
    what = {OutputKind.LABEL: "a class index", OutputKind.LOGITS: "finite logits"}.get(
        kind, "(a part of) a probability distribution")
    return (f"the oracle promised {kind.value} but {bad} of {n} answers are not {what} "
            f"({problem})")


def query_pool(
    oracle: Oracle,
    pool: NDArray[np.float32],
    queries: int,
    *,
    seed: int = 0,
    num_classes: int | None = None,
    output: OutputKind | str | None = None,
    k: int | None = None,
    batch_size: int = 1024,
) -> LabelledQueries:
    """Label ``queries`` random inputs of ``pool`` (``(n, C, H, W)``) through ``oracle``.

    Every check of what the attacker gave (pool, shapes, budget) runs before the first query.
    Then a first batch of :data:`FIRST_BATCH` queries is paid for and its answers are read
    (:func:`read_answers`): if more than :data:`MAX_UNUSABLE` of them are unusable, the API is
    refused, only that batch spent. Otherwise exactly ``queries`` queries are spent, and later
    unusable answers (or a later batch the oracle refuses to return) are left out of the
    labelled set (:attr:`LabelledQueries.unusable`, with a warning), never refused.

    Raises ``ValueError`` for an empty pool, a budget larger than the pool, inputs of the
    wrong shape; :class:`BudgetExhaustedError` when the oracle's own budget cannot pay for
    ``queries``; :class:`OracleOutputError` when the first batch is not what the oracle
    promised (the message says how many queries were spent).
    """
    x = as_images(pool)
    kind = _resolve_kind(oracle, output)
    _check_shape(oracle, x.shape[1:])
    classes = _resolve_classes(oracle, num_classes)
    if kind is OutputKind.LABEL and classes is None:
        raise ValueError("a label oracle does not reveal the number of classes; pass "
                         "num_classes (nothing was queried)")
    idx = select_queries(len(x), queries, seed)
    if oracle.remaining is not None and queries > oracle.remaining:
        raise BudgetExhaustedError(
            oracle.budget or 0, oracle.queries, queries,
            progress="Learning-based extraction checks its budget before the first query; "
                     "nothing was queried.",
        )
    if kind is OutputKind.TOP_K and k is None:
        k = getattr(oracle, "k", None)
    rows = x.reshape(len(x), -1)
    first = min(queries, FIRST_BATCH)
    batch = read_answers(oracle(rows[idx[:first]]), kind, classes, k)
    bad = int((~batch.usable).sum())
    if bad > MAX_UNUSABLE * first:
        raise OracleOutputError(
            f"{_refusal(kind, bad, first, batch.problem)}. Refused after a first batch of "
            f"{first} queries; the other {queries - first} of the budget of {queries} were not "
            "spent. Declare what the API really returns (output=...)."
        )
    parts = [batch]
    for start in range(first, queries, batch_size):
        chunk = idx[start : start + batch_size]
        try:
            parts.append(read_answers(oracle(rows[chunk]), kind, batch.num_classes, k))
        except OracleOutputError as err:  # paid for: never refused after the first batch
            parts.append(Answers(np.zeros((len(chunk), batch.num_classes), np.float32),
                                 np.full(len(chunk), -1, np.int64), batch.num_classes,
                                 np.zeros(len(chunk), bool), str(err)))
    return _labelled(idx, parts, kind, k)


def _labelled(idx: NDArray[np.int64], parts: list[Answers], kind: OutputKind,
              k: int | None) -> LabelledQueries:
    """The usable answers as a :class:`LabelledQueries`; a warning counts the others."""
    usable = np.concatenate([a.usable for a in parts])
    if not usable.all():
        problem = next(a.problem for a in parts if not a.usable.all())
        warnings.warn(
            f"{int((~usable).sum())} of {len(usable)} answers were unusable and label nothing "
            f"(their inputs stay unlabeled; first: {problem})", stacklevel=3)
    targets = np.concatenate([a.targets for a in parts])[usable]
    labels = np.concatenate([a.labels for a in parts])[usable]
    return LabelledQueries(idx[usable], targets, labels, kind, parts[0].num_classes,
                           k if kind is OutputKind.TOP_K else None, unusable=idx[~usable])
