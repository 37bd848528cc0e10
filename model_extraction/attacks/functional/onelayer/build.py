"""The extracted network from the units found: global signs (§6.5) and the last layer (§6.6)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from model_extraction.network import ReLUNetwork

from ..affine import fit_output_layer
from ..jacobian import jacobians
from ..lastlayer import flipped_units
from ..result import ExtractionError
from ..signs import fit_last_layer, signs_from_jacobians, signs_from_nullspace
from .state import Measured, Run, Units

Array = NDArray[np.float64]

__all__ = ["build_network"]

_SIGN_JACOBIANS = 512  # Jacobians that vote on the signs and fit the affine term, at most
_DEPENDENT = {  # the note on rows the Jacobians' votes cannot orient, turned or not
    False: "the rows are linearly dependent (h > d, or inputs that never vary): unit "
           "orientations left as found; the affine term makes the model exact",
    True: "the rows are linearly dependent (h > d): unit orientations from the affine term "
          "they left as found (h <= K d), no query"}


def build_network(run: Run, units: Units, measured: Measured) -> ReLUNetwork:
    """Signs and last layer of the units found: the extracted network.

    Raises :class:`~model_extraction.attacks.functional.result.ExtractionError` when no unit
    was found in paper mode, when the number found is not ``hidden=``, or (paper mode) when
    the rows are linearly dependent.
    """
    _check_units(run, units)
    rows = np.array(units.rows).reshape(-1, run.d)
    biases = np.array(units.biases)
    dependent = bool(len(units)) and np.linalg.matrix_rank(rows) < len(rows)
    run.log.enter("signs", len(units))
    if len(units):
        outs, picked = np.array(units.outs), _jacobian_subset(measured)
        signs = _signs(run, units, measured, (rows, biases, outs, dependent), picked)
    run.log.leave(len(units))

    run.log.enter("last layer", len(units))
    if not len(units):  # the affine model, from one Jacobian
        _measure_affine(run, measured)
        outs, picked = np.zeros((0, measured.y[0].shape[1])), _jacobian_subset(measured)
        signs = np.ones(0)
    w0, b0 = rows * signs[:, None], biases * signs
    x, y = measured.answers()
    if len(x) > 20 * (len(rows) + 1) + 2000:
        keep = run.rng.choice(len(x), 20 * (len(rows) + 1) + 2000, replace=False)
        x, y = x[keep], y[keep]
    skip = None
    if run.cfg.mode == "paper":
        w1, b1, resid = fit_last_layer(w0, b0, x, y)
    else:
        w1, b1, skip, resid = fit_output_layer(w0, b0, outs, *picked, x, y)
        if dependent:  # the Jacobians' votes could not orient the rows
            w0, b0, (w1, b1, skip, resid), turned = _oriented_by_affine(
                w0, b0, outs, picked, x, y, (w1, b1, skip, resid))
            run.notes.append(_DEPENDENT[turned])
        if skip is not None:
            run.notes.append("the model carries an affine term (units active on the whole "
                             "domain, mirrored units, or orientations left as found)")
    if resid > 1e-6:
        run.notes.append(
            f"the last layer leaves a relative residual of {resid:.1e} on "
            "answered queries: the extracted model does not reproduce them exactly"
        )
    run.log.leave(len(units))
    return ReLUNetwork(
        w0, b0, w1, b1,
        {"kind": "extracted", "mode": run.cfg.mode, "queries": run.oracle.queries,
         "input_bounds": list(run.cfg.input_bounds)},
        skip=skip,
    )


def _oriented_by_affine(rows: Array, biases: Array, outs: Array, picked: tuple[Array, Array],
                        x: Array, y: Array, fitted: tuple[Array, Array, Array | None, float],
                        ) -> tuple[Array, Array, tuple[Array, Array, Array | None, float], bool]:
    """Rows too many to be oriented by the Jacobians' votes (dependent: ``h > d``), kept as
    found with the affine term ``fitted`` they leave: that term is ``-Σ g_ν r_νᵀ`` over the
    units kept the wrong way round, a linear system for which they are where ``h ≤ K d``
    (:func:`~..lastlayer.flipped_units`, as the deep pipeline orients its last layer). The
    units it decides are turned and the output layer fitted again, kept if no affine term is
    left (the last item returned: ``True``); else the rows stay as found (``fitted``)."""
    if fitted[2] is None:
        return rows, biases, fitted, False
    flipped = flipped_units(outs.T, rows, fitted[2])
    if np.any(np.minimum(np.abs(flipped), np.abs(flipped - 1)) > 0.1):
        return rows, biases, fitted, False  # undecided: orientations the logits leave open
    signs = np.where(flipped > 0.5, -1.0, 1.0)
    again = fit_output_layer(rows * signs[:, None], biases * signs, outs, *picked, x, y)
    if again[2] is not None:
        return rows, biases, fitted, False
    return rows * signs[:, None], biases * signs, again, True


def _check_units(run: Run, units: Units) -> None:
    """Refuse a run that found no unit (paper mode), or a number other than ``hidden=``."""
    cfg = run.cfg
    if not len(units) and cfg.mode == "paper":
        raise ExtractionError(
            "no hidden unit was found: the victim looks affine along every line searched "
            "(a network with no active ReLU cannot be told from a linear model)"
        )
    if cfg.hidden is not None and len(units) != cfg.hidden:
        raise ExtractionError(
            f"found {len(units)} distinct hidden units, but hidden={cfg.hidden} was "
            f"given, after {run.lines} lines (the bound is max_lines={cfg.max_lines}). "
            "Check h, or raise max_lines; units whose outgoing weights are all zero are "
            "invisible to any query, and a unit whose hyperplane does not meet the input box "
            "is constant on it (the model's affine term carries it): leave hidden unset."
        )


def _measure_affine(run: Run, measured: Measured) -> None:
    """No unit changes state on any line searched: measure the Jacobian at the centre of
    the box (``d + 1`` queries), from which the affine model follows."""
    run.notes.append("no hidden unit changes state along the lines searched: the model is "
                     "affine on the domain (the self-check tests it)")
    if not measured.jacs:
        centre = run.centre[None, :]
        steps = np.full((1, run.d), 0.25 * run.width)
        values, jacs = jacobians(run.oracle, centre, steps)
        measured.remember(centre, values)
        measured.add_jacobians(centre, jacs, steps)


def _jacobian_subset(measured: Measured) -> tuple[Array, Array]:
    """At most ``_SIGN_JACOBIANS`` of the Jacobians measured, at random (enough for the signs
    and the affine term), with their points: ``(points (n, d), jacobians (n, K, d))``."""
    pick = np.arange(len(measured.jacs))
    if len(pick) > _SIGN_JACOBIANS:
        pick = np.sort(measured.rng.choice(len(pick), _SIGN_JACOBIANS, replace=False))
    return (np.array([measured.jac_points[i] for i in pick]),
            np.array([measured.jacs[i] for i in pick]))


def _signs(run: Run, units: Units, measured: Measured,
           found: tuple[Array, Array, Array, bool], picked: tuple[Array, Array]) -> Array:
    """Global signs (§6.5) of the units ``found`` (rows, biases, output vectors, and whether
    the rows are dependent): the null-space steps in paper mode; in default mode votes of the
    Jacobians already measured, where the rows are independent (elsewhere the rows keep the
    orientation they were found with, for :func:`_oriented_by_affine`)."""
    rows, biases, outs, dependent = found
    if run.cfg.mode == "paper":
        if dependent:
            raise ExtractionError(
                "the recovered rows are linearly dependent; paper mode's sign recovery "
                "(§6.5) assumes h < d independent rows. Use the default mode."
            )
        points = np.array(units.points)
        values = np.asarray(run.oracle(points), dtype=np.float64)
        measured.remember(points, values)
        return signs_from_nullspace(run.oracle, rows, points, values, 1e-3 * run.width)
    if dependent:
        return np.ones(len(rows))
    # Every Jacobian votes on every unit's sign; a few hundred votes per unit decide it
    # (the votes are 0 or 1 up to rounding), so large victims use a random subset (picked).
    signs, confidence = signs_from_jacobians(rows, biases, outs, *picked)
    weak = int(np.sum(confidence < 0.5))
    if weak:
        run.notes.append(f"{weak} unit signs were decided with low confidence")
    return signs
