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
the victim. Answers that are not what the oracle promised (rows that are not distributions when
probabilities are promised, labels out of range) raise
:class:`~model_extraction.oracle.OracleOutputError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from model_extraction.datasets import Dataset
from model_extraction.oracle import BudgetExhaustedError, Oracle, OracleOutputError, OutputKind

__all__ = ["LabelledQueries", "as_images", "query_pool", "select_queries", "targets_from_outputs"]

SUM_TOLERANCE = 1e-3
"""How far from 1 a probability row may sum (float32 victims round)."""


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
    """

    indices: NDArray[np.int64]
    targets: NDArray[np.float32]
    labels: NDArray[np.int64]
    output_kind: OutputKind
    num_classes: int
    k: int | None = None

    def __len__(self) -> int:
        return len(self.indices)

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


def targets_from_outputs(
    outputs: ArrayLike, kind: OutputKind | str, num_classes: int | None = None,
    k: int | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.int64], int]:
    """Check an oracle's answers against what it promised; return ``(targets, labels, K)``.

    ``targets`` are ``(n, K)`` distributions (see the module docstring for ``top_k``), ``labels``
    the victim's top-1 classes. Raises :class:`OracleOutputError` when the answers are not what
    ``kind`` says (rows that do not sum to 1, negative probabilities, more than ``k`` revealed
    entries, labels that are not class indices).
    """
    kind = OutputKind(kind)
    out = np.asarray(outputs)
    if out.ndim != 2 or len(out) == 0:
        raise OracleOutputError(f"expected a non-empty (n, K) array of answers, got {out.shape}")
    if kind is OutputKind.LABEL:
        if out.shape[1] != 1:
            raise OracleOutputError(
                f"a label oracle must return one class index per input, shape (n, 1); got "
                f"{out.shape} (declare output='probabilities' if these are distributions)"
            )
        if num_classes is None:
            raise ValueError("a label oracle does not reveal the number of classes; pass "
                             "num_classes")
        col = out[:, 0]
        if out.dtype.kind not in "iu" and not np.all(np.isfinite(col) & (col == np.round(col))):
            raise OracleOutputError("a label oracle returned values that are not integers")
        labels = col.astype(np.int64)
        bad = (labels < 0) | (labels >= num_classes)
        if np.any(bad):
            raise OracleOutputError(
                f"a label oracle returned {int(bad.sum())} labels outside 0..{num_classes - 1}"
            )
        targets = np.zeros((len(labels), num_classes), np.float32)
        targets[np.arange(len(labels)), labels] = 1.0
        return targets, labels, num_classes

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
    if kind is OutputKind.LOGITS:
        z = out - out.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        return p.astype(np.float32), np.argmax(out, axis=1).astype(np.int64), width

    sums = out.sum(axis=1)
    negative = np.any(out < 0, axis=1)
    if kind is OutputKind.PROBABILITIES:
        off = negative | (np.abs(sums - 1.0) > SUM_TOLERANCE)
    else:  # top-k: revealed probabilities sum to at most 1
        off = negative | (sums > 1.0 + SUM_TOLERANCE) | (sums <= 0)
    if np.any(off):
        i = int(np.argmax(off))
        raise OracleOutputError(
            f"the oracle promised {kind.value} but {int(off.sum())} of {len(out)} answers are "
            f"not (a part of) a probability distribution (e.g. row {i}: sum {sums[i]:.4g}, "
            f"min {out[i].min():.4g}); if it returns logits, declare output='logits'"
        )
    labels = np.argmax(out, axis=1).astype(np.int64)
    if kind is OutputKind.PROBABILITIES:
        return (out / sums[:, None]).astype(np.float32), labels, width

    revealed = out > 0
    count = revealed.sum(axis=1)
    if k is not None and np.any(count > k):
        raise OracleOutputError(
            f"a top-{k} oracle revealed up to {int(count.max())} probabilities per answer"
        )
    hidden = width - count
    rest = np.clip(1.0 - sums, 0.0, None) / np.maximum(hidden, 1)
    targets = np.where(revealed, out, rest[:, None])
    targets /= targets.sum(axis=1, keepdims=True)
    return targets.astype(np.float32), labels, width


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

    Exactly ``queries`` queries are spent, or none: every check (pool, shapes, budget) runs
    before the first query. Raises ``ValueError`` for an empty pool, a budget larger than the
    pool, or inputs of the wrong shape; :class:`BudgetExhaustedError` when the oracle's own
    budget cannot pay for ``queries``; :class:`OracleOutputError` when the answers are not
    what the oracle promised.
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
            progress="Learning-based extraction labels its whole query set up front; nothing "
                     "was queried.",
        )
    if kind is OutputKind.TOP_K and k is None:
        k = getattr(oracle, "k", None)
    rows = x.reshape(len(x), -1)
    answers: list[NDArray[Any]] = []
    for start in range(0, len(idx), batch_size):
        answers.append(np.asarray(oracle(rows[idx[start : start + batch_size]])))
    targets, labels, classes = targets_from_outputs(np.concatenate(answers), kind, classes, k)
    return LabelledQueries(idx, targets, labels, kind, classes,
                           k if kind is OutputKind.TOP_K else None)
