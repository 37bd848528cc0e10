"""Functionally-equivalent extraction (§6): it must really extract, and refuse what it can't."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_extraction import (
    BudgetExhaustedError,
    CallableOracle,
    ExtractionError,
    ModelOracle,
    OracleMismatchError,
    ReLUNetwork,
    compare_networks,
    extract_functional,
)
from model_extraction.evaluation import align_units


def _outside(bounds):
    """A logit wrapper that counts the rows asked for outside the box ``bounds``."""
    lo, hi = bounds
    count = {"outside": 0}

    def wrap(fn):
        def api(x):
            count["outside"] += int(np.sum(np.any((x < lo) | (x > hi), axis=1)))
            return fn(x)
        return api

    return wrap, count


def test_extracts_trained_digits_victim_in_its_box(trained_victim, digits):
    """Default: no query leaves [0, 1]^64, the model is exact on the box and on the data."""
    x, _ = digits
    wrap, count = _outside((0.0, 1.0))
    oracle = ModelOracle(wrap(trained_victim.logits), input_dim=64)
    result = extract_functional(oracle, reference_inputs=x[:500])
    m = compare_networks(trained_victim, result.network, test_inputs=x[1500:])
    assert count["outside"] == 0
    assert m["fidelity_test"] == 1.0 and m["fidelity_uniform"] == 1.0
    # Exact on all but a corner of the box: units whose hyperplanes only cut off 0.08% of it
    # are missed (a region that small is invisible to the self-check's 256 points); one test
    # image of 297 lies there (its logits off by 1e-3, its label right).
    test_error = np.abs(trained_victim.logits(x[1500:]) - result.network.logits(x[1500:]))
    assert np.mean(test_error.max(axis=1) > 1e-8) <= 0.01
    u = np.random.default_rng(0).uniform(size=(10_000, 64))
    wrong = np.abs(trained_victim.logits(u) - result.network.logits(u)).max(axis=1) > 1e-8
    assert wrong.mean() <= 0.001
    assert m["mean_bits"] >= 40
    assert result.check["passed"] and result.check["points"] == 256
    assert result.check["max_error"] < 1e-9
    # what the check vouches for (95% confidence, for this check): a disagreement on at most
    # 1.16% of the distribution its 256 fresh points come from, here half uniform on the box
    # and half reference inputs, so on at most 2.3% of the box (its 128 uniform points)
    assert result.check["disagreement_bound"] == pytest.approx(1 - 0.05 ** (1 / 256))
    assert wrong.mean() <= 1 - 0.05 ** (1 / 128)
    assert result.queries == oracle.queries  # every forward pass was counted


def test_extracts_trained_digits_victim_unbounded(trained_victim, digits):
    """The paper's setting (any float64 input): every unit, with its sign."""
    x, _ = digits
    oracle = ModelOracle(trained_victim)
    result = extract_functional(oracle, stay_in_bounds=False)
    m = compare_networks(trained_victim, result.network, test_inputs=x[1500:])
    assert result.network.hidden == trained_victim.hidden
    assert result.network.skip is None
    assert m["fidelity_test"] == 1.0 and m["fidelity_uniform"] == 1.0
    assert m["wrong_signs"] == 0
    assert m["mean_bits"] >= 40 and m["worst_unit_bits"] >= 30
    assert m["max_logit_error"] < 1e-8
    assert result.queries == oracle.queries


@settings(max_examples=8, deadline=None, derandomize=True)
@given(d=st.integers(20, 60), h=st.integers(2, 16), k=st.integers(2, 6), seed=st.integers(0, 999))
def test_random_victims_property(d, h, k, seed):
    victim = ReLUNetwork.random(d, h, k, seed=seed)
    result = extract_functional(ModelOracle(victim), seed=seed, stay_in_bounds=False)
    m = compare_networks(victim, result.network, n_uniform=2000)
    assert result.network.hidden == h
    assert m["fidelity_uniform"] == 1.0
    assert m["mean_bits"] >= 35


@settings(max_examples=8, deadline=None, derandomize=True)
@given(d=st.integers(8, 40), h=st.integers(2, 40), k=st.integers(1, 5), seed=st.integers(0, 999))
def test_random_victims_in_the_box_property(d, h, k, seed):
    """In the box, for any width (h > d too) and K = 1: no query outside, a self-check passed,
    and at most 0.1% disagreement on uniform inputs (a unit met only in a corner of the box may
    be missed; the self-check's 256 points cannot see a region that small)."""
    victim = ReLUNetwork.random(d, h, k, seed=seed)
    wrap, count = _outside((0.0, 1.0))
    result = extract_functional(wrap(victim.logits), input_dim=d, seed=seed)
    m = compare_networks(victim, result.network, n_uniform=5000)
    assert count["outside"] == 0
    assert result.check["passed"]
    assert m["fidelity_uniform"] >= 0.999


def test_plain_callable_oracle(random_victim):
    calls = []

    def api(x):
        calls.append(len(x))
        return random_victim.logits(x)

    result = extract_functional(api, input_dim=50)
    assert sum(calls) == result.queries
    m = compare_networks(random_victim, result.network)
    assert m["fidelity_uniform"] == 1.0


def test_paper_mode_extracts_the_victim(random_victim):
    """The paper's algorithm, told h = 12: the same function, and every unit's weights and bias
    recovered up to permutation and a positive scale (the only freedom of a ReLU layer)."""
    result = extract_functional(ModelOracle(random_victim), mode="paper", hidden=12)
    net = result.network
    assert set(result.phases) >= {"critical points", "weights", "signs", "last layer"}
    m = compare_networks(random_victim, net)
    assert net.skip is None and m["fidelity_uniform"] == 1.0
    assert m["max_logit_error"] < 1e-8
    assert m["wrong_signs"] == 0 and m["worst_unit_bits"] >= 30
    match, cosine = align_units(random_victim, net)
    assert sorted(match) == list(range(12)) and np.all(cosine > 1 - 1e-12)
    scale = (np.linalg.norm(net.weight0[match], axis=1)
             / np.linalg.norm(random_victim.weight0, axis=1))
    atol = 1e-9 * scale[:, None]  # the rows' 30 bits and more, in the victim's units
    assert np.all(np.abs(net.weight0[match] - scale[:, None] * random_victim.weight0) <= atol)
    assert np.all(np.abs(net.bias0[match] - scale * random_victim.bias0) <= atol[:, 0])
    # The last layer undoes the scale: A1 diag(1/scale) is the victim's.
    assert np.allclose(net.weight1[:, match] * scale, random_victim.weight1, rtol=0, atol=1e-8)
    assert np.allclose(net.bias1, random_victim.bias1, rtol=0, atol=1e-8)


def test_hidden_mismatch_is_a_clear_error(random_victim):
    # the one-layer attack finds 12 units; the deep phases, which the pipeline tries next,
    # find one layer of 12
    with pytest.raises(ExtractionError, match=r"found widths \(12,\), not the \(13,\) given"):
        extract_functional(ModelOracle(random_victim), hidden=13, max_lines=3,
                           stay_in_bounds=False)


@pytest.mark.parametrize("output", ["probabilities", "top_k", "label"])
def test_refuses_non_logit_oracles(random_victim, output):
    with pytest.raises(OracleMismatchError, match="logits"):
        extract_functional(ModelOracle(random_victim, output=output))


def test_refuses_undeclared_probabilities(random_victim):
    def probs(x):
        z = random_victim.logits(x)
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    with pytest.raises(OracleMismatchError, match="probabilities"):
        extract_functional(probs, input_dim=50)


def test_refuses_labels_from_callable(random_victim):
    with pytest.raises(OracleMismatchError, match="labels"):
        extract_functional(lambda x: random_victim.predict(x), input_dim=50)


def test_refuses_float32(random_victim):
    with pytest.raises(OracleMismatchError, match="float32"):
        extract_functional(lambda x: random_victim.logits(x).astype(np.float32), input_dim=50)
    with pytest.raises(OracleMismatchError, match="float32"):
        extract_functional(
            lambda x: random_victim.logits(x).astype(np.float32).astype(np.float64), input_dim=50
        )


def test_refuses_rounded_outputs(random_victim):
    with pytest.raises(OracleMismatchError, match="rounded"):
        extract_functional(lambda x: np.round(random_victim.logits(x), 4), input_dim=50)


def test_refuses_tanh_victim(random_victim):
    v = random_victim

    def tanh_net(x):
        return np.tanh(x @ v.weight0.T + v.bias0) @ v.weight1.T + v.bias1

    with pytest.raises(OracleMismatchError, match="piecewise linear"):
        extract_functional(tanh_net, input_dim=50)


@pytest.mark.parametrize("mode", ["default", "paper"])
@pytest.mark.parametrize("beta", [0.5, 1e-4])
def test_refuses_reverse_sigmoid_defence(random_victim, beta, mode):
    """A smooth output defence that the preflight's short segments do not expose: the line
    search sees curved intervals only, and says so (it used to report 'no hidden unit', or a
    model with half the units), within a few thousand queries."""
    from model_extraction.defenses import OutputPolicy
    from model_extraction.oracle import LogitDifferenceOracle

    v = random_victim
    policy = OutputPolicy(kind="probabilities", reverse_sigmoid_beta=beta)
    probs = CallableOracle(lambda x: policy.apply(v.logits(x)), input_dim=v.input_dim,
                           output_kind="probabilities")
    oracle = LogitDifferenceOracle(probs)
    with pytest.raises(OracleMismatchError, match="reverse sigmoid"):
        extract_functional(oracle, mode=mode, hidden=v.hidden)
    assert oracle.queries < 60_000


def test_refuses_nan_outputs(random_victim):
    def broken(x):
        y = random_victim.logits(x)
        y[0, 0] = np.nan
        return y

    with pytest.raises(ValueError, match="NaN"):
        extract_functional(broken, input_dim=50)


def test_budget_exhausted_says_how_far(random_victim):
    oracle = ModelOracle(random_victim, budget=500)
    with pytest.raises(BudgetExhaustedError, match="phase") as info:
        extract_functional(oracle)
    assert oracle.queries <= 500
    assert "units recovered" in str(info.value)


def test_oracle_counts_and_budget(random_victim):
    oracle = CallableOracle(random_victim.logits, input_dim=50, budget=10)
    oracle(np.zeros((4, 50)))
    assert oracle.queries == 4 and oracle.remaining == 6
    with pytest.raises(BudgetExhaustedError):
        oracle(np.zeros((7, 50)))
    assert oracle.queries == 4  # nothing evaluated
    with pytest.raises(ValueError, match=r"\(n, 50\)"):
        oracle(np.zeros((2, 49)))


def test_network_save_load_torch(tmp_path, random_victim):
    import torch

    path = random_victim.save(tmp_path / "v.safetensors")
    loaded = ReLUNetwork.load(path)
    x = np.random.default_rng(0).uniform(size=(5, 50))
    assert np.array_equal(loaded.logits(x), random_victim.logits(x))
    module = loaded.to_torch()
    with torch.no_grad():
        y = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, random_victim.logits(x), rtol=1e-12, atol=1e-12)
    again = ReLUNetwork.from_torch(module)
    assert np.array_equal(again.weight0, random_victim.weight0)


@pytest.mark.parametrize(
    ("d", "h", "k", "seed"),
    [
        # A probe crossed the unit's own hyperplane on both sides of the critical point: the
        # Jacobian difference stayed rank one with a wrong row, and a sixth unit was returned.
        (45, 5, 6, 12),
        # K = 1: two critical points 7e-5 apart were merged by the line search into one
        # rank-one "unit" that is a mix of both rows.
        (47, 14, 1, 28),
        (52, 13, 1, 50),
    ],
)
def test_no_ghost_units(d, h, k, seed):
    victim = ReLUNetwork.random(d, h, k, seed=seed)
    result = extract_functional(ModelOracle(victim), seed=seed, stay_in_bounds=False)
    m = compare_networks(victim, result.network, n_uniform=2000)
    assert result.network.hidden == h
    assert m["fidelity_uniform"] == 1.0
    assert m["worst_unit_bits"] >= 30


def test_rows_too_many_for_the_votes_are_oriented_by_the_affine_term_they_leave():
    """h > d: the Jacobians' votes cannot orient dependent rows, kept as found; the affine term
    they leave, ``-Σ g_ν r_νᵀ`` over the units kept the wrong way round, says which ones
    (``h ≤ K d``), and the model then needs no affine term (before, 22 of 40 units were kept the
    wrong way round, carried by it). Where ``h > K d`` the term stays, and the model is exact."""
    victim = ReLUNetwork.random(30, 40, 3, seed=1)
    result = extract_functional(ModelOracle(victim), stay_in_bounds=False)
    metrics = compare_networks(victim, result.network, input_bounds=(-2.0, 2.0))
    assert result.network.skip is None and metrics["fidelity_uniform"] == 1.0
    assert metrics["units_matched"] == 40 and metrics["wrong_signs"] == 0
    assert any("orientations from the affine term" in note for note in result.notes)
    undecided = ReLUNetwork.random(10, 20, 1, seed=0)
    result = extract_functional(ModelOracle(undecided), stay_in_bounds=False)
    metrics = compare_networks(undecided, result.network, input_bounds=(-2.0, 2.0))
    assert result.network.skip is not None and metrics["fidelity_uniform"] == 1.0
    assert metrics["max_logit_error"] < 1e-7


def test_the_attacks_own_precision_estimate_is_nan_where_it_cannot_be_made():
    """``estimated_bits`` comes from the residual of each row's rank-one fit to a ``K × d``
    Jacobian difference. With one output that fit is exact whatever the row's error, and the
    estimate read the 60-bit cap on rows 35 to 42 bits precise: it is NaN there, and the summary
    says nothing. With several outputs it follows the precision measured against the victim."""
    single = ReLUNetwork.random(40, 20, 1, seed=0)
    result = extract_functional(ModelOracle(single), stay_in_bounds=False)
    assert result.estimated_bits.shape == (20,) and np.isnan(result.estimated_bits).all()
    assert result.summary()["estimated_bits_min"] is None
    several = ReLUNetwork.random(40, 20, 3, seed=0)
    result = extract_functional(ModelOracle(several), stay_in_bounds=False)
    measured = compare_networks(several, result.network, input_bounds=(-2.0, 2.0))
    assert np.isfinite(result.estimated_bits).all()
    assert abs(np.mean(result.estimated_bits) - measured["mean_bits"]) < 3
