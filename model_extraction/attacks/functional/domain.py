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

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .search import Line

Array = NDArray[np.float64]

__all__ = ["Domain"]

# A line's searched stretch ends this fraction of its length inside the faces: the search's
# end slopes probe a little beyond the ends of its range.
_MARGIN = 1e-4


@dataclass(frozen=True)
class Domain:
    """The box ``[lo, hi]^d`` and whether queries must stay inside it."""

    lo: float
    hi: float
    d: int
    bounded: bool = True

    @property
    def width(self) -> float:
        return self.hi - self.lo

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

    def random_line(self, rng: np.random.Generator, reference: Array | None, kind: int) -> Line:
        """A line across the box, from face to face.

        With ``reference`` inputs (natural inputs the attacker holds, ``(n, d)``), ``kind``
        ``0`` is a line through two of them (it crosses the hyperplanes that matter where the
        data lives) and ``1`` a line from one of them to a uniform point of the box (it crosses
        the units whose state differs between the data and the bulk of the box, such as units
        active on almost all the data and nowhere else). Otherwise (and for ``kind`` 2), a
        diagonal through the centre, from a random vertex to the opposite one: the longest lines
        the box holds. A line in a Gaussian direction leaves the box after a short stretch, and
        crosses far fewer hyperplanes.
        """
        if reference is not None and len(reference) >= 2 and kind in (0, 1):
            i, j = rng.choice(len(reference), 2, replace=False)
            a = reference[i]
            b = reference[j] if kind == 0 else self.uniform(rng, 1)[0]
            if np.any(a != b):
                return Line(0.5 * (a + b), 0.5 * (b - a))
        signs = rng.choice([-1.0, 1.0], self.d)
        return Line(self.centre, 0.5 * self.width * signs)

    def inward(self, points: Array, directions: Array, step: float) -> Array:
        """``directions`` (unit rows) with the coordinates zeroed along which ``points ± step``
        would leave the box, renormalised: probes on both sides stay inside."""
        if not self.bounded:
            return directions
        fwd, back = self.face_room(points)
        u = np.where(np.minimum(fwd, back) > step, directions, 0.0)
        norm = np.linalg.norm(u, axis=1, keepdims=True)
        return np.where(norm > 0, u / np.where(norm > 0, norm, 1.0), directions)
