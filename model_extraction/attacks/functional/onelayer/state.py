"""What the one-hidden-layer attack holds while it runs: its settings and oracle (:class:`Run`),
the units found (:class:`Units`), and the answers and Jacobians measured (:class:`Measured`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from model_extraction.oracle import Oracle

from ..domain import Domain
from ..phases import PhaseLog

if TYPE_CHECKING:
    from ..extract import FunctionalExtraction

Array = NDArray[np.float64]

__all__ = ["Measured", "Run", "Units"]


@dataclass
class Units:
    """Units recovered so far: unit-norm rows ``r`` ``(d,)``, biases ``β``, output vectors ``g``
    ``(K,)`` (the logits' Jacobian jumps by ``g rᵀ = J(y > 0) - J(y < 0)`` across the
    hyperplane), the critical point each was measured at, and each row's estimated mean
    absolute error."""

    rows: list[Array] = field(default_factory=list)
    biases: list[float] = field(default_factory=list)
    outs: list[Array] = field(default_factory=list)
    points: list[Array] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, row: Array, bias: float, out: Array, point: Array, error: float) -> bool:
        """Add a unit, or keep the more precise copy if the same hyperplane is already known."""
        for n, (r, b) in enumerate(zip(self.rows, self.biases, strict=True)):
            c = float(r @ row)
            if abs(c) > 1 - 1e-6 and abs(np.sign(c) * b - bias) <= 1e-3 * (1 + abs(bias)):
                if error < self.errors[n]:
                    sign = float(np.sign(c))
                    self.rows[n], self.biases[n] = sign * row, sign * bias
                    # g = J(y > 0) - J(y < 0) does not change when the row is flipped.
                    self.outs[n], self.points[n], self.errors[n] = out, point, error
                return False
        self.rows.append(row)
        self.biases.append(bias)
        self.outs.append(out)
        self.points.append(point)
        self.errors.append(error)
        return True


@dataclass
class Measured:
    """Answers the last layer may reuse (§6.6; at most 256 rows of each batch), and every
    Jacobian measured ``(K, d)`` with its point and column steps ``(d,)``; ``rng`` draws the
    answers kept and the Jacobians the signs and the affine term use."""

    rng: np.random.Generator
    x: list[Array] = field(default_factory=list)
    y: list[Array] = field(default_factory=list)
    jac_points: list[Array] = field(default_factory=list)
    jacs: list[Array] = field(default_factory=list)
    jac_steps: list[Array] = field(default_factory=list)

    def remember(self, x: Array, y: Array) -> None:
        """Keep answered queries ``x`` ``(n, d)``, ``y`` ``(n, K)``, at most 256 rows of them.

        The least squares needs a few thousand rows in all; keeping every probe of paper mode
        (``8d`` rows of ``d`` floats per unit) would take gigabytes at ``h = 128``.
        """
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if len(x) > 256:
            keep = self.rng.choice(len(x), 256, replace=False)
            x, y = x[keep], y[keep]
        self.x.append(x)
        self.y.append(y)

    def add_jacobians(self, points: Array, jacs: Array, steps: Array) -> None:
        """Keep Jacobians ``(n, K, d)`` measured at ``points`` ``(n, d)`` with ``steps``."""
        self.jac_points.extend(points)
        self.jacs.extend(jacs)
        self.jac_steps.extend(steps)

    def answers(self) -> tuple[Array, Array]:
        """Every answer kept, as ``(n, d)`` inputs and ``(n, K)`` outputs."""
        return np.concatenate(self.x), np.concatenate(self.y)


@dataclass
class Run:
    """The settings, oracle and randomness of one run, the cost of its phases, its notes and
    the lines searched; passed to every phase (which reads the units and measurements it needs
    from :class:`Units` and :class:`Measured`)."""

    cfg: FunctionalExtraction
    oracle: Oracle
    d: int
    domain: Domain
    log: PhaseLog
    rng: np.random.Generator
    reference: Array | None = None
    notes: list[str] = field(default_factory=list)
    lines: int = 0
    bent: int = 0
    matched: int = 0

    @property
    def centre(self) -> Array:
        return self.domain.centre

    @property
    def width(self) -> float:
        return self.domain.width
