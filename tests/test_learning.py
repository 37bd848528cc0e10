"""Learning-based extraction (§4): queries, targets, augmentations, the three training loops, the
entry point and its errors. Digits and small MLPs, so the whole file runs in well under a
minute on a shared 2-core CPU."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from model_extraction.attacks.learning import (
    Augmentation,
    Checkpoint,
    EvaluationSet,
    LearningExtraction,
    Metrics,
    MixMatchConfig,
    default_augmentation,
    extract_learning,
    median_of_last,
    mixup,
    query_pool,
    random_crop,
    random_flip,
    rotate,
    select_queries,
    sharpen,
    targets_from_outputs,
    topk_agreement,
)
from model_extraction.attacks.learning import mixmatch as mixmatch_module
from model_extraction.attacks.learning.evaluate import evaluate
from model_extraction.attacks.learning.experiment import evaluation_split, prepare_victim
from model_extraction.attacks.learning.loop import Regularisation, Regulariser
from model_extraction.attacks.learning.mixmatch import (
    frozen_batchnorm_statistics,
    train_mixmatch,
    update_ema,
)
from model_extraction.attacks.learning.query import FIRST_BATCH, LabelledQueries, read_answers
from model_extraction.datasets import load_dataset
from model_extraction.defenses import OutputPolicy
from model_extraction.models import build_model
from model_extraction.network import ReLUNetwork
from model_extraction.oracle import (
    BudgetExhaustedError,
    CallableOracle,
    ModelOracle,
    OracleOutputError,
    OutputKind,
)
from model_extraction.training import predict, resolve_device, seeded
from model_extraction.victims import TorchVictim

MLP = {"arch": "mlp", "arch_options": {"hidden": 64}}


@pytest.fixture(autouse=True)
def one_thread():
    """Training on a shared CPU is many times faster on one thread than on contended two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits_split():
    return load_dataset("digits", "train"), load_dataset("digits", "test")


@pytest.fixture(scope="module")
def victim(digits_split) -> TorchVictim:
    torch.set_num_threads(1)
    train, test = digits_split
    return prepare_victim(train, test, arch="mlp", options={"hidden": 64}, epochs=40)


@pytest.fixture(scope="module")
def test_set(victim, digits_split) -> EvaluationSet:
    return evaluation_split(victim, digits_split[1])


# --- queries and targets --------------------------------------------------------------------


def test_select_queries_is_a_seeded_subset_of_distinct_indices():
    a = select_queries(100, 30, seed=1)
    assert len(np.unique(a)) == 30 and a.min() >= 0 and a.max() < 100
    assert np.array_equal(a, select_queries(100, 30, seed=1))
    assert not np.array_equal(a, select_queries(100, 30, seed=2))


def test_top_k_answers_spread_the_missing_mass_over_unrevealed_classes():
    answers = np.array([[0.6, 0.0, 0.3, 0.0, 0.0]])
    targets, labels, k = targets_from_outputs(answers, "top_k", k=2)
    np.testing.assert_allclose(targets[0], [0.6, 0.1 / 3, 0.3, 0.1 / 3, 0.1 / 3], rtol=1e-6)
    assert labels.tolist() == [0] and k == 5
    with pytest.raises(OracleOutputError, match="revealed up to 3"):
        targets_from_outputs(np.array([[0.5, 0.2, 0.1, 0.0]]), "top_k", k=2)


def test_label_answers_become_one_hot_and_are_checked():
    targets, labels, _ = targets_from_outputs(np.array([[2], [0]]), "label", num_classes=3)
    assert targets.tolist() == [[0, 0, 1], [1, 0, 0]] and labels.tolist() == [2, 0]
    with pytest.raises(OracleOutputError, match="outside 0..2"):
        targets_from_outputs(np.array([[3]]), "label", num_classes=3)
    with pytest.raises(OracleOutputError, match="not integers"):
        targets_from_outputs(np.array([[0.5]]), "label", num_classes=3)


def test_model_oracle_views_give_consistent_targets(victim, digits_split):
    pool = digits_split[0].to_float()
    runs = {out: query_pool(ModelOracle(victim, output=out, k=5), pool, 50, seed=3)
            for out in ("probabilities", "top_k", "label")}
    same = runs["probabilities"].labels
    for out, labelled in runs.items():
        assert labelled.targets.shape == (50, 10)
        np.testing.assert_allclose(labelled.targets.sum(axis=1), 1.0, rtol=1e-5)
        assert np.array_equal(labelled.labels, same), out
    assert runs["top_k"].k == 5 and runs["label"].hard
    # Top-5 keeps the five largest probabilities exactly.
    probs, top = runs["probabilities"].targets, runs["top_k"].targets
    kept = np.argsort(-probs, axis=1)[:, :5]
    np.testing.assert_allclose(np.take_along_axis(top, kept, 1),
                               np.take_along_axis(probs, kept, 1), rtol=1e-5)


# --- imperfect APIs: rounded answers are used, garbage is refused after a small first batch ----


def _rounded_api(victim, decimals=2, budget=None, blank=None):
    """The victim behind the project's rounding defence (probabilities rounded to
    ``decimals``); ``blank(x)`` marks rows the API answers with all zeros."""
    policy = OutputPolicy(kind="probabilities", decimals=decimals)

    def api(x):
        out = policy.apply(victim.logits(x))
        if blank is not None:
            out[blank(x)] = 0.0
        return out

    return CallableOracle(api, input_dim=64, output_kind="probabilities", budget=budget)


def test_rounded_rows_are_renormalised_and_unusable_rows_said_why():
    answers = read_answers(np.array([[0.33, 0.33, 0.33], [0.5, 0.51, 0.0], [0.0, 0.0, 0.0],
                                     [0.4, 0.3, 0.0]]), "probabilities")
    assert answers.usable.tolist() == [True, True, False, False]
    np.testing.assert_allclose(answers.targets[0], [1 / 3] * 3, rtol=1e-6)
    np.testing.assert_allclose(answers.targets[1], [0.5 / 1.01, 0.51 / 1.01, 0], rtol=1e-6)
    assert answers.labels.tolist()[:2] == [0, 1] and "every probability is 0" in answers.problem
    # Unrounded answers keep the tight tolerance; logits are told apart from rounding.
    assert not read_answers(np.array([[0.333, 0.333, 0.3231]]), "probabilities").usable[0]
    logits = read_answers(np.array([[2.5, -1.0, 0.3]]), "probabilities")
    assert not logits.usable[0] and "declare output='logits'" in logits.problem
    with pytest.raises(OracleOutputError, match="do not sum to 1 even allowing for rounding"):
        targets_from_outputs(np.array([[0.4, 0.3, 0.0]]), "probabilities")


def test_probabilities_rounded_to_two_decimals_are_learned_from(victim, digits_split, test_set):
    pool = digits_split[0].to_float()
    raw = _rounded_api(victim)(pool.reshape(len(pool), -1)[:200])
    sums = raw.sum(axis=1)
    assert np.any(np.abs(sums - 1) > 1e-3) and np.all(np.abs(sums - 1) <= 0.05)  # truly rounded
    oracle = _rounded_api(victim, budget=100)
    result = LearningExtraction(method="supervised", steps=100, **MLP).run(
        oracle, pool, queries=100, num_classes=10, test=test_set)
    assert oracle.queries == result.queries == len(result.labelled) == 100
    np.testing.assert_allclose(result.labelled.targets.sum(axis=1), 1.0, rtol=1e-5)
    exact = query_pool(ModelOracle(victim, output="probabilities"), pool, 100)
    assert np.mean(result.labelled.labels == exact.labels) > 0.95
    assert result.metrics().accuracy > 0.6


def test_garbage_api_is_refused_after_the_first_small_batch(victim, digits_split):
    pool = digits_split[0].to_float()
    rng = np.random.default_rng(0)
    for garbage, why in ((lambda x: rng.normal(size=(len(x), 10)), "look like logits"),
                         (lambda x: rng.random((len(x), 10)), "do not sum to 1")):
        oracle = CallableOracle(garbage, input_dim=64, output_kind="probabilities", budget=500)
        with pytest.raises(OracleOutputError, match=why) as err:
            extract_learning(oracle, pool, queries=500, method="supervised", steps=5, **MLP)
        assert oracle.queries == FIRST_BATCH == 32 and oracle.remaining == 468
        assert f"first batch of {FIRST_BATCH} queries" in str(err.value)
        assert "other 468 of the budget of 500 were not spent" in str(err.value)
    labels_api = CallableOracle(lambda x: np.full((len(x), 1), 12), input_dim=64,
                                output_kind="label")
    with pytest.raises(OracleOutputError, match="outside 0..9"):
        query_pool(labels_api, pool, 300, num_classes=10)
    assert labels_api.queries == FIRST_BATCH


def test_unusable_answers_after_the_first_batch_label_nothing_and_are_counted(victim,
                                                                             digits_split):
    """A row rounded to all zeros is not refused once the budget is being spent: its input
    stays unlabeled, the query is counted, a warning says how many."""
    pool = digits_split[0].to_float()
    blank = lambda x: np.round(x.sum(axis=1) * 100).astype(int) % 7 == 0  # noqa: E731
    oracle = _rounded_api(victim, budget=300, blank=blank)
    with pytest.warns(UserWarning, match=r"of 300 answers were unusable.*every probability"):
        result = extract_learning(oracle, pool, queries=300, method="mixmatch", steps=3, **MLP)
    dropped = result.labelled.unusable
    assert 15 < len(dropped) < 80 and oracle.queries == result.queries == 300
    assert len(result.labelled) + len(dropped) == 300
    assert not np.intersect1d(dropped, result.labelled.indices).size
    assert np.all(blank(pool[dropped].reshape(len(dropped), -1)))
    assert result.summary()["unusable_answers"] == len(dropped)


# --- the oracle forms of functional extraction: an Oracle, a network, a plain callable --------


def test_a_network_or_a_plain_callable_is_taken_as_the_oracle(victim, digits_split, test_set):
    pool = digits_split[0].to_float()
    network = ReLUNetwork.random(64, 16, 10, seed=0)
    result = extract_learning(network, pool, queries=60, method="supervised", steps=20, **MLP)
    assert result.queries == 60 and result.output_kind == "logits"
    exact = np.argmax(network.logits(pool.reshape(len(pool), -1)[result.labelled.indices]), 1)
    assert np.array_equal(result.labelled.labels, exact)
    result = extract_learning(victim.logits, pool, queries=150, method="supervised", steps=100,
                              output="logits", test=test_set, **MLP)
    assert result.queries == 150 and result.metrics().accuracy > 0.6
    with pytest.raises(ValueError, match="does not say what it returns; pass output="):
        extract_learning(victim.logits, pool, queries=150, method="supervised", **MLP)


# --- bad input: each a clear error, nothing queried --------------------------------------------


def test_budget_larger_than_pool_is_refused_before_querying(victim):
    oracle = ModelOracle(victim, output="label")
    with pytest.raises(ValueError, match="larger than the pool of 20"):
        query_pool(oracle, np.zeros((20, 1, 8, 8), np.float32), 21)
    assert oracle.queries == 0


def test_empty_pool_is_refused(victim):
    oracle = ModelOracle(victim, output="label")
    with pytest.raises(ValueError, match="pool is empty"):
        extract_learning(oracle, np.zeros((0, 1, 8, 8), np.float32), queries=1, **MLP)
    assert oracle.queries == 0


def test_inputs_of_the_wrong_shape_are_refused(victim):
    oracle = ModelOracle(victim, output="probabilities")
    with pytest.raises(ValueError, match="victim takes 64 values"):
        query_pool(oracle, np.zeros((30, 1, 7, 7), np.float32), 10)
    with pytest.raises(ValueError, match=r"victim takes images of shape \(1, 8, 8\)"):
        query_pool(oracle, np.zeros((30, 4, 4, 4), np.float32), 10)
    with pytest.raises(ValueError, match="pool must be images"):
        query_pool(oracle, np.zeros((30, 64), np.float32), 10)
    assert oracle.queries == 0


def test_promised_probabilities_that_are_not_distributions_are_refused(victim):
    logits_api = CallableOracle(victim.logits, input_dim=64, output_kind="probabilities")
    with pytest.raises(OracleOutputError, match="not .* probability distribution"):
        query_pool(logits_api, np.random.default_rng(0).random((30, 1, 8, 8)), 10)
    # Declared honestly as logits, the same API is usable.
    honest = CallableOracle(victim.logits, input_dim=64, output_kind="logits")
    labelled = query_pool(honest, np.random.default_rng(0).random((30, 1, 8, 8)), 10)
    np.testing.assert_allclose(labelled.targets.sum(axis=1), 1.0, rtol=1e-5)


def test_oracle_budget_too_small_raises_before_any_query(victim):
    oracle = ModelOracle(victim, output="label", budget=40)
    with pytest.raises(BudgetExhaustedError, match="nothing was queried"):
        query_pool(oracle, np.zeros((100, 1, 8, 8), np.float32), 50)
    assert oracle.queries == 0


def test_label_oracle_without_class_count_and_undeclared_oracle(victim):
    labels_api = CallableOracle(victim.predict, input_dim=64, output_kind="label")
    with pytest.raises(ValueError, match="pass num_classes"):
        query_pool(labels_api, np.zeros((10, 1, 8, 8), np.float32), 5)
    undeclared = CallableOracle(victim.predict, input_dim=64)
    with pytest.raises(ValueError, match="does not say what it returns"):
        query_pool(undeclared, np.zeros((10, 1, 8, 8), np.float32), 5)
    assert labels_api.queries == undeclared.queries == 0
    labelled = query_pool(labels_api, np.zeros((10, 1, 8, 8), np.float32), 5, num_classes=10)
    assert labelled.targets.shape == (5, 10)


def test_configuration_errors():
    with pytest.raises(ValueError, match="method must be one of"):
        LearningExtraction(method="fixmatch")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rotation loss"):
        LearningExtraction(method="mixmatch", rotation=True)
    with pytest.raises(ValueError, match="temperature"):
        MixMatchConfig(temperature=0)
    with pytest.raises(ValueError, match="cannot build the substitute 'resnet'"):
        LearningExtraction(arch="resnet")
    with pytest.raises(ValueError, match="cannot build the substitute 'mlp'"):
        LearningExtraction(arch="mlp", arch_options={"width": 8})
    with pytest.raises(ValueError, match="0 <= ema_decay < 1"):
        LearningExtraction(ema_decay=1.0, **MLP)


# --- augmentations, rotation, MixMatch pieces, metrics ----------------------------------------


def test_random_crop_takes_windows_of_the_reflect_padded_image():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    out = random_crop(x, gen, 2)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    offsets = []
    for i in range(64):
        hits = [(a, b) for a in range(5) for b in range(5)
                if torch.equal(out[i], padded[i, :, a:a + 8, b:b + 8])]
        assert len(hits) == 1
        offsets.append(hits[0])
    assert len(set(offsets)) > 10  # an independent offset per image
    assert torch.equal(random_crop(x, gen, 0), x)
    with pytest.raises(ValueError, match="smaller than the image"):
        random_crop(x, gen, 8)


def test_random_flip_mirrors_about_half_of_the_images():
    x = torch.rand(200, 1, 4, 4)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x, strict=True)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x, strict=True)])
    assert bool((flipped | kept).all()) and 70 < int(flipped.sum()) < 130


def test_default_augmentation_flips_only_where_classes_allow():
    assert default_augmentation((3, 32, 32), "cifar10") == Augmentation(4, flip=True)
    assert default_augmentation((1, 28, 28), "mnist") == Augmentation(2, flip=False)
    assert default_augmentation((1, 8, 8), "digits").flip is False


def test_rotate_applies_a_quarter_turn_per_image():
    x = torch.rand(5, 2, 6, 6)
    turns = torch.tensor([0, 1, 2, 3, 1])
    out = rotate(x, turns)
    for i in range(5):
        assert torch.equal(out[i], torch.rot90(x[i], int(turns[i]), dims=(1, 2)))
    assert torch.equal(rotate(rotate(x, turns), (4 - turns) % 4), x)
    with pytest.raises(ValueError, match="square"):
        rotate(torch.rand(2, 1, 4, 5), torch.tensor([0, 1]))


def test_sharpen_and_mixup():
    p = torch.tensor([[0.5, 0.3, 0.2]])
    q = sharpen(p, 0.5)
    torch.testing.assert_close(q, p**2 / (p**2).sum())
    assert q[0, 0] > p[0, 0]
    x, y = torch.eye(4), torch.eye(4)
    mx, my = mixup(x, y, 0.2, torch.Generator().manual_seed(0))
    # lambda' = max(0.2, 0.8): each row keeps at least 0.8 of itself.
    assert bool((mx.diagonal() >= 0.8 - 1e-6).all())
    torch.testing.assert_close(mx, my)


def test_mixup_draws_its_weight_per_example():
    x, y = torch.eye(6), torch.eye(6)
    lam = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7, 0.95])
    mx, my = mixup(x, y, lam, torch.Generator().manual_seed(1))
    own = torch.maximum(lam, 1 - lam)
    moved = mx.diagonal() < 1  # rows mixed with another row keep exactly lambda' of themselves
    torch.testing.assert_close(mx.diagonal()[moved], own[moved])
    assert int(moved.sum()) >= 3
    torch.testing.assert_close(mx, my)
    with pytest.raises(ValueError, match="one per example"):
        mixup(x, y, torch.rand(4), torch.Generator())


def test_mixmatch_draws_one_mixup_weight_per_example(monkeypatch):
    seen = []

    def spy(x, y, lam, generator):
        seen.append(torch.as_tensor(lam))
        return x, y

    monkeypatch.setattr(mixmatch_module, "mixup", spy)
    with seeded(0):
        model = build_model("mlp", (1, 8, 8), 3, hidden=8)
    labels = np.arange(8) % 3
    labelled = LabelledQueries(np.arange(8), np.eye(3, dtype=np.float32)[labels], labels,
                               OutputKind.LABEL, 3)
    train_mixmatch(model, torch.rand(40, 1, 8, 8), labelled, torch.arange(8, 40), steps=2,
                   batch_size=8)
    assert len(seen) == 2 and all(lam.shape == (8 + 2 * 8,) for lam in seen)
    assert len(torch.unique(seen[0])) > 1


def test_regulariser_decays_matrices_and_averages_the_weights():
    with seeded(0):
        model = build_model("mlp", (1, 4, 4), 3, hidden=5)
    reg = Regulariser(model, Regularisation(weight_decay=0.5, ema_decay=0.9), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    average = reg.model
    assert average is not model
    reg(1)  # w <- w (1 - 0.5 * 0.1) on matrices; the average moves by 1 - min(0.9, 2/11)
    for name, value in model.state_dict().items():
        factor = 0.95 if value.ndim > 1 else 1.0
        torch.testing.assert_close(value, factor * before[name])
        w = 2 / 11
        torch.testing.assert_close(average.state_dict()[name],
                                   w * before[name] + (1 - w) * factor * before[name])
    assert Regulariser(model, Regularisation(ema_decay=0.0), lr=0.1).model is model


@pytest.mark.parametrize("method, rotation", [("supervised", False), ("supervised", True),
                                              ("mixmatch", False)])
def test_every_method_trains_with_the_same_regularisers(monkeypatch, victim, digits_split,
                                                        method, rotation):
    """Weight decay and the moving average come from one place for all three loops; the
    substitute returned is the moving average, not the live model."""
    calls, averages = [], []
    original = Regulariser.__call__

    def spy(self, step):
        calls.append(step)
        averages.append(self.model)
        assert self.settings == Regularisation(0.02, 0.999) and self.model is not self.live
        original(self, step)

    monkeypatch.setattr(Regulariser, "__call__", spy)
    result = extract_learning(ModelOracle(victim, output="label"), digits_split[0], queries=64,
                              method=method, rotation=rotation, steps=4, **MLP)
    assert calls == list(range(1, result.steps + 1))
    assert result.substitute is averages[-1]
    assert result.config["weight_decay"] == 0.02 and result.config["ema_decay"] == 0.999


def test_topk_agreement_and_median_of_last_checkpoints():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    assert topk_agreement(logits, [1, 0], 1) == 0.0
    assert topk_agreement(logits, [1, 0], 2) == 0.5
    assert topk_agreement(logits, [1, 0], 3) == 1.0
    history = [Checkpoint(s, Metrics(accuracy=a, fidelity=a + 0.1))
               for s, a in enumerate([0.1, 0.9, 0.5, 0.7, 0.6])]
    summary = median_of_last(history, 3)
    assert summary.accuracy == 0.6 and summary.fidelity == pytest.approx(0.7)
    assert summary.top5_accuracy is None
    assert median_of_last(history, 20).accuracy == 0.6
    with pytest.raises(ValueError, match="no checkpoints"):
        median_of_last([])


# --- the attacks, end to end ------------------------------------------------------------------


def test_supervised_extraction_learns_and_spends_exactly_its_budget(victim, digits_split,
                                                                      test_set):
    oracle = ModelOracle(victim, output="probabilities", budget=200)
    result = extract_learning(oracle, digits_split[0], method="supervised", steps=150,
                              test=test_set, eval_every=10, **MLP)
    assert oracle.queries == result.queries == 200 == oracle.budget
    assert result.steps >= 150 and len(result.history) >= 15
    m = result.metrics()
    assert m.accuracy > 0.6 and m.fidelity > 0.6  # chance is 0.1
    assert m.top5_accuracy >= m.accuracy and m.top5_fidelity >= m.fidelity
    assert result.summary()["metrics"]["accuracy"] == m.accuracy
    json.dumps(result.summary())


def test_mixmatch_learns_and_its_unlabeled_loss_sharpens_predictions(victim, digits_split,
                                                                     test_set):
    """MixMatch reaches far above chance (a collapse to one class gives 0.1) and its unlabeled
    term does what it is for: lower prediction entropy on the unlabeled pool than the same run
    with lambda_U = 0 (measured 0.49-0.55 vs 0.59-0.66 nats over four seeds)."""
    pool = digits_split[0].to_float()

    def run(lambda_u: float):
        oracle = ModelOracle(victim, output="label", budget=100)
        result = extract_learning(oracle, digits_split[0], method="mixmatch", steps=300,
                                  test=test_set, arch="mlp", arch_options={"hidden": 128},
                                  mixmatch=MixMatchConfig(lambda_u=lambda_u))
        assert oracle.queries == result.queries == 100
        unlabeled = np.setdiff1d(np.arange(len(pool)), result.labelled.indices)
        p = torch.softmax(predict(result.substitute, pool[unlabeled]), dim=1)
        return result, float(-(p * p.clamp_min(1e-12).log()).sum(dim=1).mean())

    mixmatch, entropy = run(75.0)
    _, entropy_without = run(0.0)
    assert mixmatch.metrics().accuracy > 0.7 and mixmatch.metrics().fidelity > 0.7
    assert entropy < entropy_without - 0.05


def test_rotation_loss_trains_and_the_substitute_saves_without_its_head(
    victim, digits_split, test_set, tmp_path
):
    oracle = ModelOracle(victim, output="top_k", k=5, budget=100)
    attack = LearningExtraction(method="supervised", rotation=True, steps=100, eval_every=25,
                                **MLP)
    result = attack.run(oracle, digits_split[0], test=test_set)
    assert oracle.queries == 100 and result.steps == 100 and len(result.history) == 4
    assert result.metrics().accuracy > 0.4
    path = tmp_path / "substitute.safetensors"
    result.save(path)
    loaded = TorchVictim.load(path)
    x = digits_split[1].to_float()
    assert np.array_equal(loaded.predict(x.reshape(len(x), -1)), result.predict(x))
    assert loaded.metadata["queries"] == 100


def test_whole_pool_queried_leaves_nothing_for_mixmatch_and_nothing_is_spent(victim):
    pool = np.random.default_rng(0).random((40, 1, 8, 8)).astype(np.float32)
    oracle = ModelOracle(victim, output="label")
    with pytest.raises(ValueError, match="needs unlabeled inputs.*nothing was queried"):
        extract_learning(oracle, pool, queries=40, method="mixmatch", steps=2, **MLP)
    with pytest.raises(ValueError, match="rotation loss needs unlabeled"):
        extract_learning(oracle, pool, queries=40, method="supervised", rotation=True, steps=2,
                         **MLP)
    assert oracle.queries == 0


def test_small_cnn_substitute_runs(victim, digits_split):
    result = extract_learning(ModelOracle(victim, output="label"), digits_split[0], queries=64,
                              method="mixmatch", steps=3, arch="cnn",
                              arch_options={"width": 4})
    assert result.steps == 3 and result.history == [] and result.final is None
    assert result.predict(digits_split[1].to_float()[:5]).shape == (5,)


def test_small_cnn_has_batch_norm_by_default_and_keeps_its_split():
    with seeded(0):
        bn = build_model("cnn", (1, 8, 8), 10, width=4)
        plain = build_model("cnn", (1, 8, 8), 10, width=4, batchnorm=0)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules()) == 4
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    x = torch.rand(5, 1, 8, 8)
    for model in (bn, plain):
        model.eval()
        assert model.features(x).shape == (5, model.feature_dim)
        assert torch.equal(model.classifier(model.features(x)), model(x))


def test_plain_cnn_saved_without_the_batchnorm_option_still_loads(tmp_path):
    """Files written before SmallCNN had batch norm carry no ``batchnorm`` option."""
    with seeded(0):
        model = build_model("cnn", (1, 8, 8), 3, width=4, batchnorm=0)
    spec = {"arch": "cnn", "input_shape": [1, 8, 8], "num_classes": 3, "options": {"width": 4}}
    TorchVictim(model, spec).save(tmp_path / "old.safetensors")
    loaded = TorchVictim.load(tmp_path / "old.safetensors")
    x = np.random.default_rng(0).random((4, 64))
    assert np.array_equal(loaded.logits(x), TorchVictim(model, spec).logits(x))


def test_ema_averages_batch_norm_statistics_and_copies_the_counter():
    with seeded(0):
        model = build_model("cnn", (1, 8, 8), 3, width=4)
    ema = copy.deepcopy(model)
    model.train()
    model(torch.rand(16, 1, 8, 8) + 3.0)  # moves the running statistics
    bn_live = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn_ema = next(m for m in ema.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn_ema.running_mean.clone()
    update_ema(ema, model, 0.75)
    assert torch.allclose(bn_ema.running_mean, 0.75 * before + 0.25 * bn_live.running_mean)
    assert int(bn_ema.num_batches_tracked) == int(bn_live.num_batches_tracked) == 1


def test_frozen_batchnorm_statistics_normalise_with_the_batch_but_keep_running_stats():
    with seeded(0):
        model = build_model("cnn", (1, 8, 8), 3, width=4)
    model.train()
    x = torch.rand(16, 1, 8, 8) + 3.0
    before = copy.deepcopy(model.state_dict())
    with torch.no_grad(), frozen_batchnorm_statistics(model):
        inside = model(x)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    with torch.no_grad():
        assert torch.allclose(inside, model(x))  # the same batch statistics normalised it
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert int(bn.num_batches_tracked) == 1  # outside, the pass updates them


def test_mixmatch_guessing_pass_leaves_batch_norm_statistics_alone():
    """Only the training forward pass updates the running statistics (MixMatch's reference
    skips the guessing passes' updates): one step, one update, whatever ``K``."""
    with seeded(0):
        model = build_model("cnn", (1, 8, 8), 3, width=4)
    pool = torch.rand(40, 1, 8, 8)
    labels = np.arange(8) % 3
    labelled = LabelledQueries(np.arange(8), np.eye(3, dtype=np.float32)[labels], labels,
                               OutputKind.LABEL, 3)
    trained = train_mixmatch(model, pool, labelled, torch.arange(8, 40), steps=1, batch_size=8,
                             config=MixMatchConfig(augmentations=3))
    for m in (model, trained.model):
        bn = next(b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d))
        assert int(bn.num_batches_tracked) == 1


def test_mixmatch_with_batch_norm_evaluates_its_average_in_eval_mode(victim, digits_split,
                                                                     test_set):
    """The checkpoints evaluate the moving average in eval mode: evaluating the returned model
    again (eval mode, running statistics) gives the last checkpoint exactly, and a batch of one
    is classified as it is inside a larger batch."""
    oracle = ModelOracle(victim, output="label", budget=64)
    result = extract_learning(oracle, digits_split[0], method="mixmatch", steps=20,
                              eval_every=10, test=test_set, arch="cnn",
                              arch_options={"width": 4})
    assert len(result.history) == 2
    assert evaluate(result.substitute, test_set) == result.history[-1].metrics
    x = test_set.images[:8]
    alone = torch.cat([predict(result.substitute, x[i : i + 1]) for i in range(8)])
    assert torch.allclose(alone, predict(result.substitute, x), atol=1e-5)


# --- the command line -------------------------------------------------------------------------


def _app():
    """The typer app, imported here so the rest of this file does not depend on the CLI."""
    from model_extraction.cli import app

    return app


def test_learn_command_writes_a_report(tmp_path):
    out = tmp_path / "learn.json"
    res = CliRunner().invoke(_app(), [
        "learn", "--dataset", "digits", "--method", "supervised", "--budget", "150",
        "--steps", "60", "--victim-epochs", "20", "--output", "top_k", "--no-progress",
        "--json", str(out), "--save-substitute", str(tmp_path / "s.safetensors"),
    ])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["attack"]["queries"] == 150 and report["attack"]["output"] == "top_k"
    assert report["attack"]["metrics"]["accuracy"] > 0.3
    assert report["victim"]["test_accuracy"] > 0.5
    assert (tmp_path / "s.safetensors").exists()


def test_learn_command_device_option(monkeypatch):
    """``--device auto`` trains on the CPU when torch sees no GPU; ``--device cuda`` without a
    GPU, or an unknown device, is a clear error before anything is trained."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    base = ["learn", "--method", "supervised", "--budget", "50", "--steps", "5",
            "--victim-epochs", "2", "--no-progress"]
    res = CliRunner().invoke(_app(), [*base, "--device", "auto"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(_app(), [*base, "--device", "cuda"])
    assert res.exit_code == 2
    assert "no CUDA GPU" in res.output and "--device cpu or auto" in res.output
    res = CliRunner().invoke(_app(), [*base, "--device", "tpu"])
    assert res.exit_code == 2 and "unknown device 'tpu'" in res.output
    with pytest.raises(ValueError, match="no CUDA GPU"):
        LearningExtraction(method="supervised", device="cuda", **MLP)
    assert resolve_device("auto") == resolve_device("CPU") == "cpu"
    assert LearningExtraction(device="auto", **MLP).device == "cpu"


def test_learn_command_refuses_a_budget_larger_than_the_pool():
    res = CliRunner().invoke(_app(), ["learn", "--budget", "5000", "--victim-epochs", "2",
                                   "--no-progress"])
    assert res.exit_code == 2
    assert "larger than the pool" in res.output


# --- the benchmark's bookkeeping (no training) --------------------------------------------------


def _benchmark():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "learning.py"
    spec = importlib.util.spec_from_file_location("learning_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_per_dataset_options_and_seed_aggregation():
    bench = _benchmark()
    args = bench.parse_args(["--datasets", "mnist", "cifar10", "--arch", "mlp", "cifar10=cnn",
                             "--width", "256", "cifar10=16", "--lambda-u", "fashion-mnist=25"])
    mnist, cifar = bench.dataset_config(args, "mnist"), bench.dataset_config(args, "cifar10")
    assert (mnist["arch"], mnist["arch_options"], mnist["lambda_u"]) == ("mlp", {"hidden": 256},
                                                                         75.0)
    assert (cifar["arch"], cifar["arch_options"]) == ("cnn", {"width": 16})
    assert bench.dataset_config(args, "fashion-mnist")["lambda_u"] == 25.0
    with pytest.raises(SystemExit):
        bench.parse_args(["--width", "cifar10=wide"])
    rows = [{"dataset": "mnist", "method": "mixmatch", "rotation": False, "output": "label",
             "queries": 250, "seed": seed, "tables": ["3"], "accuracy": acc, "fidelity": acc,
             "victim_accuracy": 0.98, "evaluated_on": "test"}
            for seed, acc in ((0, 0.90), (1, 0.92), (2, 0.94))]
    (cell,) = bench.aggregate(rows)
    assert cell["seeds"] == [0, 1, 2] and cell["accuracy"]["mean"] == pytest.approx(0.92)
    assert cell["accuracy"]["std"] == pytest.approx(0.02) and cell["fidelity"]["max"] == 0.94
    table = bench.markdown(rows, {"seeds": [0, 1, 2], "table2_outputs": [], "k": 5,
                                  "scale": "test", "seconds": 60, "machine": "here"})
    assert "92.00 ± 2.00 / 92.00 ± 2.00" in table and "mean ± standard deviation" in table


def test_benchmark_chooses_the_augmentation_on_its_validation_rows():
    bench = _benchmark()
    args = bench.parse_args(["--choose-augmentation", "--datasets", "mnist", "--flip", "on",
                             "mnist=off"])
    assert args.validation == 5000 and args.budgets == [1000] and args.tables == ["3"]
    cfg = bench.dataset_config(args, "mnist")
    assert bench.augmentation(cfg, "mnist", (1, 28, 28)) == Augmentation(2, flip=False)
    cfg["crop_padding"], cfg["flip"] = 3, True
    assert bench.augmentation(cfg, "mnist", (1, 28, 28)) == Augmentation(3, flip=True)
    with pytest.raises(SystemExit):
        bench.parse_args(["--flip", "sometimes"])
    accuracy = {(0, False): 0.90, (1, False): 0.93, (2, False): 0.93, (1, True): 0.80}
    rows = [{"dataset": "mnist", "method": m, "queries": 1000, "seed": 0, "crop_padding": p,
             "flip": f, "accuracy": a + (0.01 if m == "mixmatch" else 0.0)}
            for (p, f), a in accuracy.items() for m in ("supervised", "mixmatch")]
    text, choice = bench.choose_augmentation(rows)
    assert choice["mnist"]["crop_padding"] == 1 and choice["mnist"]["flip"] is False  # tie: less
    assert "| 1 | off | 93.00 | 94.00 | 93.50 |" in text
