"""FGSM and the non-determinism experiment (§5, Table 4), on the embedded digits."""

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from model_extraction.adversarial import fgsm
from model_extraction.cli import app
from model_extraction.datasets import Dataset, load_dataset
from model_extraction.limits import (
    QUERY_SETS,
    SETTINGS,
    LimitsConfig,
    LimitsExperiment,
    ResidualVariant,
    chance_corrected_agreement,
    pairwise_agreement,
    run_limits,
    weights_digest,
)
from model_extraction.models import build_model
from model_extraction.training import fit, predict, seeded

ROOT = Path(__file__).resolve().parents[1]
ROW_KEYS = {"query_set", *SETTINGS}
SMALL = dict(options={"hidden": 64}, epochs=15, models_per_setting=3, n_uniform=400,
             train_size=600, test_size=200)


@pytest.fixture(scope="module")
def digits_splits():
    return load_dataset("digits", "train"), load_dataset("digits", "test")


@pytest.fixture(scope="module")
def trained(digits_splits):
    train, test = digits_splits
    with seeded(0):
        model = build_model("mlp", train.input_shape, train.num_classes, hidden=64)
    fit(model, train.to_float(), train.labels, epochs=8, optimizer="sgd", lr=0.05)
    return model, torch.from_numpy(test.to_float()), torch.from_numpy(test.labels.copy())


@pytest.fixture(scope="module")
def result(digits_splits):
    train, test = digits_splits
    return run_limits(train, test, LimitsConfig(**SMALL))


# -- FGSM ------------------------------------------------------------------------------------

def test_fgsm_raises_the_loss_and_respects_eps_and_the_box(trained):
    model, x, y = trained
    eps = 25 / 255
    adv = fgsm(model, x, eps=eps, y=y, batch_size=64)
    assert adv.shape == x.shape and adv.dtype == torch.float32
    assert float((adv - x).abs().max()) <= eps + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    clean = F.cross_entropy(predict(model, x), y, reduction="none")
    attacked = F.cross_entropy(predict(model, adv), y, reduction="none")
    assert float(attacked.mean()) > float(clean.mean()) + 0.5
    assert float((attacked > clean).float().mean()) > 0.95
    acc_clean = float((predict(model, x).argmax(1) == y).float().mean())
    acc_adv = float((predict(model, adv).argmax(1) == y).float().mean())
    assert acc_adv < acc_clean - 0.2


def test_fgsm_default_labels_are_the_models_predictions(trained):
    model, x, _ = trained
    own = predict(model, x).argmax(1)
    assert torch.equal(fgsm(model, x, eps=0.05), fgsm(model, x, eps=0.05, y=own))
    assert torch.equal(fgsm(model, x, eps=0.0), x)


def test_fgsm_targeted_moves_towards_the_target(trained):
    model, x, _ = trained
    target = (predict(model, x).argmax(1) + 1) % 10
    adv = fgsm(model, x, eps=0.1, y=target, targeted=True)
    before = F.cross_entropy(predict(model, x), target)
    after = F.cross_entropy(predict(model, adv), target)
    assert float(after) < float(before)


def test_fgsm_leaves_the_model_alone(trained):
    model, x, _ = trained
    model.train()
    before = weights_digest(model)
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    fgsm(model, x[:20], eps=0.1)
    assert model.training
    model.eval()
    assert weights_digest(model) == before
    for g, p in zip(grads, model.parameters(), strict=True):
        assert (g is None and p.grad is None) or torch.equal(g, p.grad)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eps": -0.1}, "eps must be"),
        ({"eps": float("nan")}, "eps must be"),
        ({"eps": 0.1, "y": np.zeros(3, dtype=np.int64)}, "y must have shape"),
        ({"eps": 0.1, "y": np.zeros(20)}, "integer class labels"),
        ({"eps": 0.1, "targeted": True}, "pass y"),
        ({"eps": 0.1, "clip": (1.0, 0.0)}, "lo < hi"),
        ({"eps": 0.1, "batch_size": 0}, "batch_size"),
    ],
)
def test_fgsm_rejects_bad_parameters(trained, kwargs, message):
    model, x, _ = trained
    with pytest.raises(ValueError, match=message):
        fgsm(model, x[:20], **kwargs)


def test_fgsm_rejects_inputs_outside_the_box(trained):
    model, x, _ = trained
    with pytest.raises(ValueError, match="divide by 255"):
        fgsm(model, x[:5] * 255, eps=0.1)
    with pytest.raises(ValueError, match="outside"):
        fgsm(model, x[:5], eps=0.1, y=torch.tensor([0, 1, 2, 3, 12]))


# -- the experiment --------------------------------------------------------------------------

def test_same_seeds_give_identical_weights_and_others_differ(result):
    n = result.config.models_per_setting
    assert result.distinct_weights == {"same_init_same_sgd": 1, "same_sgd": n, "same_init": n,
                                       "different": n}
    for q in QUERY_SETS:
        assert result.pairwise["same_init_same_sgd"][q]["mean"] == 1.0
    # D is the oracle's labels, not the truth: the same-seed copy is not the oracle.
    assert result.oracle["train_accuracy"] < 1.0
    assert result.vs_oracle["same_init_same_sgd"]["test"]["mean"] < 1.0
    # Trained on the true labels with the oracle's seeds, it is the oracle, bit for bit.
    assert result.control["bit_identical_to_oracle"] is True
    assert result.control["agreement_with_oracle"] == {q: 1.0 for q in QUERY_SETS}


def test_agreement_is_lowest_on_uniform_noise(result):
    # Unseeded settings (a fresh initialisation): far from the data, the initialisation decides.
    for measure in ("vs_oracle", "pairwise"):
        table = result.agreement(measure)
        for s in ("same_sgd", "different"):
            assert table["test"][s] > table["uniform"][s], (measure, s)


def test_seeds_are_recorded_fresh_and_distinct(result):
    c = result.config
    oracle = {c.oracle_init_seed, c.oracle_order_seed}
    by = {s: [r for r in result.runs if r.setting == s] for s in SETTINGS}
    assert all(len(v) == c.models_per_setting for v in by.values())
    assert {(r.init_seed, r.order_seed) for r in by["same_init_same_sgd"]} == {(0, 0)}
    assert {r.order_seed for r in by["same_sgd"]} == {0}
    assert {r.init_seed for r in by["same_init"]} == {0}
    fresh = ([r.init_seed for r in by["same_sgd"]] + [r.order_seed for r in by["same_init"]]
             + [r.init_seed for r in by["different"]] + [r.order_seed for r in by["different"]])
    assert len(set(fresh)) == len(fresh) and not oracle & set(fresh)
    assert all(0.5 < r.test_accuracy <= 1.0 for r in result.runs)


def test_json_has_the_documented_shape(result):
    d = json.loads(json.dumps(result.to_json()))
    for key in ("table_vs_oracle", "table_pairwise", "table_kappa_vs_oracle", "paper_table4"):
        rows = d[key]
        assert [r["query_set"] for r in rows] == list(QUERY_SETS)
        assert all(set(r) == ROW_KEYS for r in rows)
    assert d["oracle"]["label_queries"] == d["sizes"]["train"] == 600
    assert d["sizes"] == {"train": 600, "test": 200, "adversarial": 200, "uniform": 400}
    assert len(d["runs"]) == 4 * 3
    assert {"init_seed", "order_seed", "test_accuracy", "weights_sha256"} <= set(d["runs"][0])
    row = result.table_rows("vs_oracle")[0]
    assert row["same_sgd"] == pytest.approx(result.vs_oracle["same_sgd"]["test"]["mean"])


def test_chance_corrected_agreement_by_hand():
    a = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
    assert chance_corrected_agreement(a, a) == 1.0
    # Agreeing 90% of the time by always answering the majority class is no better than chance.
    assert chance_corrected_agreement(a, np.zeros(10, dtype=np.int64)) == 0.0
    # p_o = 0.5, p_e = 0.5 * 0.5 + 0.5 * 0.5 = 0.5 -> 0; p_o = 0 -> -1.
    assert chance_corrected_agreement(np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1])) == 0.0
    assert chance_corrected_agreement(np.array([0, 1]), np.array([1, 0])) == -1.0
    assert np.isnan(chance_corrected_agreement(np.zeros(3, int), np.zeros(3, int)))
    with pytest.raises(ValueError, match="match"):
        chance_corrected_agreement(np.zeros(3, int), np.zeros(4, int))


def test_kappa_is_recorded_per_run_and_summarised(result):
    for r in result.runs:
        assert set(r.kappa_with_oracle) == set(QUERY_SETS)
        assert all(-1.0 <= v <= 1.0 for v in r.kappa_with_oracle.values())
    same = [r for r in result.runs if r.setting == "same_sgd"]
    assert result.kappa_vs_oracle["same_sgd"]["test"]["mean"] == pytest.approx(
        np.mean([r.kappa_with_oracle["test"] for r in same]))
    with pytest.raises(ValueError, match="measure must be one of"):
        result.agreement("bogus")


def test_pairwise_agreement_by_hand():
    p = np.array([[0, 1, 2, 3], [0, 1, 2, 0], [1, 1, 0, 0]])
    assert pairwise_agreement(p).tolist() == [0.75, 0.25, 0.5]
    assert pairwise_agreement(p[:1]).size == 0


def test_residual_variants(digits_splits):
    train, test = digits_splits
    exp = LimitsExperiment(train, test, LimitsConfig(**{**SMALL, "epochs": 2}))
    rows = exp.residual([ResidualVariant("repeat"), ResidualVariant("ulp", init_ulps=1),
                         ResidualVariant("2 threads", threads=2)])
    repeat, ulp, threads = rows
    assert repeat["bit_identical_to_reference"] and repeat["max_abs_weight_difference"] == 0
    assert not ulp["bit_identical_to_reference"] and ulp["max_abs_weight_difference"] > 0
    assert threads["agreement_with_reference"]["test"] > 0.9


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"settings": ("same_init", "bogus")}, "unknown settings"),
        ({"models_per_setting": 0}, "models_per_setting"),
        ({"seed_base": 0}, "seed_base"),
        ({"eps": 2.0}, "eps"),
        ({"arch": "resnet"}, "unknown arch"),
        ({"train_size": 1}, "train_size"),
    ],
)
def test_bad_config_is_refused(digits_splits, change, message):
    train, test = digits_splits
    with pytest.raises(ValueError, match=message):
        LimitsExperiment(train, test, LimitsConfig(**change))


def test_mismatched_splits_are_refused(digits_splits):
    train, _ = digits_splits
    bad = Dataset(name="tiny", split="test", images=np.zeros((4, 1, 4, 4), dtype=np.uint8),
                  labels=np.arange(4, dtype=np.int64), classes=tuple("abcd"), pixel_max=255,
                  source="test", verified=False)
    with pytest.raises(ValueError, match="do not match"):
        LimitsExperiment(train, bad)


# -- CLI and benchmark -----------------------------------------------------------------------

def test_cli_limits(tmp_path):
    path = tmp_path / "limits.json"
    res = CliRunner().invoke(app, [
        "limits", "--models", "2", "--epochs", "2", "--width", "32", "--uniform", "200",
        "--train-size", "300", "--test-size", "100", "--no-progress", "--json", str(path)])
    assert res.exit_code == 0, res.output
    assert "Same SGD" in res.output and "adversarial" in res.output and "pairwise" in res.output
    d = json.loads(path.read_text())
    assert all(set(r) == ROW_KEYS for r in d["table_vs_oracle"])
    assert d["config"]["models_per_setting"] == 2


def test_cli_limits_bad_option_exits_2():
    res = CliRunner().invoke(app, ["limits", "--models", "0", "--no-progress"])
    assert res.exit_code == 2
    assert "models_per_setting" in res.output


def test_benchmark_writes_rows(tmp_path, monkeypatch):
    """The script as ``python benchmarks/limits.py ...`` runs it (``__main__``, ``sys.argv``),
    in this process: a child interpreter would only add its start-up and imports."""
    path = tmp_path / "rows.json"
    md = tmp_path / "table.md"
    script = ROOT / "benchmarks" / "limits.py"
    monkeypatch.setattr(sys, "argv", [
        str(script), "--quick", "--models", "2", "--epochs", "2", "--width", "32",
        "--train-size", "300", "--test-size", "100", "--uniform", "100", "--no-residual",
        "--json", str(path), "--markdown", str(md)])
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script), run_name="__main__")
    d = json.loads(path.read_text())
    assert [r["query_set"] for r in d["rows"]] == list(QUERY_SETS)
    assert all(set(r) == ROW_KEYS for r in d["rows"] + d["pairwise_rows"] + d["kappa_rows"])
    assert all(0.0 <= r[s] <= 1.0 for r in d["rows"] for s in SETTINGS)
    assert "Init & SGD" in md.read_text()
