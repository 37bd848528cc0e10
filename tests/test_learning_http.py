"""Learning-based extraction (§4) through the HTTP server gives the in-process result (issue 6):
same labelled queries, same substitute, same metrics, the same number of paid queries."""

import numpy as np
import pytest
import torch

from model_extraction.attacks.learning import extract_learning
from model_extraction.attacks.learning.experiment import evaluation_split, prepare_victim
from model_extraction.datasets import load_dataset
from model_extraction.defenses import OutputPolicy
from model_extraction.oracle import ModelOracle
from model_extraction.remote import RemoteOracle
from model_extraction.serving import ServerThread, create_app


@pytest.fixture(scope="module")
def setting():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    victim = prepare_victim(train, test, arch="mlp", options={"hidden": 32}, epochs=20)
    yield victim, train, evaluation_split(victim, test)
    torch.set_num_threads(before)


@pytest.mark.parametrize("output", ["probabilities", "top_k", "label"])
def test_learning_extraction_over_http_equals_in_process(setting, output):
    victim, pool, test = setting
    options = dict(method="supervised", steps=60, test=test, eval_every=20, arch="mlp",
                   arch_options={"hidden": 32}, seed=3, num_classes=10)
    local = ModelOracle(victim, output=output, k=5, budget=150)
    expected = extract_learning(local, pool, queries=150, **options)
    with ServerThread(create_app(victim, policy=OutputPolicy(kind=output, k=5))) as server, \
            RemoteOracle(server.url, model="victim", output_kind=output, budget=150,
                         batch_size=64) as remote:
        got = extract_learning(remote, pool, queries=150, **options)
        assert remote.paid == remote.queries == local.queries == 150
    np.testing.assert_array_equal(got.labelled.indices, expected.labelled.indices)
    assert got.metrics() == expected.metrics()
    for a, b in zip(got.substitute.state_dict().values(),
                    expected.substitute.state_dict().values(), strict=True):
        assert torch.equal(a, b)
