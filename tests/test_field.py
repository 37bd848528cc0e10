"""Functional extraction against APIs as deployed: an enforced input box, probabilities,
mirrored units, wide or rank-deficient layers, binary classifiers, victims that are not one
ReLU layer. Each case either extracts a model that agrees with its victim or raises."""

import numpy as np
import pytest

from model_extraction import (
    CallableOracle,
    FunctionalExtraction,
    ModelOracle,
    OracleMismatchError,
    ReLUNetwork,
    compare_networks,
    extract_functional,
)
from model_extraction.oracle import InsufficientPrecisionError, LogitDifferenceOracle
from model_extraction.victims import train_victim


@pytest.fixture(scope="module")
def strong_victim(digits):
    """A 64-32-10 digits victim trained as the paper does (20 epochs): its logit gaps make the
    softmax underflow far outside the box."""
    x, y = digits
    return train_victim(x[:1500], y[:1500], 32, epochs=20, seed=0)


def box_api(fn, d):
    """An API that, like a deployed one, answers only inputs in [0, 1]^d (400 otherwise)."""

    def api(x):
        if np.any((x < 0) | (x > 1)):
            raise ValueError("400: input out of range [0, 1]")
        return fn(x)

    return api


def test_probabilities_of_a_trained_victim_in_its_box(strong_victim, digits):
    x, _ = digits
    probs = ModelOracle(box_api(strong_victim.logits, 64), output="probabilities", input_dim=64)
    result = extract_functional(LogitDifferenceOracle(probs), input_dim=64,
                                reference_inputs=x[:500])
    m = compare_networks(strong_victim, result.network, test_inputs=x[1500:], up_to_constant=True)
    assert m["fidelity_test"] == 1.0 and m["fidelity_uniform"] == 1.0
    assert result.check["passed"]


def test_probabilities_far_outside_the_box_name_the_underflow(strong_victim):
    """Unbounded queries reach inputs where the softmax underflows: the message says so, and
    does not blame a rounding defence."""
    probs = ModelOracle(strong_victim, output="probabilities")
    with pytest.raises(InsufficientPrecisionError, match="underflowed"):
        extract_functional(LogitDifferenceOracle(probs), stay_in_bounds=False)


def test_rounded_probabilities_are_refused_as_rounded(strong_victim):
    rounded = CallableOracle(
        lambda x: np.round(ModelOracle(strong_victim, output="probabilities")(x), 3),
        input_dim=64, output_kind="probabilities")
    with pytest.raises(InsufficientPrecisionError, match="rounded"):
        extract_functional(LogitDifferenceOracle(rounded))


def test_log_ratios_are_exact_where_a_fixed_class_is_tiny():
    """Logit differences from probabilities whose reference class is ~1e-300."""
    z = np.array([[-690.0, 0.0, 3.0], [5.0, 1.0, -2.0]])
    probs = CallableOracle(lambda x: ModelOracle(lambda _: z, output="probabilities")(x),
                           input_dim=1, output_kind="probabilities")
    got = LogitDifferenceOracle(probs)(np.zeros((2, 1)))
    np.testing.assert_allclose(got, z - z[:, :1], rtol=1e-12)


def crelu(seed=0):
    """``Linear(64, 8)``, ``cat(relu(z), relu(-z))``, ``Linear(16, 10)``."""
    base = ReLUNetwork.random(64, 8, 10, seed=seed)
    w1 = np.random.default_rng(seed + 1).standard_normal((10, 16)) * 0.5
    return ReLUNetwork(np.concatenate([base.weight0, -base.weight0]),
                       np.concatenate([base.bias0, -base.bias0]), w1, base.bias1)


def test_mirrored_units_need_the_affine_term():
    victim = crelu()
    result = extract_functional(box_api(victim.logits, 64), input_dim=64)
    m = compare_networks(victim, result.network)
    assert m["fidelity_uniform"] == 1.0
    assert result.network.skip is not None  # a pair (w, -w) adds a linear term
    assert result.network.hidden == 8


@pytest.mark.parametrize(("d", "h", "k"), [(10, 30, 1), (10, 30, 3)])
def test_wider_than_the_input(d, h, k):
    victim = ReLUNetwork.random(d, h, k, seed=0)
    result = extract_functional(box_api(victim.logits, d), input_dim=d)
    m = compare_networks(victim, result.network, n_uniform=10_000)
    assert m["fidelity_uniform"] == 1.0


def test_rank_deficient_first_layer(digits):
    """Three digits pixels are always 0: a digits victim's first layer has rank < h."""
    x, y = digits
    trained = train_victim(x[:1500], y[:1500], 64, epochs=20, seed=0)
    never = np.all(x == 0, axis=0)  # pixels that are 0 in every image
    w0 = np.where(never[None, :], 0.0, trained.weight0)
    victim = ReLUNetwork(w0, trained.bias0, trained.weight1, trained.bias1)
    assert never.sum() >= 1 and np.linalg.matrix_rank(victim.weight0) < 64
    result = extract_functional(ModelOracle(victim), reference_inputs=x[:500])
    m = compare_networks(victim, result.network, test_inputs=x[1500:])
    assert m["fidelity_test"] == 1.0 and m["fidelity_uniform"] >= 0.999


def test_one_output_fidelity_is_sign_agreement():
    a = ReLUNetwork.random(20, 10, 1, seed=1)
    b = ReLUNetwork.random(20, 10, 1, seed=2)
    m = compare_networks(a, b)
    u = np.random.default_rng(0).uniform(size=(10_000, 20))
    expected = np.mean((a.logits(u)[:, 0] > 0) == (b.logits(u)[:, 0] > 0))
    assert m["fidelity_uniform"] == pytest.approx(expected)
    assert m["fidelity_uniform"] < 0.9


def test_label_oracle_over_one_dimensional_outputs():
    net = ReLUNetwork.random(5, 4, 1, seed=0)
    oracle = ModelOracle(lambda x: net.logits(x)[:, 0], output="label", input_dim=5)
    x = np.random.default_rng(0).uniform(size=(50, 5))
    labels = oracle(x)
    assert labels.dtype == np.int64 and labels.shape == (50, 1)
    np.testing.assert_array_equal(labels[:, 0], (net.logits(x)[:, 0] > 0).astype(int))


def test_a_victim_affine_on_the_box_is_extracted_with_every_query_counted():
    """No unit changes state inside the box: the model is the affine map, measured by one
    Jacobian at the centre, and those queries are in the result's count too."""
    rng = np.random.default_rng(0)
    victim = ReLUNetwork(rng.standard_normal((3, 5)), np.full(3, -100.0),
                         rng.standard_normal((2, 3)), rng.standard_normal(2))
    oracle = ModelOracle(victim)
    result = extract_functional(oracle, max_lines=8)
    assert result.check["passed"] and result.network.hidden == 0
    assert any("affine on the domain" in note for note in result.notes)
    assert result.queries == oracle.queries == sum(p.queries for p in result.phases.values())
    x = rng.uniform(size=(100, 5))
    np.testing.assert_allclose(result.network.logits(x), victim.logits(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("widths", [(3,), (4, 3), (5, 4, 3)])
def test_affine_model_converts_saves_and_runs_in_torch(tmp_path, widths):
    """The affine term is in the last hidden layer's input (the inputs for one hidden layer):
    exact through files and torch, and rewritten as plain units on a box at any depth."""
    import torch

    net = ReLUNetwork.random(6, widths, 2, seed=0)
    below = (6, *widths)[-2]
    skip = np.random.default_rng(1).standard_normal((2, below))
    model = ReLUNetwork(net.weight0, net.bias0, net.weight1, net.bias1, skip=skip,
                        hidden_layers=net.hidden_layers)
    x = np.random.default_rng(2).uniform(size=(200, 6))
    a = x
    for w, b in net.layers[:-2]:
        a = np.maximum(a @ w.T + b, 0)
    np.testing.assert_allclose(model.logits(x), net.logits(x) + a @ skip.T, rtol=1e-12,
                               atol=1e-12)
    assert model.num_parameters == net.num_parameters + skip.size
    for lo, hi in ((0.0, 1.0), (-10.0, 10.0)):  # the corners too: where bounds are tight
        plain = model.without_skip((lo, hi))
        assert plain.skip is None and plain.widths == (*widths[:-1], widths[-1] + 2)
        rng = np.random.default_rng(3)
        z = np.vstack([rng.uniform(lo, hi, (2000, 6)), rng.choice([lo, hi], (2000, 6))])
        np.testing.assert_allclose(plain.logits(z), model.logits(z), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="input_bounds must be finite"):
        model.without_skip((0.0, np.inf))
    loaded = ReLUNetwork.load(model.save(tmp_path / "m.safetensors"))
    np.testing.assert_array_equal(loaded.skip, skip)
    module = model.to_torch()
    with torch.no_grad():
        np.testing.assert_allclose(module(torch.from_numpy(x)).numpy(), model.logits(x),
                                   rtol=1e-12, atol=1e-12)
    back = ReLUNetwork.from_torch(module)
    np.testing.assert_array_equal(back.skip, skip)
    np.testing.assert_allclose(back.logits(x), model.logits(x), rtol=1e-12, atol=1e-12)
    if len(widths) == 1:  # a module made before deeper ones had an affine term: no `below`
        del module.below
        np.testing.assert_array_equal(ReLUNetwork.from_torch(module).skip, skip)
    else:  # anything but Linear, ReLU below: refused, not read as a ReLU network
        module.below[1] = torch.nn.Tanh()
        with pytest.raises(ValueError, match="from_torch expects"):
            ReLUNetwork.from_torch(module)
    with pytest.raises(ValueError, match="skip must have shape"):
        ReLUNetwork(net.weight0, net.bias0, net.weight1, net.bias1, skip=skip[:, :-1],
                    hidden_layers=net.hidden_layers)


def _deep(seed=0):
    rng = np.random.default_rng(seed)
    w1, b1 = rng.standard_normal((20, 30)) * 0.4, rng.standard_normal(20) * 0.1
    w2, b2 = rng.standard_normal((10, 20)) * 0.4, rng.standard_normal(10) * 0.1
    w3 = rng.standard_normal((3, 10))
    return lambda x: np.maximum(np.maximum(x @ w1.T + b1, 0) @ w2.T + b2, 0) @ w3.T


@pytest.mark.parametrize("victim", ["two hidden layers", "clipped inputs"])
def test_not_one_relu_layer_on_the_domain_is_refused_early(victim):
    """A deeper network, or an API that clips its inputs to a smaller range than the box
    declared, is refused by the one-hidden-layer attack within a few lines (a few thousand
    queries), not after a full run (extract_functional then goes on with the deep phases:
    tests/test_deep.py)."""
    if victim == "two hidden layers":
        fn = _deep()
    else:
        net = ReLUNetwork.random(30, 12, 4, seed=1)
        def fn(x):
            return net.logits(np.clip(x, 0.25, 0.75))
    oracle = CallableOracle(fn, input_dim=30, output_kind="logits")
    with pytest.raises(OracleMismatchError, match="not a one-hidden-layer ReLU network"):
        FunctionalExtraction().run(oracle)
    assert oracle.queries < 10_000


def test_reference_inputs_are_validated():
    net = ReLUNetwork.random(5, 3, 2, seed=0)
    with pytest.raises(ValueError, match="inside input_bounds"):
        extract_functional(net, reference_inputs=np.full((4, 5), 2.0))
    with pytest.raises(ValueError, match="rows of 5 inputs"):
        extract_functional(net, reference_inputs=np.zeros((4, 6)))


def test_a_repaired_model_reports_only_the_notes_of_the_model_returned():
    """The notes of a model that failed its self-check (it is discarded, and the attack searches
    on) are dropped; the repair says what it found and did."""
    victim = ReLUNetwork.random(10, 12, 3, seed=0)
    result = extract_functional(ModelOracle(victim), patience=1, seed=0)
    assert result.check["passed"]
    repair = [i for i, n in enumerate(result.notes) if n.startswith("the self-check found")]
    assert len(repair) == 1
    about_a_model = ("affine term", "last layer leaves", "linearly dependent", "were decided",
                     "affine on the domain")
    before = result.notes[: repair[0]]
    assert not [n for n in before if any(k in n for k in about_a_model)]
    assert sum("affine term" in n for n in result.notes) == 1  # the model returned has one
