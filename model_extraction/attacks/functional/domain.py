"""The input domain an API enforces: a box ``[lo, hi]^d`` that no query may leave.

A deployed API answers only inputs of its domain (pixels in ``[0, 1]``, say) and rejects or
clips the rest, so the attack draws its lines across the box from face to face, searches them
only where they lie inside it, and turns finite-difference probes back at a face. What it
extracts is then the victim *on its domain*: a unit whose hyperplane never meets the box is
constant there and shows up only in the model's affine term.

:class:`Domain` with ``bounded=False`` is the paper's setting (§6.1: any float64 input), where
lines run far outside the box (the box then only sets the scale).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model_extraction.oracle import Oracle

from .search import Line

Array = NDArray[np.float64]

__all__ = ["Domain", "OutsideDomainError", "box_of", "checked_reference", "guarded", "kept_in",
           "spread"]

# A line's searched stretch ends this fraction of its length inside the faces: the search's
# end slopes probe a little beyond the ends of its range.
_MARGIN = 1e-4
# The deep phases' lines through reference inputs are pulled this fraction of the way to the
# box's centre: two images share the faces of their zero pixels, and so does the whole line
# between them, where no finite difference along the first layer's rows stays in the box.
_PULL = 1e-3


@dataclass(frozen=True)
class Domain:
    """The box ``[lo, hi]^d`` and whether queries must stay inside it; ``reference``: natural
    inputs ``(n, d)`` the attacker holds, inside the box, for the deep phases' lines and draws
    (:meth:`line_through`, :meth:`draw`; the one-hidden-layer attack takes its own)."""

    lo: float
    hi: float
    d: int
    bounded: bool = True
    reference: Array | None = field(default=None, compare=False, repr=False)

    @property
    def width(self) -> float:
        return self.hi - self.lo

    @property
    def box(self) -> tuple[float, float] | None:
        """``(lo, hi)`` where queries are bounded, else ``None``."""
        return (self.lo, self.hi) if self.bounded else None

    @property
    def centre(self) -> Array:
        return np.full(self.d, 0.5 * (self.lo + self.hi))

    def uniform(self, rng: np.random.Generator, n: int, shrink: float = 1.0) -> Array:
        """``n`` points drawn uniformly from the box (scaled by ``shrink`` about its centre)."""
        return self.centre + rng.uniform(-0.5, 0.5, (n, self.d)) * self.width * shrink

    def face_room(self, points: Array) -> tuple[Array, Array]:
        """How far each coordinate of each point may move forwards and backwards before it
        leaves the box: ``(forward, backward)``, both shaped like ``points`` (``inf`` when
        queries are not bounded)."""
        if not self.bounded:
            inf = np.full(points.shape, np.inf)
            return inf, inf.copy()
        return np.maximum(self.hi - points, 0.0), np.maximum(points - self.lo, 0.0)

    def segment(self, line: Line) -> tuple[float, float]:
        """The stretch of ``t`` where ``line`` lies inside the box, shrunk by a small margin
        at both ends. Raises ``ValueError`` if the line misses the box."""
        o, v = line.origin, line.direction
        moving = v != 0
        if np.any(~moving & ((o < self.lo) | (o > self.hi))):
            raise ValueError("the line misses the box")
        a = (self.lo - o[moving]) / v[moving]
        b = (self.hi - o[moving]) / v[moving]
        t0, t1 = float(np.max(np.minimum(a, b))), float(np.min(np.maximum(a, b)))
        if not t1 > t0:
            raise ValueError("the line misses the box")
        margin = _MARGIN * (t1 - t0)
        return t0 + margin, t1 - margin

    def random_line(self, rng: np.random.Generator, reference: Array | None, kind: int,
                    visits: NDArray[np.intp] | None = None) -> Line:
        """A line across the box, from face to face.

        With ``reference`` inputs (natural inputs the attacker holds, ``(n, d)``), ``kind``
        ``0`` is a line through two of them (it crosses the hyperplanes that matter where the
        data lives) and ``1`` a line from one of them to a uniform point of the box (it crosses
        the units whose state differs between the data and the bulk of the box, such as units
        active on almost all the data and nowhere else). Otherwise (and for ``kind`` 2), a
        diagonal through the centre, from a random vertex to the opposite one: the longest lines
        the box holds. A line in a Gaussian direction leaves the box after a short stretch, and
        crosses far fewer hyperplanes. ``visits`` ``(n,)``: how many lines have passed through
        each reference input so far; the least visited are picked (ties at random), instead of
        any two at random. The line records those it passes through
        (:attr:`~.search.Line.through`).
        """
        if reference is not None and len(reference) >= 2 and kind in (0, 1):
            if visits is None:
                i, j = rng.choice(len(reference), 2, replace=False)
            else:
                order = rng.permutation(len(reference))
                i, j = order[np.argsort(visits[order], kind="stable")[:2]]
            a = reference[i]
            b = reference[j] if kind == 0 else self.uniform(rng, 1)[0]
            if np.any(a != b):
                return Line(0.5 * (a + b), 0.5 * (b - a), (int(i), int(j))[: 2 - kind])
        signs = rng.choice([-1.0, 1.0], self.d)
        return Line(self.centre, 0.5 * self.width * signs)

    def contains(self, points: Array, margin: float = 0.0) -> NDArray[np.bool_]:
        """Which of ``points`` ``(n, d)`` lie in the box shrunk by ``margin`` on every side
        (all of them when queries are not bounded)."""
        if not self.bounded:
            return np.ones(len(points), dtype=bool)
        return np.all((points >= self.lo + margin) & (points <= self.hi - margin), axis=1)

    def holds(self, points: Array, directions: Array, radius: Array | float) -> NDArray[np.bool_]:
        """Which segments ``points ± radius · directions`` (``(n, d)``, ``(n, d)``, ``(n,)``)
        lie in the box."""
        reach = np.abs(directions) * np.reshape(radius, (-1, 1))
        return self.contains(points + reach) & self.contains(points - reach)

    def clip(self, points: Array) -> Array:
        """``points`` moved onto the box's nearest point (unchanged when not bounded)."""
        return np.clip(points, self.lo, self.hi) if self.bounded else points

    def within(self, line: Line, t_range: tuple[float, float]) -> tuple[float, float] | None:
        """The part of ``t_range`` where ``line`` lies in the box (a margin at both ends, see
        :meth:`segment`); ``None`` when there is none. ``t_range`` itself when not bounded."""
        if not self.bounded:
            return t_range
        try:
            t0, t1 = self.segment(line)
        except ValueError:
            return None
        t0, t1 = max(t0, t_range[0]), min(t1, t_range[1])
        return (t0, t1) if t1 > t0 else None

    def draw(self, rng: np.random.Generator, n: int) -> Array:
        """``n`` points of the box where the deep phases look: uniform, or, with ``reference``
        inputs, half of them reference inputs (picked at random) and half uniform."""
        if self.reference is None:
            return self.uniform(rng, n)
        picked = self.reference[rng.integers(len(self.reference), size=n // 2)]
        return np.concatenate([picked, self.uniform(rng, n - n // 2)])

    def line_through(self, rng: np.random.Generator, origin: Array | None = None,
                     visits: NDArray[np.intp] | None = None) -> Line:
        """A line of the deep phases inside the box, unit direction: through ``origin`` (a
        point of the box) in a random diagonal direction, turned toward the far side in each
        coordinate that lies in the outer quarters of the box, or, without one, through a
        uniform point of the box's middle half in a random diagonal direction (a line from a
        uniform point of a high-dimensional box leaves it at once: one of its coordinates is
        near a face); with ``reference`` inputs, two lines in three are :meth:`random_line`'s
        through them instead, pulled ``_PULL`` of the way to the centre (a line through two
        images lies on the faces of the pixels both leave at 0, and the Jacobians at its
        critical points, measured along the first layer's rows, have no room there). With
        ``visits`` ``(n,)``, how many lines have passed through each reference input so far,
        those passed through least are picked (each once before any twice: a unit that changes
        state on two images of a thousand is crossed only by a line through one of them)."""
        if origin is None and self.reference is not None:
            line = self.random_line(rng, self.reference, int(rng.integers(3)), visits)
            origin = self.centre + (line.origin - self.centre) * (1.0 - _PULL)
            return Line(origin, line.direction / np.linalg.norm(line.direction), line.through)
        signs = rng.choice([-1.0, 1.0], self.d)
        if origin is None:
            origin = self.uniform(rng, 1, shrink=0.5)[0]
        else:
            off = self.centre - origin
            signs = np.where(np.abs(off) > 0.25 * self.width, np.sign(off), signs)
        return Line(origin, signs / np.sqrt(self.d))

    def onto_plane(self, points: Array, row: Array, offset: float, margin: float = 0.0,
                   steps: int = 50, side: tuple[Array, float] | None = None) -> Array:
        """``points`` ``(n, d)`` moved onto the hyperplane ``row · x + offset = 0`` (``row``
        of unit norm), by projections onto it and onto the box shrunk by ``margin`` in turn
        where queries are bounded (the hyperplane's points in that box are where they
        converge, when it meets it), ending on the hyperplane: the caller keeps those
        :meth:`contains` or :meth:`holds` says. ``side`` ``(a, b)``, ``a`` of unit norm: the
        half-space ``a · x + b >= 0`` is projected onto as well (the caller checks it)."""
        p = np.array(points, dtype=np.float64)
        for _ in range(steps if self.bounded else 0):
            p -= (p @ row + offset)[:, None] * row
            if side is not None:
                p -= np.minimum(p @ side[0] + side[1], 0.0)[:, None] * side[0]
            p = np.clip(p, self.lo + margin, self.hi - margin)
        return p - (p @ row + offset)[:, None] * row

    def inward(self, points: Array, directions: Array, step: float) -> Array:
        """``directions`` (unit rows) with the coordinates zeroed along which ``points ± step``
        would leave the box, renormalised: probes on both sides stay inside."""
        if not self.bounded:
            return directions
        fwd, back = self.face_room(points)
        u = np.where(np.minimum(fwd, back) > step, directions, 0.0)
        norm = np.linalg.norm(u, axis=1, keepdims=True)
        return np.where(norm > 0, u / np.where(norm > 0, norm, 1.0), directions)


def spread(domain: Domain | None, rng: np.random.Generator, n: int, d: int, sd: float,
           scale: float) -> Array:
    """``n`` points ``(n, d)`` where the deep phases look: :meth:`Domain.draw` in a bounded
    ``domain``, else (the paper's setting) Gaussian of standard deviation ``sd · scale``."""
    if domain is not None and domain.bounded:
        return domain.draw(rng, n)
    return rng.standard_normal((n, d)) * sd * scale


def box_of(domain: Domain | None) -> tuple[float, float] | None:
    """``(lo, hi)`` of a bounded ``domain``, else ``None``: the box the geometry of
    :mod:`.prefix` keeps its points in (:func:`.prefix.placed_on`)."""
    return None if domain is None else domain.box


def kept_in(domain: Domain | None, points: Array) -> Array:
    """``points`` moved into a bounded ``domain``'s box (:meth:`Domain.clip`; as they are
    otherwise): starting points of a search, which need not stay where they were drawn."""
    return points if domain is None else domain.clip(points)


def checked_reference(reference: Any, bounds: tuple[float, float], d: int) -> Array:
    """Reference inputs as an ``(n, d)`` float64 array (images flattened). Raises
    ``ValueError`` for fewer than 2 rows, another width, or values not finite or outside
    ``bounds``."""
    ref = np.asarray(reference, dtype=np.float64)
    ref = ref.reshape(len(ref), -1) if ref.ndim > 2 else ref
    if ref.ndim != 2 or ref.shape[1] != d or len(ref) < 2:
        raise ValueError(f"reference_inputs must be at least 2 rows of {d} inputs; got shape "
                         f"{ref.shape}")
    if not np.all(np.isfinite(ref)) or ref.min() < bounds[0] or ref.max() > bounds[1]:
        raise ValueError(f"reference_inputs must be finite and inside input_bounds {bounds}; "
                         "scale them as the API expects")
    return ref


class OutsideDomainError(RuntimeError):
    """A query outside the box that the API enforces: refused before it is sent (an attack
    that makes one has a defect; none is spent)."""


class _Guarded(Oracle):
    """An oracle that refuses, before they are sent, queries outside ``domain``'s box; every
    other attribute (the queries counted, the budget) is the wrapped oracle's own."""

    def __init__(self, oracle: Oracle, domain: Domain) -> None:  # no state of its own
        self._oracle, self._domain = oracle, domain

    def __call__(self, x: Any) -> Any:
        x = np.asarray(x, dtype=np.float64)
        outside = ~self._domain.contains(x) if x.ndim == 2 else np.zeros(0, dtype=bool)
        if outside.any():
            worst = float(max(self._domain.lo - x.min(), x.max() - self._domain.hi))
            raise OutsideDomainError(
                f"the attack asked for {int(outside.sum())} inputs outside the box "
                f"[{self._domain.lo}, {self._domain.hi}]^d (by up to {worst:.3g}); none was "
                "sent")
        return self._oracle(x)

    @property
    def queries(self) -> int:  # type: ignore[override]
        return self._oracle.queries

    @queries.setter
    def queries(self, value: int) -> None:
        self._oracle.queries = value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._oracle, name)


def guarded(oracle: Oracle, domain: Domain) -> Oracle:
    """``oracle`` behind a guard that refuses queries outside ``domain``'s box
    (:class:`OutsideDomainError`) where queries are bounded; ``oracle`` itself otherwise."""
    return _Guarded(oracle, domain) if domain.bounded else oracle
