"""ReLUNetwork of any depth: shapes, forward pass, torch, files, training, evaluation."""

import numpy as np
import pytest
import torch

from model_extraction.attacks.functional import (
    FunctionalExtraction,
    OracleMismatchError,
)
from model_extraction.evaluation import compare_networks
from model_extraction.network import ReLUNetwork
from model_extraction.oracle import ModelOracle
from model_extraction.victims import train_victim


def reference_logits(net: ReLUNetwork, x: np.ndarray) -> np.ndarray:
    """The forward pass written out layer by layer, independently of ``logits``."""
    a = x
    for w, b in [(net.weight0, net.bias0), *net.hidden_layers]:
        a = np.maximum(a @ w.T + b, 0.0)
    return a @ net.weight1.T + net.bias1


@pytest.mark.parametrize("widths", [(7,), (7, 5), (6, 5, 4)])
def test_shapes_parameters_and_forward_pass(widths):
    net = ReLUNetwork.random(9, widths, 3, seed=2)
    sizes = (9, *widths, 3)
    assert net.widths == widths and net.depth == len(widths)
    assert net.hidden == (widths[0] if len(widths) == 1 else widths)
    assert net.num_parameters == sum(a * b + b for a, b in zip(sizes, sizes[1:], strict=False))
    x = np.random.default_rng(0).uniform(-1, 1, (50, 9))
    np.testing.assert_allclose(net.logits(x), reference_logits(net, x), rtol=1e-13, atol=1e-13)
    pre = net.layer_preactivations(x)
    assert [p.shape for p in pre] == [(50, h) for h in widths]
    np.testing.assert_array_equal(pre[0], net.preactivations(x))
    np.testing.assert_allclose(np.maximum(pre[-1], 0) @ net.weight1.T + net.bias1,
                               net.logits(x), rtol=1e-13, atol=1e-13)


def test_an_int_keeps_meaning_one_hidden_layer():
    a, b = ReLUNetwork.random(12, 5, 2, seed=4), ReLUNetwork.random(12, (5,), 2, seed=4)
    assert a.hidden == 5 and a.depth == 1 and a.hidden_layers == ()
    for name in ("weight0", "bias0", "weight1", "bias1"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_torch_and_files_round_trip(tmp_path):
    net = ReLUNetwork.random(10, (8, 6, 4), 3, seed=1, metadata={"note": "deep"})
    x = np.random.default_rng(1).uniform(0, 1, (20, 10))
    module = net.to_torch()
    assert sum(isinstance(m, torch.nn.Linear) for m in module) == 4
    np.testing.assert_allclose(module(torch.from_numpy(x)).detach().numpy(), net.logits(x),
                               rtol=1e-12, atol=1e-12)
    back = ReLUNetwork.from_torch(module)
    assert back.widths == (8, 6, 4)
    np.testing.assert_allclose(back.logits(x), net.logits(x), rtol=1e-12, atol=1e-12)
    loaded = ReLUNetwork.load(net.save(tmp_path / "deep.safetensors"))
    assert loaded.widths == net.widths and loaded.metadata["note"] == "deep"
    for (w, b), (w2, b2) in zip(net.layers, loaded.layers, strict=True):
        np.testing.assert_array_equal(w, w2)
        np.testing.assert_array_equal(b, b2)


def test_bad_shapes_are_refused():
    w0, b0 = np.ones((4, 3)), np.zeros(4)
    with pytest.raises(ValueError, match="layer 1"):
        ReLUNetwork(w0, b0, np.ones((2, 5)), np.zeros(2), hidden_layers=((np.ones((5, 4)),
                                                                           np.zeros(4)),))
    with pytest.raises(ValueError, match=r"skip must have shape .* \(2, 4\)"):  # not (K, d)
        ReLUNetwork(w0, b0, np.ones((2, 5)), np.zeros(2), skip=np.zeros((2, 3)),
                    hidden_layers=((np.ones((5, 4)), np.zeros(5)),))
    with pytest.raises(ValueError, match="positive"):
        ReLUNetwork.random(5, (4, 0), 2)


def test_train_a_deep_victim(digits):
    x, y = digits
    net = train_victim(x[:1500], y[:1500], (16, 16), epochs=30, seed=0, x_test=x[1500:],
                       y_test=y[1500:])
    assert net.widths == (16, 16) and net.metadata["hidden"] == [16, 16]
    assert net.metadata["test_accuracy"] > 0.8  # a digits MLP; chance is 0.1


def test_deep_victims_are_evaluated_and_refused_by_the_one_layer_attack():
    victim = ReLUNetwork.random(20, (10, 10), 3, seed=0)
    same = compare_networks(victim, victim)
    assert same["hidden"] == [10, 10] and same["fidelity_uniform"] == 1.0
    assert same["max_logit_error"] == 0.0
    oracle = ModelOracle(victim)
    with pytest.raises(OracleMismatchError, match="not a one-hidden-layer"):
        FunctionalExtraction(seed=0).run(oracle)
    assert 0 < oracle.queries < 5000  # refused early, not after the budget of a full attack


def _rebuilt(layers, out):
    (w0, b0), *rest = layers
    return ReLUNetwork(w0, b0, *out, {}, hidden_layers=tuple(rest))


def test_layer_precision_aligns_units_and_reports_units_not_found():
    victim = ReLUNetwork.random(12, (8, 6, 5), 2, seed=1)
    rng = np.random.default_rng(0)
    layers, prev_perm, prev_scale = [], np.arange(12), np.ones(12)
    for w, b in victim.layers[:-1]:  # the same network, units permuted and rescaled
        perm, scale = rng.permutation(len(b)), rng.uniform(0.5, 2.0, len(b))
        layers.append((w[perm][:, prev_perm] / prev_scale * scale[:, None], b[perm] * scale))
        prev_perm, prev_scale = perm, scale
    w_out, b_out = victim.layers[-1]
    out = (w_out[:, prev_perm] / prev_scale, b_out)
    same = _rebuilt(layers, out)
    x = rng.standard_normal((50, 12))
    np.testing.assert_allclose(same.logits(x), victim.logits(x), rtol=1e-12, atol=1e-12)
    exact = compare_networks(victim, same)["layers"]
    assert [layer["units_matched"] for layer in exact] == [8, 6, 5]
    assert all(layer["worst_bits"] > 45 and layer["wrong_signs"] == 0 for layer in exact)
    (w2, b2), (w3, b3) = layers[1], layers[2]
    missing = _rebuilt([layers[0], (w2[1:], b2[1:]), (w3[:, 1:], b3)], out)
    partial = compare_networks(victim, missing)["layers"]
    assert [layer["units_matched"] for layer in partial] == [8, 5, 5]
    assert all(layer["worst_bits"] > 45 for layer in partial)  # the rest is still exact
