"""Critical-point search along lines (Jagielski et al. 2020, §6.3 and Algorithm 1).

Along a line ``x(t) = origin + t · direction`` the victim's logits are a piecewise-linear function
of ``t``; its kinks are the points where one hidden ReLU changes sign. Algorithm 1 (the
*2-linearity test*) locates the only kink of an interval from the two end slopes, or rejects the
interval when the value at the candidate does not match; rejected intervals are split in two.

Two drivers share that test:

* :func:`search_line_paper` follows the paper: one interval at a time, depth-first.
* :func:`search_line` tests all pending intervals of a line in one oracle batch per round
  (a grid first, then batched splits). Same test, far fewer oracle calls.

:func:`crossings` applies the test once to many short segments at a time (where each segment
is expected to hold one kink, as in the refinement and flatness tests of deep extraction).

Both drivers are bounded: an interval is split at most ``max_depth`` times and a line never
costs more than ``max_queries``; what could not be resolved within those bounds is counted,
never retried forever.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from model_extraction.oracle import Oracle

Array = NDArray[np.float64]

__all__ = ["Kink", "Line", "LineSearchStats", "crossings", "search_line", "search_line_paper"]


@dataclass(frozen=True)
class Line:
    """The line ``origin + t · direction`` of §6.3 (the paper's ``u + t v``); ``through``: the
    indices of the reference inputs it was drawn through (in a box, :mod:`.domain`)."""

    origin: Array
    direction: Array
    through: tuple[int, ...] = ()

    def at(self, t: Array) -> Array:
        """Points of the line at parameters ``t`` (shape ``(n,)``) as an ``(n, d)`` array."""
        t = np.asarray(t, dtype=np.float64)
        return self.origin[None, :] + t[:, None] * self.direction[None, :]


@dataclass(frozen=True)
class Kink:
    """A critical point found on a line: where it is, how the slope ``dO_L/dt`` changes, and
    how far from ``t`` it may lie as far as the check that accepted it can tell (that check's
    tolerance on the outputs over the largest slope change: a kink whose slope changes by
    ``3e-5`` of the outputs' size passes it up to ``4e-6`` away, and the search placed one
    ``3e-8`` off on random 40-20-10-1 seed 2 in ``[-1, 1]^40``)."""

    t: float
    slope_change: Array  # (K,): slope after the kink minus slope before it
    resolution: float = 0.0  # in t


@dataclass
class LineSearchStats:
    """What a line search cost and what it had to leave unresolved."""

    queries: int = 0
    rounds: int = 0
    rejected: int = 0  # candidates Algorithm 1 rejected (interval split)
    unresolved: int = 0  # intervals still holding kinks when the depth bound was reached
    kinks: int = 0
    curved: bool = False  # far more rejected intervals than critical points found
    notes: list[str] = field(default_factory=list)


def _tolerance(*values: Array) -> float:
    scale = max(float(np.max(np.abs(v))) if v.size else 0.0 for v in values)
    return 1e-9 * scale + 1e-300


def _kink(t: float, slope_change: Array, y1: Array, y2: Array) -> Kink:
    """The kink at ``t`` that the 2-linearity check accepted on an interval with end values
    ``y1``, ``y2`` ``(K,)`` (its tolerance, ``0.1 _tolerance``, sets the resolution)."""
    change = float(np.max(np.abs(slope_change)))
    resolution = 0.1 * _tolerance(y1, y2) / change if change > 0 else np.inf
    return Kink(t, slope_change, resolution)


def _two_linearity(
    a: Array, b: Array, y1: Array, m1: Array, y2: Array, m2: Array
) -> tuple[Array, Array, Array]:
    """Vectorised lines 4–5 of Algorithm 1 for a batch of intervals.

    Returns the candidate ``t``, the value the two-segment model predicts there, and a mask of
    intervals whose end slopes and values agree with a single affine piece (no kink at all).
    With ``K`` outputs the intersection is the least-squares ``t`` over the outputs.
    """
    dm = m1 - m2  # (n, K)
    rhs = y2 - y1 - m2 * (b - a)[:, None]
    denom = np.einsum("nk,nk->n", dm, dm)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = a + np.einsum("nk,nk->n", rhs, dm) / denom
    yhat = y1 + m1 * (t - a)[:, None]
    span = (b - a)[:, None]
    scale = np.maximum.reduce([np.abs(y1).max(1), np.abs(y2).max(1), np.abs(m1 * span).max(1)])
    tol = 1e-9 * scale + 1e-300  # the same rule as _tolerance, for a batch
    affine = (np.abs(y1 + m1 * span - y2).max(1) <= tol) & (np.abs(dm * span).max(1) <= tol)
    return t, yhat, affine


def _looks_curved(stats: LineSearchStats, kinks: int) -> bool:
    """Whether the rejected intervals say the output is smooth, not piecewise linear.

    On a ReLU network an interval is rejected only while it holds two or more critical points,
    so halving resolves each critical point within a few dozen rejections at most (the depth
    needed to separate it from its nearest neighbour). On a smooth output (tanh, a reverse-
    sigmoid defence) intervals stay curved however small they get, and the 2-linearity test
    accepts a spurious "critical point" now and then. Thousands of rejections, 64 or more per
    critical point found, mean the latter: the search stops there, before its query cap.
    """
    stats.curved = stats.rejected >= 1000 and stats.rejected > 64 * (kinks + 1)
    return stats.curved


class _Prober:
    """Evaluates ``O_L`` at ``t``, ``t - eps`` and ``t + eps`` on a line, counting queries."""

    def __init__(self, oracle: Oracle, line: Line, stats: LineSearchStats, max_queries: int):
        self.oracle, self.line, self.stats, self.max_queries = oracle, line, stats, max_queries

    def values(self, t: Array) -> Array:
        if self.stats.queries + len(t) > self.max_queries:
            raise _LineBudget
        self.stats.queries += len(t)
        return np.asarray(self.oracle(self.line.at(t)), dtype=np.float64)

    def triples(self, t: Array, eps: Array) -> tuple[Array, Array, Array]:
        """Value at ``t``, slope just left of ``t`` and slope just right of ``t``."""
        n = len(t)
        out = self.values(np.concatenate([t - eps, t, t + eps]))
        lo, mid, hi = out[:n], out[n : 2 * n], out[2 * n :]
        return mid, (mid - lo) / eps[:, None], (hi - mid) / eps[:, None]


class _LineBudget(Exception):
    pass


def _initial_grid(
    lo: float, hi: float, grid: int, known: Array | None, rel_eps: float
) -> tuple[Array, Array]:
    """Grid points of :func:`search_line` and the finite-difference step at each.

    ``grid`` equal intervals, plus the midpoints between consecutive ``known`` critical points
    (equal-interval points closer than a quarter interval to a known one are dropped). Each
    point's step is ``rel_eps`` times its shorter neighbouring interval, and at most half its
    distance to the nearest known critical point.
    """
    ts = np.linspace(lo, hi, grid + 1)
    spacing = (hi - lo) / grid
    k = np.sort(np.asarray(known if known is not None else [], dtype=np.float64))
    k = k[(k > lo) & (k < hi)]
    if not len(k):
        return ts, np.full(len(ts), spacing * rel_eps)

    def distance(t: Array) -> Array:
        i = np.clip(np.searchsorted(k, t), 1, len(k))
        return np.minimum(np.abs(t - k[i - 1]), np.abs(t - k[np.minimum(i, len(k) - 1)]))

    keep = distance(ts) >= 0.25 * spacing
    keep[[0, -1]] = True
    ts = np.union1d(ts[keep], 0.5 * (k[1:] + k[:-1]))
    gaps = np.diff(ts)
    shorter = np.minimum(np.concatenate([gaps[:1], gaps]), np.concatenate([gaps, gaps[-1:]]))
    return ts, np.minimum(shorter * rel_eps, 0.5 * distance(ts))


def search_line(
    oracle: Oracle,
    line: Line,
    t_range: tuple[float, float] = (-1.0, 1.0),
    *,
    grid: int = 256,
    known: Array | None = None,
    max_depth: int = 40,
    max_queries: int = 200_000,
    rel_eps: float = 1e-3,
    verify_step: float = 1e-2,
) -> tuple[list[Kink], LineSearchStats]:
    """Find the critical points on ``line`` within ``t_range``, testing intervals in batches.

    Parameters
    ----------
    oracle:
        A float64 logit oracle.
    line, t_range:
        The line and the parameter interval to sweep.
    grid:
        Number of initial intervals of equal length (one batch of ``3 (grid + 1)`` queries).
    known:
        Where critical points are expected (those of units already known): the initial grid
        also gets the midpoints between consecutive ones, so that each of them starts alone in
        its interval and is located in one round instead of after several halvings. The search
        is as complete without it; only cheaper with it.
    max_depth:
        How many times an interval may be halved before it is given up (counted as unresolved).
    max_queries:
        Hard cap on the queries this line may spend.
    rel_eps:
        Finite-difference step for the end slopes, relative to the interval length.
    verify_step:
        Offset of the two verification queries from the candidate, relative to the interval.
        It must exceed ``rel_eps``: a kink inside a slope probe makes the two pieces meet at the
        end of that probe, and only an offset larger than the probe exposes it.
    """
    if not verify_step > rel_eps:
        raise ValueError("verify_step must be larger than rel_eps")
    stats = LineSearchStats()
    probe = _Prober(oracle, line, stats, max_queries)
    lo, hi = float(t_range[0]), float(t_range[1])
    if not hi > lo:
        raise ValueError(f"t_range must be increasing, got {t_range}")
    ts, eps = _initial_grid(lo, hi, grid, known, rel_eps)
    kinks: list[Kink] = []
    try:
        y, ml, mr = probe.triples(ts, eps)
        # pending intervals: arrays of a, b and the end data
        a, b = ts[:-1], ts[1:]
        y1, m1, y2, m2 = y[:-1], mr[:-1], y[1:], ml[1:]
        depth = 0
        while len(a):
            stats.rounds += 1
            t, yhat, affine = _two_linearity(a, b, y1, m1, y2, m2)
            keep = ~affine
            a, b, y1, m1, y2, m2, t, yhat = (v[keep] for v in (a, b, y1, m1, y2, m2, t, yhat))
            if not len(a):
                break
            # Verify the candidate (the paper's check), and also a point left of it against the
            # left piece and one right of it against the right piece: the paper's check alone
            # also passes when two kinks make the pieces meet on an outer segment.
            step = (b - a) * verify_step
            inside = np.isfinite(t) & (t - step > a) & (t + step < b)
            ok = np.zeros(len(a), dtype=bool)
            if inside.any():
                idx = np.flatnonzero(inside)
                ti, si = t[idx], step[idx]
                n = len(idx)
                vals = probe.values(np.concatenate([ti - si, ti, ti + si]))
                left, centre, right = vals[:n], vals[n : 2 * n], vals[2 * n :]
                pred_left = y1[idx] + m1[idx] * (ti - si - a[idx])[:, None]
                pred_right = y2[idx] + m2[idx] * (ti + si - b[idx])[:, None]
                tol = np.array([_tolerance(y1[i], y2[i]) for i in idx]) * 0.1
                match = (
                    (np.max(np.abs(left - pred_left), axis=1) <= tol)
                    & (np.max(np.abs(centre - yhat[idx]), axis=1) <= tol)
                    & (np.max(np.abs(right - pred_right), axis=1) <= tol)
                )
                ok[idx[match]] = True
            for i in np.flatnonzero(ok):
                kinks.append(_kink(float(t[i]), m2[i] - m1[i], y1[i], y2[i]))
            split = ~ok
            stats.rejected += int(split.sum())
            depth += 1
            if _looks_curved(stats, len(kinks)):
                break
            if depth > max_depth:
                stats.unresolved += int(split.sum())
                break
            a, b, y1, m1, y2, m2 = (v[split] for v in (a, b, y1, m1, y2, m2))
            if not len(a):
                break
            mid = 0.5 * (a + b)
            ym, mlm, mrm = probe.triples(mid, (b - a) * 0.5 * rel_eps)
            a = np.concatenate([a, mid])
            b = np.concatenate([mid, b])
            y1, m1 = np.concatenate([y1, ym]), np.concatenate([m1, mrm])
            y2, m2 = np.concatenate([ym, y2]), np.concatenate([mlm, m2])
    except _LineBudget:
        stats.notes.append(f"line search stopped at its cap of {max_queries} queries")
    kinks.sort(key=lambda k: k.t)
    stats.kinks = len(kinks)
    return kinks, stats


def search_line_paper(
    oracle: Oracle,
    line: Line,
    t_range: tuple[float, float] = (-1.0, 1.0),
    *,
    max_depth: int = 40,
    max_queries: int = 200_000,
    rel_eps: float = 1e-3,
) -> tuple[list[Kink], LineSearchStats]:
    """Algorithm 1 as the paper runs it: test ``[t1, t2]``; on rejection split it and recurse.

    One interval per oracle round (depth-first, with an explicit stack so that the recursion is
    bounded by ``max_depth`` and the cost by ``max_queries``).
    """
    stats = LineSearchStats()
    probe = _Prober(oracle, line, stats, max_queries)
    lo, hi = float(t_range[0]), float(t_range[1])
    kinks: list[Kink] = []

    def end_data(t: float, length: float) -> tuple[Array, Array, Array]:
        y, ml, mr = probe.triples(np.array([t]), np.array([length * rel_eps]))
        return y[0], ml[0], mr[0]

    try:
        ya, _, ma = end_data(lo, hi - lo)
        yb, mb, _ = end_data(hi, hi - lo)
        stack = [(lo, hi, ya, ma, yb, mb, 0)]
        while stack:
            a, b, y1, m1, y2, m2, depth = stack.pop()
            stats.rounds += 1
            t, yhat, affine = _two_linearity(
                np.array([a]), np.array([b]), y1[None], m1[None], y2[None], m2[None]
            )
            if affine[0]:
                continue
            tc = float(t[0])
            if np.isfinite(tc) and a < tc < b:
                y = probe.values(np.array([tc]))[0]
                if np.max(np.abs(y - yhat[0])) <= _tolerance(y1, y2) * 0.1:
                    kinks.append(_kink(tc, m2 - m1, y1, y2))
                    continue
            stats.rejected += 1
            if _looks_curved(stats, len(kinks)):
                break
            if depth >= max_depth:
                stats.unresolved += 1
                continue
            mid = 0.5 * (a + b)
            ym, mlm, mrm = end_data(mid, b - a)
            stack.append((mid, b, ym, mrm, y2, m2, depth + 1))
            stack.append((a, mid, y1, m1, ym, mlm, depth + 1))
    except _LineBudget:
        stats.notes.append(f"line search stopped at its cap of {max_queries} queries")
    kinks.sort(key=lambda k: k.t)
    stats.kinks = len(kinks)
    return kinks, stats


def crossings(oracle: Oracle, points: Array, directions: Array, radius: Array) -> Array:
    """Where each line ``points[i] + t · directions[i]``, ``|t| ≤ radius[i]``, crosses its one
    critical point: ``(n, d)`` points, NaN rows where the segment holds no kink or more than one
    (the 2-linearity test and two checks fail). Costs ``6 n`` queries."""
    n, d = points.shape
    r = np.broadcast_to(np.asarray(radius, dtype=np.float64), (n,))
    ts = r[:, None] * np.array([-1.0, -1.0 + 1e-3, 1.0 - 1e-3, 1.0])
    y = np.asarray(oracle((points[:, None, :] + ts[:, :, None] * directions[:, None, :])
                          .reshape(-1, d)), dtype=np.float64).reshape(n, 4, -1)
    eps = (ts[:, 1] - ts[:, 0])[:, None]
    left, right = (y[:, 1] - y[:, 0]) / eps, (y[:, 3] - y[:, 2]) / eps
    k = np.argmax(np.abs(right - left), axis=1)
    i = np.arange(n)
    # the two pieces meet where y0 + m_l (t + r) = y3 + m_r (t - r)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (y[i, 3, k] - y[i, 0, k] - r * (left[i, k] + right[i, k])) \
            / (left[i, k] - right[i, k])
    visible = np.abs(right - left)[i, k] > 1e-6 * (np.abs(left) + np.abs(right)).max(axis=1)
    t = np.where(visible & (np.abs(t) < 0.9 * r), t, np.nan)
    at = np.nan_to_num(t)
    probe = points + at[:, None] * directions
    side = points + (0.5 * (at - r))[:, None] * directions
    z = np.asarray(oracle(np.concatenate([probe, side])), dtype=np.float64)
    tol = 1e-9 * (1 + np.abs(y).max(axis=(1, 2)))
    ok = (np.max(np.abs(z[:n] - y[:, 0] - left * (at + r)[:, None]), axis=1) <= tol) \
        & (np.max(np.abs(z[n:] - y[:, 0] - left * (0.5 * (at + r))[:, None]), axis=1) <= tol)
    return np.where((ok & np.isfinite(t))[:, None], probe, np.nan)
