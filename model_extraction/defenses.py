"""Output policies a model owner deploys: what the API reveals, and how it is perturbed.

Jagielski et al. (2020, §3) classify attacks by what the victim's API returns (logits,
probabilities, top-k, label); :func:`~model_extraction.oracle.apply_output_policy` computes those
views. A model owner can add a defence on top of a numeric view:

* rounding to ``n`` decimals (Tramèr et al. 2016; §6.1 notes that rounding defeats
  functionally-equivalent extraction),
* additive Gaussian noise (from a generator, or from given draws: the server derives them
  from the key and the input row, so that a repeated query gets the same answer),
* reverse sigmoid (Lee et al., "Defending Against NN Model Stealing Attacks Using Deceptive
  Perturbations", IEEE S&P Workshops 2019): ``ŷ = α (y - β (s(γ s⁻¹(y)) - ½))`` with ``s`` the
  sigmoid and ``α`` the normaliser, which keeps the top-1 label but bends the probabilities.

:class:`OutputPolicy` composes one view with these defences, in a fixed order: softmax, reverse
sigmoid, noise, top-k, rounding. The HTTP server (:mod:`model_extraction.serving`) applies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from model_extraction.oracle import OutputKind, apply_output_policy, keep_top_k

__all__ = ["OutputPolicy", "gaussian_noise", "reverse_sigmoid", "round_outputs"]

Array = NDArray[np.float64]


def round_outputs(y: ArrayLike, decimals: int) -> Array:
    """Round every output to ``decimals`` decimal places."""
    if decimals < 0:
        raise ValueError(f"decimals must be >= 0, got {decimals}")
    return np.round(np.asarray(y, dtype=np.float64), decimals)


def gaussian_noise(
    y: ArrayLike, sigma: float, rng: np.random.Generator | None = None, *, probabilities: bool,
    normal: ArrayLike | None = None,
) -> Array:
    """Add ``N(0, sigma²)`` noise to every output.

    The noise is ``sigma * normal`` when ``normal`` (standard normal draws of ``y``'s shape) is
    given, else drawn from ``rng``. For probabilities the result is clipped at 0 and
    renormalised, so it still sums to 1. Raises ``ValueError`` for a negative ``sigma``, for
    draws of another shape, or when neither ``rng`` nor ``normal`` is given.
    """
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    y = np.asarray(y, dtype=np.float64)
    if normal is not None:
        z = np.asarray(normal, dtype=np.float64)
        if z.shape != y.shape:
            raise ValueError(f"noise draws of shape {z.shape} for outputs of shape {y.shape}")
    elif rng is not None:
        z = rng.normal(0.0, 1.0, y.shape)
    else:
        raise ValueError("a noisy output policy needs a random generator or noise draws")
    noisy = y + sigma * z
    if probabilities:
        noisy = np.maximum(noisy, 0.0)
        total = noisy.sum(axis=1, keepdims=True)
        # A row the noise drove entirely to 0 falls back to the noiseless row.
        noisy = np.where(total > 0, noisy / np.where(total > 0, total, 1.0), y)
    return noisy


def reverse_sigmoid(p: ArrayLike, beta: float, gamma: float) -> Array:
    """Lee et al.'s reverse-sigmoid perturbation of probability rows (renormalised to sum 1)."""
    if beta <= 0 or gamma <= 0:
        raise ValueError(f"beta and gamma must be positive, got beta={beta}, gamma={gamma}")
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", over="ignore"):
        inverse = np.log(p) - np.log1p(-p)  # s⁻¹(p), ±inf at 0 and 1
        bent = 1.0 / (1.0 + np.exp(-gamma * inverse))  # s(γ s⁻¹(p))
    y = np.maximum(p - beta * (bent - 0.5), 0.0)
    return y / y.sum(axis=1, keepdims=True)


@dataclass(frozen=True, kw_only=True)
class OutputPolicy:
    """What a deployed API returns for a batch of logits.

    Parameters
    ----------
    kind:
        The view: ``logits``, ``probabilities``, ``top_k`` or ``label`` (:class:`OutputKind`).
    k:
        For ``top_k``: how many probabilities are revealed.
    decimals:
        Round every output to this many decimals (``None``: full float64).
    noise_sigma:
        Standard deviation of Gaussian noise added to every output (0: none).
    reverse_sigmoid_beta, reverse_sigmoid_gamma:
        Reverse-sigmoid defence (probability views only); ``beta=None`` disables it.
    """

    kind: OutputKind = OutputKind.LOGITS
    k: int = 5
    decimals: int | None = None
    noise_sigma: float = 0.0
    reverse_sigmoid_beta: float | None = None
    reverse_sigmoid_gamma: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", OutputKind(self.kind))
        if self.kind is OutputKind.UNKNOWN:
            raise ValueError("choose an output kind: logits, probabilities, top_k or label")
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if self.decimals is not None and self.decimals < 0:
            raise ValueError(f"decimals must be >= 0, got {self.decimals}")
        if self.noise_sigma < 0:
            raise ValueError(f"noise_sigma must be >= 0, got {self.noise_sigma}")
        if self.kind is OutputKind.LABEL and self.perturbed:
            raise ValueError("a label-only API reveals no number to round or perturb; drop the "
                             "defence options or choose a numeric output")
        if self.reverse_sigmoid_beta is not None:
            if self.kind not in (OutputKind.PROBABILITIES, OutputKind.TOP_K):
                raise ValueError("reverse sigmoid perturbs probabilities: use it with "
                                 "probabilities or top_k")
            if self.reverse_sigmoid_beta <= 0 or self.reverse_sigmoid_gamma <= 0:
                raise ValueError("reverse sigmoid needs beta > 0 and gamma > 0")

    @property
    def perturbed(self) -> bool:
        """Whether a defence changes the outputs of the plain view."""
        return (self.decimals is not None or self.noise_sigma > 0
                or self.reverse_sigmoid_beta is not None)

    @property
    def datatype(self) -> str:
        """The Open Inference Protocol datatype of the outputs (``FP64`` or ``INT64``)."""
        return "INT64" if self.kind is OutputKind.LABEL else "FP64"

    def apply(self, logits: ArrayLike, rng: np.random.Generator | None = None, *,
              normal: ArrayLike | None = None) -> NDArray[Any]:
        """The outputs for ``(n, K)`` logits.

        The noise (if any) is ``noise_sigma * normal`` when ``normal`` (standard normal draws,
        one row per row of logits, as the server derives from each row) is given, else drawn
        from ``rng``; one of them is needed (else ``ValueError``).
        """
        kind = self.kind
        if kind in (OutputKind.LOGITS, OutputKind.LABEL):
            y = apply_output_policy(logits, kind)
        else:
            y = apply_output_policy(logits, OutputKind.PROBABILITIES)
        if kind is OutputKind.LABEL:
            return y
        probabilities = kind is not OutputKind.LOGITS
        if self.reverse_sigmoid_beta is not None:
            y = reverse_sigmoid(y, self.reverse_sigmoid_beta, self.reverse_sigmoid_gamma)
        if self.noise_sigma > 0:
            y = gaussian_noise(y, self.noise_sigma, rng, probabilities=probabilities,
                               normal=normal)
        if kind is OutputKind.TOP_K:
            y = keep_top_k(y, self.k)
        if self.decimals is not None:
            y = round_outputs(y, self.decimals)
        return y

    def describe(self) -> str:
        """One line for logs and the command line."""
        parts = [self.kind.value + (f" (k={self.k})" if self.kind is OutputKind.TOP_K else "")]
        if self.reverse_sigmoid_beta is not None:
            parts.append(f"reverse sigmoid β={self.reverse_sigmoid_beta} "
                         f"γ={self.reverse_sigmoid_gamma}")
        if self.noise_sigma > 0:
            parts.append(f"Gaussian noise σ={self.noise_sigma}")
        if self.decimals is not None:
            parts.append(f"rounded to {self.decimals} decimals")
        return ", ".join(parts)
