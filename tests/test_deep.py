"""Black-box extraction of deep ReLU networks (attacks/functional/deep.py): the CRYPTO 2020
shapes, several outputs, a layer wider than the one before it, three hidden layers, and every
way it must refuse instead of returning a wrong model."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_extraction.attacks.functional import (
    ExtractionError,
    FunctionalExtraction,
    extract_functional,
)
from model_extraction.attacks.functional.deep import extract_deep
from model_extraction.evaluation import compare_networks
from model_extraction.network import ReLUNetwork
from model_extraction.oracle import BudgetExhaustedError, CallableOracle, ModelOracle


@pytest.mark.parametrize("d, widths, k, seed", [
    (10, (10, 10), 1, 0), (12, (8, 6), 3, 2),
    (30, (8, 16), 3, 0),  # expansive second layer: its signs come from the logit layer
    (40, (20, 10, 10), 1, 1),  # three hidden layers: the middle one oriented by preimages
    (10, (10, 8, 6), 1, 2),  # a last-layer neuron joined into two rows: kept once
    (30, (12, 16, 8), 1, 0),  # an expansive middle layer: its signs by neuron wiggles
])
def test_extracts_a_deep_network(d, widths, k, seed):
    victim = ReLUNetwork.random(d, widths, k, seed=seed)
    oracle = ModelOracle(victim)
    result = extract_deep(oracle, seed=0, hidden=widths)
    assert result.network.widths == widths and result.check["passed"]
    assert result.queries == oracle.queries
    metrics = compare_networks(victim, result.network, input_bounds=(-2.0, 2.0))
    assert metrics["fidelity_uniform"] == 1.0 and metrics["max_logit_error"] < 1e-7
    assert [layer["units_matched"] for layer in metrics["layers"]] == list(widths)
    assert all(layer["worst_bits"] >= 30 for layer in metrics["layers"])
    assert all(layer["wrong_signs"] == 0 for layer in metrics["layers"])
    # the attack's own estimate: the first layer's rows only (a deeper layer's fit residuals do
    # not see the errors carried up from below)
    assert result.network.skip is None and not result.notes  # no affine term: none needed
    assert result.estimated_bits.shape == (widths[0],)
    assert np.isfinite(result.estimated_bits).all() and result.estimated_bits.min() > 25


def test_refuses_what_it_cannot_extract():
    with pytest.raises(ExtractionError, match="8 first-layer hyperplanes on 4 inputs, .*"
                                              "expansive first layer below others .*contractive"):
        extract_deep(ModelOracle(ReLUNetwork.random(4, (8, 4), 1, seed=0)), seed=0)
    wide = ModelOracle(ReLUNetwork.random(4, (8, 4), 1, seed=0))
    with pytest.raises(ValueError, match="expansive first layer"):
        extract_deep(wide, seed=0, hidden=(8, 4))
    assert wide.queries == 0  # refused before any query when hidden= says so
    with pytest.raises(ExtractionError, match="not the .* queries.*omit hidden="):
        extract_deep(ModelOracle(ReLUNetwork.random(10, (10, 10), 1, seed=0)), seed=0,
                     hidden=(10, 9))
    unchecked = ModelOracle(ReLUNetwork.random(10, (10, 10), 1, seed=0))
    for bad in ({"check_points": 0}, {"check_points": -5}, {"check_tolerance": 0.0}):
        with pytest.raises(ValueError, match="self-check needs"):
            extract_deep(unchecked, seed=0, **bad)
    assert unchecked.queries == 0
    shallow = ModelOracle(ReLUNetwork.random(10, (10, 10), 1, seed=0))
    with pytest.raises(ExtractionError, match="has 2 hidden layers, not the 3"):
        extract_deep(shallow, seed=0, hidden=(10, 10, 10))
    assert shallow.queries < 400_000  # refused at once, not after max_lines
    two = ModelOracle(ReLUNetwork.random(10, (10, 10), 1, seed=0))
    with pytest.raises(ExtractionError, match="not affine .*more hidden layers than hidden=.*"
                                              "omit hidden="):
        extract_deep(two, seed=0, hidden=(10,))
    assert two.queries < 100_000  # once its ten neurons are found, not after max_lines
    constant = ModelOracle(_always_active())
    with pytest.raises(ExtractionError, match="not returned.*Or hidden= gives more layers or "
                                              "units than the victim has"):  # one is missing
        extract_deep(constant, seed=0, hidden=(10, 8), max_lines=40)
    assert constant.queries < 400_000


def _always_active():
    """A 10-10-8-1 victim whose last-layer neuron 3 is active on all of the region queried."""
    base = ReLUNetwork.random(10, (10, 8), 1, seed=2)
    w, b = base.hidden_layers[0]
    return ReLUNetwork(base.weight0, base.bias0, base.weight1, base.bias1,
                       hidden_layers=((w, np.where(np.arange(8) == 3, 30.0, b)),))


@pytest.mark.parametrize("victim, widths", [
    (ReLUNetwork.random(10, 20, 1, seed=0), (20,)),  # h1 > K d: the logits leave signs open
    (ReLUNetwork.random(4, 10, 2, seed=0), (10,)),
    (_always_active(), (10, 7)),  # no critical point of the constant neuron anywhere queried
])
def test_an_affine_term_carries_what_no_critical_point_shows(victim, widths):
    """Where the logits are affine in the last hidden layer's activations and its input but not
    in the activations alone (a unit active on all the region queried, or orientations the
    logits cannot fix), the model keeps that affine term (``skip``), and says so."""
    oracle = ModelOracle(victim)
    result = extract_deep(oracle, seed=0)
    assert result.network.widths == widths and result.network.skip is not None
    assert result.check["passed"] and result.queries == oracle.queries
    assert any("affine term" in note for note in result.notes)
    metrics = compare_networks(victim, result.network, input_bounds=(-2.0, 2.0))
    assert metrics["fidelity_uniform"] == 1.0 and metrics["max_logit_error"] < 1e-7
    assert metrics["units_matched"] == widths[0]
    if len(widths) > 1:  # rows aligned up to sign (the fit may leave orientations open)
        assert all(layer["worst_bits"] >= 30 for layer in metrics["layers"])
    else:  # only orientations are carried: exact on all of R^d
        x = np.random.default_rng(0).standard_normal((1000, victim.input_dim)) * 100
        np.testing.assert_allclose(result.network.logits(x), victim.logits(x), rtol=1e-7,
                                   atol=1e-6)


def _never_together(share=0.03):
    """A 10-10-8-6-1 victim (seed 5) whose layer-2 unit 0 and layer-3 neuron 0 are each active
    on 3% of Gaussian inputs, and never both: the neuron's weight on the unit, -3 times its
    row's norm, switches it off wherever the unit is active."""
    base = ReLUNetwork.random(10, (10, 8, 6), 1, seed=5)
    (w2, b2), (w3, b3) = ([np.array(a) for a in layer] for layer in base.hidden_layers)
    x = np.random.default_rng(7).standard_normal((100_000, 10))
    a1 = np.maximum(base.layer_preactivations(x)[0], 0)
    b2[0] -= np.quantile(a1 @ w2[0] + b2[0], 1 - share)
    w3[0, 0] = -3 * np.linalg.norm(w3[0])
    b3[0] -= np.quantile(np.maximum(a1 @ w2.T + b2, 0) @ w3[0] + b3[0], 1 - share)
    return ReLUNetwork(base.weight0, base.bias0, base.weight1, base.bias1,
                       hidden_layers=((w2, b2), (w3, b3)))


@pytest.mark.parametrize("seed, seen", [(0, True), (8, True), (9, False)])
def test_a_weight_seen_only_off_the_gaussian_region_is_found_or_said(seed, seen):
    """A last-layer neuron whose weight on a unit below shows only where both are active, never
    together on 400,000 Gaussian inputs: an ascent over the layers extracted finds where they
    are, and a critical point there, or the weight is measured from the kinks of lines across
    the neuron's hyperplane where the unit is active (:mod:`.unseen`; seeds 0 and 8), or,
    where neither gets there (seed 9), the neuron is kept with that weight at 0 and the result
    lists it (before all three, the attack missed the neuron and refused)."""
    victim = _never_together()
    x = np.random.default_rng(3).standard_normal((400_000, 10))
    pres = victim.layer_preactivations(x)
    assert not np.any((pres[1][:, 0] > 0) & (pres[2][:, 0] > 0))
    oracle = ModelOracle(victim)
    result = extract_deep(oracle, seed=seed)
    assert result.network.widths == (10, 8, 6) and result.check["passed"]
    metrics = compare_networks(victim, result.network, input_bounds=(-2.0, 2.0))
    assert metrics["fidelity_uniform"] == 1.0 and metrics["max_logit_error"] < 1e-7
    np.testing.assert_allclose(result.network.logits(x[:20_000]), victim.logits(x[:20_000]),
                               rtol=1e-7, atol=1e-7)
    unseen = result.network.metadata.get("unseen_weights", [])
    assert "found bent hyperplanes" in result.notes[0]  # the one-layer hypothesis, refuted
    if seen:
        assert not unseen and not result.notes[1:]
        assert all(layer["worst_bits"] >= 25 for layer in metrics["layers"])
    else:
        (neuron, unit), = unseen
        assert result.network.hidden_layers[-1][0][neuron, unit] == 0.0
        # the victim's unit 0 and neuron 0 (where that unit is off, the weight does not show)
        mine, off = result.network.layer_preactivations(x[:20_000]), pres[1][:20_000, 0] <= 0
        assert np.corrcoef(mine[1][:, unit], pres[1][:20_000, 0])[0, 1] > 0.999999
        assert np.corrcoef(mine[2][off, neuron], pres[2][:20_000][off, 0])[0, 1] > 0.999999
        assert any("never seen" in note and "set to 0" in note for note in result.notes)
        assert min(layer["worst_bits"] for layer in metrics["layers"][:2]) >= 30


@pytest.mark.parametrize("d, h, k, hidden", [
    (10, 6, 2, None), (10, 6, 2, (6,)), (40, 20, 1, None), (30, 40, 3, None),
])
def test_the_depth_one_case_of_the_pipeline(d, h, k, hidden):
    """One hidden layer is the pipeline's first layer with the logits affine in it and the
    inputs: its signs and the logit layer come from one least-squares fit (lastlayer.py), so an
    expansive one (h > d, no next layer to orient it) is extracted too."""
    victim = ReLUNetwork.random(d, h, k, seed=1)
    oracle = ModelOracle(victim)
    result = extract_deep(oracle, seed=0, hidden=hidden)
    assert result.network.widths == (h,) and result.check["passed"]
    assert result.queries == oracle.queries == sum(c.queries for c in result.phases.values())
    metrics = compare_networks(victim, result.network, input_bounds=(-2.0, 2.0))
    assert metrics["fidelity_uniform"] == 1.0 and metrics["max_logit_error"] < 1e-7
    assert metrics["units_matched"] == h and metrics["wrong_signs"] == 0
    assert metrics["worst_unit_bits"] >= 30 and result.network.skip is None


def test_the_one_layer_hypothesis_is_tested_first():
    """The pipeline tries the one-hidden-layer attack first (hypothesis.py): on one hidden layer
    its model is the result, for a fraction of the deep phases' queries; on a deeper victim,
    bends refute it within a few lines, its queries are a phase of their own, and the deep
    phases then run as they run alone; with one width given, bends are an error at once."""
    one = ReLUNetwork.random(40, 20, 1, seed=1)
    result = extract_deep(ModelOracle(one), seed=0)
    alone = extract_deep(ModelOracle(one), seed=0, one_layer=False)
    assert result.mode == "default" and result.network.widths == alone.network.widths == (20,)
    assert result.check["points"] == 4096 and result.queries * 4 < alone.queries
    same = extract_functional(ModelOracle(one), stay_in_bounds=False, input_bounds=(-0.5, 0.5))
    small = extract_deep(ModelOracle(one), seed=0, check_points=256)  # the attack's own check
    assert small.queries == same.queries and small.notes == same.notes
    np.testing.assert_allclose(small.network.weight0, same.network.weight0, rtol=1e-12)
    metrics = compare_networks(one, result.network, input_bounds=(-2.0, 2.0))
    assert metrics["fidelity_uniform"] == 1.0 and metrics["worst_unit_bits"] >= 30
    deep = ReLUNetwork.random(10, (10, 10), 1, seed=0)
    oracle = ModelOracle(deep)
    result = extract_deep(oracle, seed=0)
    alone = extract_deep(ModelOracle(deep), seed=0, one_layer=False)
    tested = result.phases["one-layer hypothesis"].queries
    assert 0 < tested < 0.05 * result.queries and "found bent hyperplanes" in result.notes[0]
    assert result.queries == oracle.queries == alone.queries + tested
    assert result.queries == sum(c.queries for c in result.phases.values())
    assert result.notes[1:] == alone.notes and result.network.widths == alone.network.widths
    for ours, theirs in zip(result.network.layers, alone.network.layers, strict=True):
        np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-12, atol=1e-15)
    given = ModelOracle(deep)
    with pytest.raises(ExtractionError, match="bend.*more hidden layers than hidden=\\(20,\\)"):
        extract_deep(given, seed=0, hidden=(20,))
    assert given.queries == tested
    with pytest.raises(ValueError, match="one_layer='yes': True, False or a Functional"):
        extract_deep(given, one_layer="yes")  # not taken for True, nor for False
    with pytest.raises(ValueError, match="hidden=10 and hidden= says 20: give the width once"):
        extract_deep(given, hidden=(20,), one_layer=FunctionalExtraction(
            hidden=10, stay_in_bounds=False))
    assert given.queries == tested  # refused before any query


def test_too_few_lines_or_too_deep_is_an_error_not_a_model():
    three = ReLUNetwork.random(10, (10, 8, 6), 1, seed=0)
    with pytest.raises(ExtractionError, match="not returned"):
        extract_deep(ModelOracle(three), seed=0, max_lines=24)
    rare = ReLUNetwork.random(40, (20, 10), 1, seed=0)  # one neuron active on ~8% of inputs
    with pytest.raises(ExtractionError, match="misses the oracle"):
        extract_deep(ModelOracle(rare), seed=0, max_lines=24)


@pytest.mark.parametrize("budget, where", [
    (5_000, "phase 'critical points' of layer 1 .*no layer was finished"),
    (30_000, r"of layer 2 .*the layers of widths \(10,\) were extracted and oriented"),
])
def test_a_budget_that_runs_out_says_which_layer_was_reached(budget, where):
    oracle = ModelOracle(ReLUNetwork.random(10, (10, 10), 1, seed=0), budget=budget)
    with pytest.raises(BudgetExhaustedError, match=where):
        extract_deep(oracle, seed=0)
    assert oracle.queries <= budget


def test_extract_functional_finds_the_depth_in_the_papers_setting():
    victim = ReLUNetwork.random(10, (10, 10), 2, seed=3)
    oracle = ModelOracle(victim)
    result = extract_functional(oracle, stay_in_bounds=False)  # no depth given
    assert result.network.widths == (10, 10) and result.mode == "deep"
    assert result.queries == oracle.queries and "bent hyperplanes" in result.notes[0]
    assert compare_networks(victim, result.network, input_bounds=(-2.0, 2.0))[
        "fidelity_uniform"] == 1.0
    given = extract_functional(ModelOracle(victim), hidden=(10, 10), stay_in_bounds=False)
    assert given.network.widths == (10, 10) and given.queries < result.queries
    with pytest.raises(ValueError, match="paper mode"):
        extract_functional(ModelOracle(victim), hidden=(10, 10), mode="paper")


def _boxed(victim, lo, hi):
    """The victim's logits, failing the test on any query outside ``[lo, hi]^d``."""
    def fn(x):
        assert x.min() >= lo and x.max() <= hi, "a query left the box"
        return victim.logits(x)
    return CallableOracle(fn, input_dim=victim.input_dim, output_kind="logits")


@pytest.mark.parametrize("d, widths, k, seed", [(10, (10, 10), 1, 0), (10, (10, 10), 2, 3),
                                                (40, (20, 10), 1, 0)])
def test_a_deep_network_is_extracted_without_a_query_outside_the_box(d, widths, k, seed):
    """extract_functional's default: the API's box is enforced, and the pipeline extracts any
    depth inside it (the one-layer hypothesis refuted there first)."""
    victim = ReLUNetwork.random(d, widths, k, seed=seed)
    oracle = _boxed(victim, -1.0, 1.0)
    result = extract_functional(oracle, input_bounds=(-1.0, 1.0))
    assert result.mode == "deep" and result.network.widths == widths
    assert result.queries == oracle.queries and "bent hyperplanes" in result.notes[0]
    metrics = compare_networks(victim, result.network, input_bounds=(-1.0, 1.0))
    assert metrics["fidelity_uniform"] == 1.0 and metrics["max_logit_error"] < 1e-7
    assert all(layer["worst_bits"] >= 30 for layer in metrics["layers"])
    given = extract_functional(_boxed(victim, -1.0, 1.0), hidden=widths,
                               input_bounds=(-1.0, 1.0))
    assert given.network.widths == widths and given.queries < result.queries


def test_a_first_layer_unit_active_on_the_whole_box_is_found_from_deeper_normals():
    """A unit whose hyperplane misses the box has no critical point there, yet it is a linear
    function of the input that the second layer reads: its row comes from the parts of the
    deeper normals off the first layer's span, and the first layer is oriented beside it."""
    victim = ReLUNetwork.random(10, (10, 10), 1, seed=0)
    bias = victim.bias0.copy()
    bias[0] = np.abs(victim.weight0[0]).sum() + 0.05  # active by 0.05 or more on [-1, 1]^10
    victim = ReLUNetwork(victim.weight0, bias, victim.weight1, victim.bias1,
                         hidden_layers=victim.hidden_layers)
    oracle = _boxed(victim, -1.0, 1.0)
    result = extract_functional(oracle, input_bounds=(-1.0, 1.0))
    net = result.network
    assert net.widths[0] == 10 and net.metadata["active_throughout"] == [9]
    assert any("never changed state where the attack queried the box" in n
               for n in result.notes)
    cos = net.weight0[9] @ victim.weight0[0] / np.linalg.norm(victim.weight0[0])
    assert abs(cos) > 1 - 1e-9  # one such unit: its row exactly (its bias is its own)
    metrics = compare_networks(victim, net, input_bounds=(-1.0, 1.0))
    assert metrics["fidelity_uniform"] == 1.0 and metrics["max_logit_error"] < 1e-7


def test_the_self_check_says_what_share_it_vouches_for():
    from model_extraction.attacks.functional.selfcheck import SelfCheck

    passed = SelfCheck(points=4096, answers=10, max_error=1e-12, tolerance=1e-6)
    assert passed.disagreement_bound == pytest.approx(7.31e-4, rel=1e-3)  # about 3 / 4096
    assert (1 - passed.disagreement_bound) ** 4096 == pytest.approx(0.05)
    assert SelfCheck(0, 10, 1e-12, 1e-6).disagreement_bound == 1.0  # no fresh point: nothing
    failed = SelfCheck(4096, 10, 1e-3, 1e-6).as_dict()
    assert not failed["passed"] and np.isnan(failed["disagreement_bound"])


def test_an_expansive_single_layer_missing_a_rare_neuron_draws_more_lines():
    """h1 > d, one neuron active on a sliver: a first pass of the deep phases without it is not
    refused as an expansive first layer of a deeper network, but searched again until the
    neuron is found (the one-hidden-layer attack, which the pipeline tries first, finds it
    too)."""
    victim = ReLUNetwork.random(30, 40, 3, seed=1)
    w, b = victim.weight0.copy(), victim.bias0.copy()
    w[0] /= np.linalg.norm(w[0])
    b[0] = -1.6  # active where a Gaussian of standard deviation 0.5 is beyond 3.2 sigma
    victim = ReLUNetwork(w, b, *victim.layers[-1])
    for one_layer in (False, True):
        result = extract_deep(ModelOracle(victim), seed=0, one_layer=one_layer)
        assert result.network.widths == (40,) and (one_layer or result.lines > 24)
        metrics = compare_networks(victim, result.network, input_bounds=(-2.0, 2.0))
        assert metrics["units_matched"] == 40 and metrics["wrong_signs"] == 0
        assert metrics["fidelity_uniform"] == 1.0


@settings(max_examples=20, deadline=None)
@given(count=st.integers(0, 300), block=st.integers(1, 120), off=st.sampled_from([0.0, 3e-6]))
def test_a_self_check_in_blocks_is_the_self_check(count, block, off):
    """Drawing the fresh points a block at a time (so that 65,536 of them need not be held)
    changes nothing: the same queries, largest error (to the last bits) and failed points."""
    from model_extraction.attacks.functional.selfcheck import self_check, self_check_drawn

    victim = ReLUNetwork.random(6, (5, 4), 2, seed=1)
    model = ReLUNetwork(victim.weight0, victim.bias0, victim.weight1 * (1 + off), victim.bias1,
                        hidden_layers=victim.hidden_layers)
    held_x = np.random.default_rng(9).standard_normal((7, 6))
    held_y = victim.logits(held_x)
    whole, blocks = ModelOracle(victim), ModelOracle(victim)
    x = np.random.default_rng(count).standard_normal((count, 6))
    check, _, errors = self_check(whole, model, x, held_x, held_y, 1e-6)
    rng = np.random.default_rng(count)
    drawn, failed = self_check_drawn(blocks, model, lambda n: rng.standard_normal((n, 6)),
                                     count, held_x, held_y, 1e-6, block=block)
    assert (drawn.points, drawn.answers) == (check.points, check.answers)
    assert whole.queries == blocks.queries == count
    # other batch shapes round the model's logits differently in the last bits (BLAS)
    assert drawn.max_error == pytest.approx(check.max_error, rel=1e-9, abs=1e-18)
    np.testing.assert_array_equal(failed, np.concatenate([x, held_x])[errors > 1e-6])


def test_the_notes_say_which_orientations_are_guesses():
    from dataclasses import replace

    from model_extraction.attacks.functional.deep import _notes

    net = ReLUNetwork.random(6, (4, 6, 3), 1, seed=0)
    assert _notes(net) == []
    guessed = replace(net, metadata={"guessed_signs": [[2, 1], [2, 4]]})
    (note,) = _notes(guessed)
    assert "orientations of 2 middle-layer neurons" in note and "guessed_signs" in note


def _last_layer_known_below():
    """:func:`_never_together`'s victim, its first two layers as the prefix, its third layer's
    rows and biases, a generator, and 64 points on each third-layer hyperplane."""
    from model_extraction.attacks.functional.prefix import Prefix

    victim = _never_together()
    prefix = Prefix(victim.layers[:2])
    w3, b3 = (np.array(a) for a in victim.layers[2])
    rng = np.random.default_rng(0)
    anchors = [prefix.onto(rng.standard_normal((64, 10)), w3[j], float(b3[j]), 20)
               for j in range(len(b3))]
    return victim, prefix, w3, b3, rng, anchors


def test_a_weight_never_seen_is_measured_from_kinks_where_both_units_are_active():
    """The rest of the row known, each kink of a line across the neuron's hyperplane where the
    unit is active gives a candidate weight; the neuron's own kinks agree across lines, and
    their value is the weight, whichever orientation the row has (no Jacobian is measured:
    line searches only)."""
    from model_extraction.attacks.functional.unseen import measure_unseen

    victim, prefix, w3, b3, rng, anchors = _last_layer_known_below()
    unseen = np.zeros(w3.shape, dtype=bool)
    unseen[0, 0] = True
    for sign in (1.0, -1.0):
        oracle = ModelOracle(victim)
        rows = sign * np.where(unseen, 0.0, w3)
        out = measure_unseen(oracle, prefix, rows, sign * b3, unseen, anchors, rng, 1.0)
        assert abs(out[0, 0] / sign - w3[0, 0]) < 1e-8 * abs(w3[0, 0])
        np.testing.assert_array_equal(np.delete(out.ravel(), 0), np.delete(rows.ravel(), 0))
        assert 0 < oracle.queries < 20_000


@pytest.mark.parametrize("unit", [3, 7])
def test_two_weights_never_seen_in_one_row_are_measured_one_after_the_other(unit):
    """Two unseen weights of one row: a kink where both units are active gives no candidate
    for either (the other's weight would be in it); the weight measured first goes into the
    row, and the other is measured again with it (before, unit 0's weight stayed unseen: the
    victim's units 3 and 7 are active at 100% and 84% of the Gaussian points where unit 0 is)."""
    from model_extraction.attacks.functional.unseen import measure_unseen

    victim, prefix, w3, b3, rng, anchors = _last_layer_known_below()
    unseen = np.zeros(w3.shape, dtype=bool)
    unseen[0, [0, unit]] = True
    oracle = ModelOracle(victim)
    out = measure_unseen(oracle, prefix, np.where(unseen, 0.0, w3), b3, unseen, anchors, rng,
                         1.0)
    np.testing.assert_allclose(out[0, [0, unit]], w3[0, [0, unit]], rtol=1e-8)
    np.testing.assert_array_equal(out[~unseen], w3[~unseen])
    assert 0 < oracle.queries < 40_000


def test_a_box_and_its_reference_inputs_are_checked_before_any_query():
    oracle = ModelOracle(ReLUNetwork.random(10, (10, 10), 1, seed=0))
    bad = [({"input_bounds": (1.0, 0.0)}, "low < high"),
           ({"input_bounds": (0.0, 1.0, 2.0)}, "low < high"),
           ({"input_bounds": (0.0, np.inf)}, "finite"),
           ({"reference_inputs": np.zeros((4, 10))}, "need input_bounds"),
           ({"input_bounds": (0.0, 1.0), "reference_inputs": np.full((4, 10), 2.0)},
            "inside input_bounds"),
           ({"input_bounds": (0.0, 1.0), "reference_inputs": np.zeros((4, 9))}, "rows of 10"),
           ({"input_bounds": (0.0, 1.0), "one_layer": FunctionalExtraction(
               input_bounds=(-1.0, 1.0))}, "the same box|input_bounds=\\(0.0, 1.0\\)")]
    for options, said in bad:
        with pytest.raises(ValueError, match=said):
            extract_deep(oracle, **options)
    assert oracle.queries == 0
