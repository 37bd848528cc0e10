"""The two query-free steps of the default mode, checked against a victim's true Jacobians:
regions derived across known critical points, and the joint polish of the layers."""

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from model_extraction import ReLUNetwork
from model_extraction.attacks.functional.extract import FunctionalExtraction
from model_extraction.attacks.functional.jacobian import jacobians
from model_extraction.attacks.functional.onelayer.build import build_network
from model_extraction.attacks.functional.onelayer.lines import (
    classify,
    critical_points,
    search_lines,
)
from model_extraction.attacks.functional.onelayer.polish import polish_layers, polish_units
from model_extraction.attacks.functional.onelayer.regions import plan_regions
from model_extraction.attacks.functional.onelayer.run import start
from model_extraction.attacks.functional.onelayer.state import Measured, Run, Units
from model_extraction.attacks.functional.onelayer.weights import recover_on_line
from model_extraction.attacks.functional.search import Kink, Line, search_line
from model_extraction.oracle import as_oracle


def _true_units(net: ReLUNetwork) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit-norm rows, biases and output vectors g = J(y > 0) - J(y < 0) of ``net``."""
    norm = np.linalg.norm(net.weight0, axis=1)
    return net.weight0 / norm[:, None], net.bias0 / norm, net.weight1.T * norm[:, None]


def _true_jacobian(net: ReLUNetwork, x: np.ndarray) -> np.ndarray:
    active = (net.weight0 @ x + net.bias0 > 0).astype(np.float64)
    return (net.weight1 * active) @ net.weight0


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.sampled_from([1, 3]))
@example(seed=796, k=1)
@example(seed=1361, k=3)
def test_derived_regions_match_true_jacobians(seed: int, k: int) -> None:
    """A region's Jacobian derived from a measured one plus ``± g r^T`` of the known units
    between them is the region's true Jacobian."""
    net = ReLUNetwork.random(12, 8, k, seed=seed)
    oracle = as_oracle(net)
    _, units, _ = start(FunctionalExtraction(stay_in_bounds=False), oracle, 12)
    rows, biases, outs = _true_units(net)
    rng = np.random.default_rng(seed)
    line = Line(rng.uniform(0.25, 0.75, 12), rng.standard_normal(12) * 3)
    kinks, _ = search_line(oracle, line, grid=64)
    pred = -(rows @ line.origin + biases) / (rows @ line.direction)
    # Two crossings closer than the search's verification step are found as one critical point
    # (seed 1361: 9e-5 apart), and a crossing inside a grid point's slope probe can add a second
    # critical point at that grid point (seed 796, K = 1: 2.6e-5 apart); the attack skips or
    # refuses those (see the merged-point test below), and a derivation across one cannot be
    # tested here. So the property is tested where the critical points are the crossings.
    inside = np.sort(pred[np.abs(pred) < 1])
    found = np.array([kk.t for kk in kinks])
    if (len(kinks) < 3 or len(found) != len(inside)
            or np.max(np.abs(found - inside)) > 1e-6):
        return
    # Every unit is known except those of two critical points, which play the new ones.
    new = sorted(rng.choice(len(kinks), 2, replace=False).tolist())
    ts = np.array([kk.t for kk in kinks])
    nearest = np.argmin(np.abs(pred[None, :] - ts[:, None]), axis=1)
    for i in range(len(kinks)):
        if i not in new:
            j = int(nearest[i])
            units.add(rows[j], float(biases[j]), outs[j], line.at(ts[i : i + 1])[0], 1e-15)
    match = classify(units, kinks, line)
    match[new] = -1
    edges = np.concatenate([[-1.0], ts, [1.0]])
    measured, plan = plan_regions(units, line, edges, new, match)
    assert set(plan) == {s for i in new for s in (i, i + 1)}
    assert set(measured) == {w for w, _, _ in plan.values()}
    for s, (w, offset, spread) in plan.items():
        assert spread == 0.0 or (w != s and spread < 1e-13)  # errors of the units crossed
        at_s = line.at(np.array([0.5 * (edges[s] + edges[s + 1])]))[0]
        at_w = line.at(np.array([0.5 * (edges[w] + edges[w + 1])]))[0]
        derived = _true_jacobian(net, at_w) + (offset if offset.size else 0.0)
        np.testing.assert_allclose(derived, _true_jacobian(net, at_s), rtol=0, atol=1e-9)


def _line_run(net: ReLUNetwork, line: Line, **options: float
              ) -> tuple[tuple[Run, Units, Measured], list[Kink], int]:
    """A fresh attack on ``net`` that knows no unit yet (its run, units and measurements),
    with the critical points of ``line``."""
    oracle = as_oracle(net)
    state = start(FunctionalExtraction(stay_in_bounds=False, **options), oracle, net.input_dim)
    kinks, _ = search_line(oracle, line, grid=64)
    return state, kinks, oracle.queries


def _assert_units_match(units: Units, net: ReLUNetwork, atol: float) -> None:
    rows, _, _ = _true_units(net)
    for row in units.rows:
        assert np.abs(np.abs(rows @ row) - 1).min() < atol


def test_merged_critical_point_is_skipped_without_costing_its_neighbours() -> None:
    """Two hyperplanes through one point of the line give one critical point whose Jacobian
    difference has rank two: it is skipped, and its neighbours' columns (which the clean fits
    of the neighbouring critical points vouch for) are not sent to re-measurement."""
    d, h = 24, 7
    base = ReLUNetwork.random(d, h, 4, seed=5)
    rng = np.random.default_rng(5)
    line = Line(rng.uniform(0.25, 0.75, d), rng.standard_normal(d) * 2)
    w0 = base.weight0.copy()
    # Units 0 and 1 cross the line at t = 0.1, the others spread over [-0.77, 0.83] (off the
    # search grid).
    at = np.concatenate([[0.1, 0.1], np.linspace(-0.77, 0.83, h - 2)])
    b0 = -np.einsum("hd,hd->h", w0, line.at(at))
    net = ReLUNetwork(w0, b0, base.weight1, base.bias1)
    # Steps small enough that no probe crosses a hyperplane: only the merged critical point's
    # rank-two difference can make columns look suspect.
    (run, units, measured), kinks, _ = _line_run(net, line, step_fraction=1e-3)
    assert len(kinks) == h - 1
    new = list(range(len(kinks)))
    q0 = run.oracle.queries
    added = recover_on_line(run, units, measured, line, kinks, new, np.full(len(kinks), -1),
                            (-1.0, 1.0))
    assert added == h - 2
    assert sum("not a single ReLU" in n for n in run.notes) == 1
    _assert_units_match(units, net, 1e-12)
    # One Jacobian per region, the values of nothing derived, 3 queries per cross-check, and
    # no column measured again.
    assert run.oracle.queries - q0 == (len(kinks) + 1) * (d + 1) + 3 * (h - 2)


def test_clean_fit_outweighs_a_wrong_slope_from_the_line_search() -> None:
    """With K > 1 a clean rank-one Jacobian difference is one ReLU's even when the slope
    change the line search saw is off (a neighbouring critical point inside its probes): the
    unit is kept after one re-measurement of both Jacobians and a strict cross-check. With
    K = 1 the slope change is the only check there is, and the critical point is skipped."""
    for k, kept in ((3, True), (1, False)):
        d = 16
        net = ReLUNetwork.random(d, 5, k, seed=11)
        rng = np.random.default_rng(1)
        line = Line(rng.uniform(0.25, 0.75, d), rng.standard_normal(d) * 2)
        (run, units, measured), kinks, _ = _line_run(net, line, step_fraction=1e-3)
        assert len(kinks) >= 2
        wrong = [type(kk)(kk.t, kk.slope_change * 1.5) if i == 0 else kk
                 for i, kk in enumerate(kinks)]
        q0 = run.oracle.queries
        new = list(range(len(kinks)))
        added = recover_on_line(run, units, measured, line, wrong, new,
                                np.full(len(kinks), -1), (-1.0, 1.0))
        assert added == len(kinks) - (not kept)
        _assert_units_match(units, net, 1e-12)
        if kept:  # after measuring both Jacobians again once (2d), no more
            assert run.oracle.queries - q0 == (len(kinks) + 1) * (d + 1) + 2 * d + 3 * added


@pytest.mark.parametrize("k", [1, 4])
def test_polish_recovers_layers_from_finite_differences(k: int) -> None:
    """From rows and output vectors off by 1e-7, the joint fit of measured Jacobians gets back
    to the finite-difference noise, also when some probes cross a hyperplane (left out)."""
    d, h = 16, 6
    net = ReLUNetwork.random(d, h, k, seed=3)
    rows, biases, outs = _true_units(net)
    rng = np.random.default_rng(0)
    points = rng.uniform(-1, 2, (10 * h, d))
    shape = (len(points), d)
    steps = np.where(rng.random(shape) < 0.05, 0.5, 1e-2) * rng.choice([-1, 1], shape)
    _, jacs = jacobians(as_oracle(net), points, steps)
    noisy_rows = rows + 1e-7 * rng.standard_normal(rows.shape)
    noisy_rows /= np.linalg.norm(noisy_rows, axis=1, keepdims=True)
    noisy_outs = outs * (1 + 1e-7 * rng.standard_normal(outs.shape))
    got = polish_layers(points, jacs, steps, noisy_rows, biases, noisy_outs)
    assert got.missing > 0  # some 0.5 steps cross hyperplanes
    # A unit on one side of every point cannot be told from the constant: it is left alone.
    free = np.isfinite(got.errors)
    np.testing.assert_array_equal(got.rows[~free], noisy_rows[~free])
    # Units seen from both sides at several points are recovered to the noise.
    sides = (points @ rows.T + biases > 0).sum(axis=0)
    free &= np.minimum(sides, len(points) - sides) >= 5
    assert free.sum() >= h - 2
    assert np.abs(got.rows[free] - rows[free]).max() < 1e-10
    assert np.abs(got.outs[free] - outs[free]).max() < 1e-9 * np.abs(outs).max()
    assert np.all(got.errors[free] < 1e-9)


def test_polish_keeps_a_unit_whose_error_it_does_not_improve() -> None:
    """The joint polish replaces a unit's row only where it claims a smaller error than the
    unit's own estimate: a unit already known to 1e-20 keeps its row, noisy ones are polished."""
    d, h = 16, 6
    net = ReLUNetwork.random(d, h, 4, seed=3)
    rows, biases, outs = _true_units(net)
    rng = np.random.default_rng(0)
    points = rng.uniform(-1, 2, (10 * h, d))
    steps = 1e-2 * rng.choice([-1, 1], (len(points), d))
    oracle = as_oracle(net)
    _, jacs = jacobians(oracle, points, steps)
    run, units, measured = start(FunctionalExtraction(stay_in_bounds=False), oracle, d)
    measured.add_jacobians(points, jacs, steps)
    noisy = rows + 1e-7 * rng.standard_normal(rows.shape)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    exact = 0  # this unit's estimate claims 1e-20: nothing can beat it
    for i in range(h):
        row, error = (rows[i], 1e-20) if i == exact else (noisy[i], 1e-7)
        units.add(row, float(biases[i]), outs[i], points[0], error)
    before = np.array(units.rows)
    polish_units(run, units, measured)
    after = np.array(units.rows)
    np.testing.assert_array_equal(after[exact], before[exact])
    assert any("did not improve the estimated error of 1 rows" in n for n in run.notes)
    sides = (points @ rows.T + biases > 0).sum(axis=0)
    seen = np.minimum(sides, len(points) - sides) >= 5
    seen[exact] = False
    assert seen.sum() >= 3
    assert np.abs(after[seen] - rows[seen]).max() < 1e-10 < np.abs(before[seen] - rows[seen]).max()


def test_outer_stretch_is_searched_only_when_the_centre_shows_nothing_new() -> None:
    """Units whose hyperplanes cross the line only far out (|t| > 1) are found by searching on
    to |t| = 8, which happens only on a line whose centre shows no new unit; the units found
    there are recovered like any other."""
    d, h = 20, 4
    base = ReLUNetwork.random(d, h, 3, seed=2)
    rng = np.random.default_rng(2)
    line = Line(rng.uniform(0.25, 0.75, d), rng.standard_normal(d) * 2)
    at = np.array([-0.52, 0.31, 3.13, -5.27])  # where each unit crosses the line
    w0 = base.weight0
    net = ReLUNetwork(w0, -np.einsum("hd,hd->h", w0, line.at(at)), base.weight1, base.bias1)
    rows, biases, outs = _true_units(net)
    run, units, measured = start(FunctionalExtraction(stay_in_bounds=False), as_oracle(net), d)
    kinks, match, t_range = critical_points(run, units, line)
    assert t_range == (-1.0, 1.0)
    np.testing.assert_allclose([k.t for k in kinks], [-0.52, 0.31], atol=1e-9)
    assert list(match) == [-1, -1]
    for i in (0, 1):
        units.add(rows[i], float(biases[i]), outs[i], line.at(at[i : i + 1])[0], 1e-15)
    kinks, match, t_range = critical_points(run, units, line)
    assert t_range == (-8.0, 8.0)
    np.testing.assert_allclose([k.t for k in kinks], [-5.27, -0.52, 0.31, 3.13], atol=1e-9)
    assert list(match) == [-1, 0, 1, -1]
    added = recover_on_line(run, units, measured, line, kinks, [0, 3], match, t_range)
    assert added == 2
    _assert_units_match(units, net, 1e-10)


def test_search_with_known_critical_points_finds_every_one_for_less() -> None:
    """Midpoints between the critical points already expected start each of them alone in its
    interval: the search finds every critical point, new ones included, with fewer queries and
    fewer oracle rounds, and a wrong expectation costs queries, never a critical point."""
    d, h = 30, 40
    net = ReLUNetwork.random(d, h, 3, seed=4)
    rows, biases, _ = _true_units(net)
    rng = np.random.default_rng(4)
    line = Line(rng.uniform(0.25, 0.75, d), rng.standard_normal(d) * 2)
    pred = -(rows @ line.origin + biases) / (rows @ line.direction)
    inside = np.sort(pred[np.abs(pred) < 1])
    assert len(inside) >= 15
    plain, plain_stats = search_line(as_oracle(net), line, grid=32)
    # All but three units known, and two expected crossings that are not there.
    known = np.concatenate([inside[3:], [-0.4321, 0.5432]])
    got, stats = search_line(as_oracle(net), line, grid=32, known=known)
    np.testing.assert_allclose([k.t for k in got], inside, rtol=0, atol=1e-9)
    # The plain search finds them too, except two 1.6e-4 apart that it merges into one.
    assert len(plain) == len(inside) - 1
    assert stats.queries < plain_stats.queries and stats.rounds < plain_stats.rounds


def test_the_last_layer_samples_many_answers_and_keeps_the_jacobians_picked_for_the_signs():
    """With more answers held than the last layer's fit takes (``20 (h + 1) + 2000``), a sample
    of them is fitted, together with the Jacobians picked for the signs (the sample of answers
    once indexed the Jacobians: IndexError)."""
    d, h = 12, 6
    net = ReLUNetwork.random(d, h, 3, seed=0)
    run, units, measured = start(FunctionalExtraction(stay_in_bounds=False), as_oracle(net), d)
    search_lines(run, units, measured)
    assert len(units) == h
    rng = np.random.default_rng(0)
    for _ in range(12):  # answers the attacker holds, 250 at a time (each batch kept whole)
        x = rng.uniform(-1, 2, (250, d))
        measured.remember(x, net.logits(x))
    assert len(measured.answers()[0]) > 20 * (h + 1) + 2000 > len(measured.jacs)
    network = build_network(run, units, measured)
    x = rng.uniform(-1, 2, (500, d))
    np.testing.assert_allclose(network.logits(x), net.logits(x), rtol=1e-9, atol=1e-9)
