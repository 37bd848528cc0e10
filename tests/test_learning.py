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
from model_extraction.attacks.learning.evaluate import evaluate
from model_extraction.attacks.learning.experiment import evaluation_split, prepare_victim
from model_extraction.attacks.learning.mixmatch import (
    frozen_batchnorm_statistics,
    train_mixmatch,
    update_ema,
)
from model_extraction.attacks.learning.query import LabelledQueries
from model_extraction.cli import app
from model_extraction.datasets import load_dataset
from model_extraction.models import build_model
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


def test_learn_command_writes_a_report(tmp_path):
    out = tmp_path / "learn.json"
    res = CliRunner().invoke(app, [
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
    res = CliRunner().invoke(app, [*base, "--device", "auto"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, [*base, "--device", "cuda"])
    assert res.exit_code == 2
    assert "no CUDA GPU" in res.output and "--device cpu or auto" in res.output
    res = CliRunner().invoke(app, [*base, "--device", "tpu"])
    assert res.exit_code == 2 and "unknown device 'tpu'" in res.output
    with pytest.raises(ValueError, match="no CUDA GPU"):
        LearningExtraction(method="supervised", device="cuda", **MLP)
    assert resolve_device("auto") == resolve_device("CPU") == "cpu"
    assert LearningExtraction(device="auto", **MLP).device == "cpu"


def test_learn_command_refuses_a_budget_larger_than_the_pool():
    res = CliRunner().invoke(app, ["learn", "--budget", "5000", "--victim-epochs", "2",
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
