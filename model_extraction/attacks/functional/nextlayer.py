"""The next layer's neurons on top of the layers extracted so far (Carlini et al., CRYPTO 2020,
§4.3): signatures from the critical points off the known hyperplanes (:mod:`.signatures`,
:mod:`.joint`), the flatness test (:func:`.layers.flat_above`), and more lines, aimed where
partial rows lack units (:mod:`.aim`), until no batch finds a new neuron.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from model_extraction.oracle import Oracle

from .aim import MORE_LINES, search_lines, toward_every_missing, toward_missing
from .critical import CriticalPoints
from .domain import Domain
from .joint import joint_rows
from .layers import flat_above
from .phases import PhaseLog
from .prefix import Prefix
from .signatures import Signatures, coefficients, complete_rows, distinct_neurons, next_layer

Array = NDArray[np.float64]

__all__ = ["distinct_with_partial", "grow", "settled", "with_partial"]


def grow(oracle: Oracle, found: CriticalPoints, prefix: Prefix, lines: list[Any],
          rng: np.random.Generator, phases: PhaseLog,
          search: tuple[float, float, int], domain: Domain | None = None,
          ) -> tuple[CriticalPoints, Signatures, Signatures]:
    """The next layer's neurons: known on every unit below and flat in the space of the
    prefix's top activations (:func:`.layers.flat_above`; a neuron further up, seen in one
    region, is not). More lines (half aimed where the units that partial rows lack are
    active) until a batch finds no new neuron (no more than the most found after a batch so
    far: the flatness test of a rare neuron, or of a neuron further up seen in one region,
    can pass one batch and fail the next) and no partial row is left, or two batches find no
    new neuron, or ``max_lines``; before it returns with partial rows, one last try aimed at
    every unit they lack (:func:`.aim.toward_every_missing`), and the signatures again.
    Returns the points found, the neurons and the partial rows left that are flat
    (:func:`settled`). ``domain``: the box queries stay in, where bounded."""
    scale, reach, max_lines = search
    before, stable, tried = -1, 0, False
    while True:
        phases.enter("signatures", sum(prefix.widths))
        rest = np.flatnonzero(np.min(prefix.distances(found.points), axis=1) > 1e-7 * scale)
        coef, ok = coefficients(prefix, found.points[rest], found.normals[rest])
        layer = next_layer(prefix.top(found.points[rest[ok]]), coef[ok], rest[ok])
        layer = joint_rows(layer, prefix, found.points, found.normals, rest[~ok], rng)
        layer = complete_rows(layer, prefix, found.points, found.normals, rest[~ok])
        complete = layer.known.all(axis=1)
        neurons = complete.copy()
        neurons[complete] = flat_above(
            oracle, prefix, layer.rows[complete], layer.biases[complete], rng, scale=scale,
            near=[found.points[m] for m, c in zip(layer.members, complete, strict=True) if c],
            domain=domain)
        stable = stable + 1 if neurons.sum() <= before else 0
        done = (stable and complete.all()) or stable >= 2 or len(lines) >= max_lines
        if done and not tried and not complete.all():  # a last try for the partial rows
            phases.enter("critical points", sum(prefix.widths))
            found, tried = toward_every_missing(oracle, found, prefix,
                                                layer.subset(~complete), rng, scale,
                                                domain), True
            continue
        if done:
            return found, layer.subset(neurons), settled(oracle, prefix, layer.subset(
                ~complete), [found.points[m] for m, c in zip(layer.members, complete,
                                                             strict=True) if not c], rng, scale,
                domain)
        before = max(before, int(neurons.sum()))
        phases.enter("critical points", sum(prefix.widths))
        found = toward_missing(oracle, found, prefix, layer.subset(~complete), rng, scale,
                               domain)
        wanted = ~layer.known[~complete].all(axis=0)  # units some partial row lacks
        found = search_lines(oracle, found, lines, rng, MORE_LINES, scale, reach, (prefix, wanted),
                             domain=domain)


def settled(oracle: Oracle, prefix: Prefix, partial: Signatures, near: list[Array],
            rng: np.random.Generator, scale: float, domain: Domain | None = None) -> Signatures:
    """The rows of ``partial`` (critical points ``near``) that are flat in the space of the
    prefix's top activations, their unknown entries set to 0: a neuron whose weight on a unit
    of the layer below is unknown after the aimed lines and the last try was never seen at a
    critical point where that unit is active (on a trained victim, a rare neuron of the last
    hidden layer and a rare unit below it, never active together on two million Gaussian
    inputs). The weight matters only where both are active; only the last hidden layer takes
    such rows, and the self-check vouches for them."""
    if not len(partial.members):
        return partial
    rows = np.where(partial.known, partial.rows, 0.0)
    flat = flat_above(oracle, prefix, rows, partial.biases, rng, scale=scale, near=near,
                      domain=domain)
    return Signatures(rows, partial.biases, partial.known, partial.members,
                      partial.residuals).subset(flat)


def with_partial(layer: Signatures, partial: Signatures) -> Signatures:
    """The neurons of ``layer`` and then those of ``partial``."""
    return Signatures(np.vstack([layer.rows, partial.rows]),
                      np.concatenate([layer.biases, partial.biases]),
                      np.vstack([layer.known, partial.known]), layer.members + partial.members,
                      np.concatenate([layer.residuals, partial.residuals]))


def distinct_with_partial(rows: Array, biases: Array, layer: Signatures, whole: int,
                          room: int | None) -> NDArray[np.int64]:
    """The indices of the neurons kept among refined ``rows`` ``(m, h)``, ``biases`` of
    ``layer`` (:func:`with_partial`: its first ``whole`` rows known everywhere, the rest
    partial): :func:`.signatures.distinct_neurons` of the whole rows alone (a partial row
    among them would make a square layer look expansive and switch its dependency test off),
    then the partial rows that equal no row kept on their known entries, the most seen first,
    up to ``room`` neurons in all (``hidden=``'s width; ``None``: no bound)."""
    seen = np.array([len(m) for m in layer.members])
    keep = [int(i) for i in distinct_neurons(rows[:whole], biases[:whole], seen[:whole])]
    for i in whole + np.argsort(-seen[whole:], kind="stable"):
        if room is not None and len(keep) >= room:
            break
        known = layer.known[i]
        mine = np.append(rows[i][known], biases[i])
        theirs = np.hstack([rows[keep][:, known], biases[keep][:, None]])
        cos = np.abs(theirs @ mine) / (np.linalg.norm(theirs, axis=1) * np.linalg.norm(mine))
        if not np.any(cos > 1 - 1e-9):
            keep.append(int(i))
    return np.array(keep, dtype=np.int64)
