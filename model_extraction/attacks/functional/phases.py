"""Queries and wall time per phase of an attack, and the progress callback (both attacks)."""

from __future__ import annotations

import time
from collections.abc import Callable

from model_extraction.oracle import Oracle

from .result import PhaseCost

__all__ = ["PhaseLog", "ProgressFn"]

ProgressFn = Callable[[str, int, int, int | None], None]


class PhaseLog:
    """The cost of each phase (:class:`~.result.PhaseCost`) and the phase the attack is in.

    ``progress(phase, queries, units, hidden)`` is called when a phase starts, when one ends
    with ``units`` given, and by :meth:`tick`; ``hidden`` is the number of units the caller
    expects (``None``: unknown).
    """

    def __init__(self, oracle: Oracle, progress: ProgressFn | None = None, *,
                 hidden: int | None = None, phase: str = "start") -> None:
        self.oracle, self.progress, self.hidden = oracle, progress, hidden
        self.costs: dict[str, PhaseCost] = {}
        self.phase = phase
        self._mark: tuple[str, int, float] | None = None

    def enter(self, name: str, units: int = 0) -> None:
        """Start phase ``name`` (ending the one in progress); ``units`` found so far."""
        self.leave()
        self.phase = name
        self._mark = (name, self.oracle.queries, time.perf_counter())
        self.tick(units)

    def leave(self, units: int | None = None) -> None:
        """Add the queries and seconds since :meth:`enter` to the phase's cost; report
        progress if ``units`` (found so far) is given."""
        if self._mark is not None:
            name, queries, start = self._mark
            cost = self.costs.setdefault(name, PhaseCost())
            cost.queries += self.oracle.queries - queries
            cost.seconds += time.perf_counter() - start
            self._mark = None
        if units is not None:
            self.tick(units)

    def tick(self, units: int) -> None:
        """Report progress: the phase, the queries so far and ``units`` found."""
        if self.progress is not None:
            self.progress(self.phase, self.oracle.queries, units, self.hidden)
