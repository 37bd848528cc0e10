"""The hidden layers extracted and oriented so far (a prefix of the victim) and their local
geometry at any input: pre-activations, each unit's gradient, the distance to each unit's
hyperplane, and points moved onto a next-layer hyperplane (Carlini et al., CRYPTO 2020, §4.3).

Everything is computed from the extracted weights alone (no query). Gradients are kept in the
coordinates of the first layer's pre-activations: the input-space gradient of unit ``k`` of
layer ``l`` at ``x`` is ``J_l(x)[k] · W_1``, with ``J_l = W_l D_{l-1} ⋯ W_2 D_1`` (``D`` the
diagonal activation patterns at ``x``), an ``(h_l, h_1)`` matrix. Since a contractive first
layer has independent rows, any normal measured in input space has unique coordinates there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]

__all__ = ["PLACED_MARGIN", "Prefix", "placed_on", "shrunk"]

# the share of an input box's width kept free on every side of the points placed on a
# hyperplane inside it: their crossing tests stay in the box
PLACED_MARGIN = 0.01


@dataclass(frozen=True)
class Prefix:
    """Oriented hidden layers ``((W_1, b_1), …, (W_T, b_T))``, first to top: ``W_1`` is
    ``(h_1, d)``, ``W_l`` is ``(h_l, h_{l-1})``; each is followed by a ReLU. ``guessed``: the
    ``(layer, neuron)`` pairs (layers counted from 1, neurons from 0) whose orientation is a
    statistical guess (:mod:`.wiggle`) rather than an exact decision."""

    layers: tuple[tuple[Array, Array], ...]
    guessed: tuple[tuple[int, int], ...] = ()

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(len(b) for _, b in self.layers)

    def then(self, weight: Array, bias: Array, guessed: Array | None = None) -> Prefix:
        """This prefix with one more layer on top (``guessed``: the indices of its neurons
        whose orientation is a guess)."""
        top = len(self.layers) + 1
        more = () if guessed is None else tuple((top, int(i)) for i in guessed)
        return Prefix((*self.layers, (weight, bias)), self.guessed + more)

    def preactivations(self, x: Array) -> list[Array]:
        """Every layer's pre-activations at ``x`` ``(n, d)``: ``(n, h_l)`` each."""
        out, a = [], x
        for w, b in self.layers:
            out.append(a @ w.T + b)
            a = np.maximum(out[-1], 0.0)
        return out

    def top(self, x: Array) -> Array:
        """The top layer's activations ``(n, h_T)``."""
        return np.maximum(self.preactivations(x)[-1], 0.0)

    def local(self, x: Array) -> tuple[list[Array], list[Array]]:
        """Pre-activations ``(n, h_l)`` and Jacobians ``J_l`` ``(n, h_l, h_1)`` of every layer
        with respect to the first layer's pre-activations."""
        pres = self.preactivations(x)
        n, h1 = pres[0].shape
        jac = [np.broadcast_to(np.eye(h1), (n, h1, h1))]
        for (w, _), z in zip(self.layers[1:], pres[:-1], strict=False):
            jac.append(np.einsum("kh,nhm->nkm", w, (z > 0)[:, :, None] * jac[-1]))
        return pres, jac

    def distances(self, x: Array) -> Array:
        """The distance from each of ``x`` ``(n, d)`` to each unit's hyperplane, to first order
        (``|z| / |∇z|``; ``inf`` where the unit does not depend on the input there):
        ``(n, Σ h_l)``."""
        return self._distances(*self.local(x))

    def _distances(self, pres: list[Array], jac: list[Array]) -> Array:
        """:meth:`distances` from :meth:`local`'s pre-activations and Jacobians."""
        w1 = self.layers[0][0]
        gram = w1 @ w1.T
        out = []
        for z, j in zip(pres, jac, strict=True):
            norm = np.sqrt(np.maximum(np.einsum("nkh,nkh->nk", j @ gram, j), 0.0))  # BLAS
            with np.errstate(divide="ignore", invalid="ignore"):
                out.append(np.where(norm > 0, np.abs(z) / norm, np.inf))
        return np.concatenate(out, axis=1)

    def normals_on(self, x: Array, tolerance: float) -> Array:
        """The unit input-space normal ``(n, d)`` of the hyperplane each of ``x`` ``(n, d)``
        lies on, to within ``tolerance`` (the nearest unit's local gradient); NaN rows for the
        points on none (for :func:`~.critical.find_critical_points`: no query for these)."""
        pres, jac = self.local(x)
        dist = self._distances(pres, jac)
        nearest = np.argmin(dist, axis=1)
        grads = np.concatenate(jac, axis=1)[np.arange(len(x)), nearest] @ self.layers[0][0]
        length = np.linalg.norm(grads, axis=1, keepdims=True)
        on = (dist[np.arange(len(x)), nearest] <= tolerance)[:, None] & (length > 0)
        return np.where(on, grads / np.where(length > 0, length, 1.0), np.nan)

    @staticmethod
    def layer_above(pres: list[Array], jac: list[Array], rows: Array,
                    biases: Array) -> tuple[Array, Array]:
        """The pre-activations ``(n, m)`` of next-layer neurons ``rows`` ``(m, h_T)``,
        ``biases`` ``(m,)`` and their gradients in first-layer coordinates ``(n, m, h_1)``,
        from :meth:`local`'s pre-activations and Jacobians at ``n`` points."""
        top = pres[-1]
        value = np.maximum(top, 0.0) @ rows.T + biases
        return value, np.einsum("mk,nk,nkh->nmh", rows, top > 0, jac[-1])

    def next_normals(self, x: Array, row: Array) -> tuple[Array, Array]:
        """The value ``row · ReLU(z_T(x))`` ``(n,)`` and its input-space gradient ``(n, d)``:
        a next-layer neuron with weights ``row`` (its bias aside)."""
        pres, jac = self.local(x)
        active = pres[-1] > 0
        value = np.maximum(pres[-1], 0.0) @ row
        return value, np.einsum("nk,nkh->nh", active * row, jac[-1]) @ self.layers[0][0]

    def onto(self, p: Array, row: Array, bias: float, steps: int = 20,
             box: tuple[float, float] | None = None) -> Array:
        """``p`` ``(n, d)`` moved onto the estimated next-layer hyperplane
        ``row · ReLU(z_T(x)) + bias = 0`` by Newton steps along its local normal, up to
        ``steps`` (one is exact within a region of the prefix; a point that starts far off,
        where the neuron is rarely active, crosses regions on the way), each point until it
        is on the plane to rounding. With ``box`` ``(lo, hi)``, points of that box stay in it:
        a step moves only the coordinates that have room in its direction, and is clipped to
        the box (a projected Newton step; a point that cannot reach the plane in the box ends
        off it, and callers keep only the points that end on the plane)."""
        p = np.array(p, dtype=np.float64)
        moving = np.arange(len(p))
        for _ in range(steps):
            value, normal = self.next_normals(p[moving], row)
            miss = value + bias
            free = normal
            if box is not None:  # a coordinate at a face the step would cross is held
                out = -np.sign(miss)[:, None] * normal
                free = np.where(((p[moving] <= box[0]) & (out < 0))
                                | ((p[moving] >= box[1]) & (out > 0)), 0.0, normal)
            square = np.sum(normal * free, axis=1)
            step = p[moving] - (miss / np.where(square > 0, square, np.inf))[:, None] * free
            p[moving] = step if box is None else np.clip(step, *box)
            off = (np.abs(miss) > 1e-14 * (np.abs(value) + abs(bias))) & (square > 0)
            moving = moving[off]  # on the plane, or with no gradient (or room): done
            if not len(moving):
                break
        return p


def shrunk(box: tuple[float, float] | None) -> tuple[float, float] | None:
    """The input box ``(lo, hi)`` shrunk by :data:`PLACED_MARGIN` of its width on every side,
    where points placed on a hyperplane are kept (``None`` when ``box`` is ``None``)."""
    if box is None:
        return None
    margin = PLACED_MARGIN * (box[1] - box[0])
    return box[0] + margin, box[1] - margin


def placed_on(prefix: Prefix, row: Array, bias: float, p: Array, steps: int = 20,
              box: tuple[float, float] | None = None) -> tuple[Array, Array, Array]:
    """Points ``p`` ``(n, d)`` brought onto the estimated next-layer hyperplane (by up to
    ``steps`` Newton steps, :meth:`Prefix.onto`), the unit local normal there ``(n, d)`` and a
    segment radius ``(n,)`` that stays inside the prefix's region (for :func:`crossings`).
    With ``box`` ``(lo, hi)``, the input box where queries are bounded: the points are moved
    into it shrunk by ``PLACED_MARGIN`` of its width and stay there (a Newton step from a
    natural input, most of whose pixels sit on a face, leaves the box at once), and the radius
    is at most that margin, so that every segment lies in the box."""
    inner = shrunk(box)
    p = prefix.onto(p if inner is None else np.clip(p, *inner), row, bias, steps, inner)
    room = np.min(prefix.distances(p), axis=1)
    _, normal = prefix.next_normals(p, row)
    length = np.linalg.norm(normal, axis=1, keepdims=True)
    radius = np.where(np.isfinite(room), 0.3 * room, 0.0) + 1e-12
    radius = radius if box is None else np.minimum(radius, PLACED_MARGIN * (box[1] - box[0]))
    return p, normal / np.where(length > 0, length, 1.0), radius
