"""The remote oracle: attacks through HTTP give the in-process results, through faults, kills and
restarts, never paying twice; imprecise outputs are refused, not silently extracted."""

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from fastapi import FastAPI, Request

from model_extraction.attacks.functional import extract_functional
from model_extraction.defenses import OutputPolicy
from model_extraction.evaluation import compare_networks
from model_extraction.network import ReLUNetwork
from model_extraction.oracle import (
    BudgetExhaustedError,
    CallableOracle,
    InsufficientPrecisionError,
    LogitDifferenceOracle,
    ModelOracle,
    OracleOutputError,
    as_oracle,
)
from model_extraction.remote import (
    NotInLogError,
    QueryLog,
    RemoteOracle,
    RemoteOracleError,
    RemoteRefusedError,
    ReplayOracle,
)
from model_extraction.serving import ApiKey, AuditLog, ServerThread, create_app


@pytest.fixture(scope="module")
def reference(trained_victim):
    """In-process functionally-equivalent extraction, and every row it asked."""
    asked = []

    def logits(x):
        asked.append(x.copy())
        return trained_victim.logits(x)

    oracle = CallableOracle(logits, input_dim=trained_victim.input_dim, output_kind="logits")
    result = extract_functional(oracle, seed=0, stay_in_bounds=False)
    rows = np.concatenate(asked)
    return result, len(rows), len(np.unique(rows, axis=0))


def same_network(a: ReLUNetwork, b: ReLUNetwork) -> bool:
    return all(np.array_equal(getattr(a, n), getattr(b, n))
               for n in ("weight0", "bias0", "weight1", "bias1"))


def test_functional_extraction_over_http_equals_in_process(trained_victim, reference, digits):
    ref, queries, _ = reference
    with ServerThread(create_app(trained_victim)) as server, \
            RemoteOracle(f"{server.url}/v2/models/victim") as oracle:
        result = extract_functional(oracle, seed=0, stay_in_bounds=False)
    assert same_network(result.network, ref.network)
    assert result.queries == ref.queries
    assert oracle.queries == oracle.paid == queries
    metrics = compare_networks(trained_victim, result.network, test_inputs=digits[0])
    assert metrics["fidelity_test"] == 1.0


def test_functional_extraction_from_probabilities(trained_victim, digits):
    policy = OutputPolicy(kind="probabilities")
    with ServerThread(create_app(trained_victim, policy=policy)) as server, \
            RemoteOracle(server.url, model="victim", output_kind="probabilities") as remote:
        assert remote.output_name == "probabilities"
        with pytest.raises(ValueError, match="LogitDifferenceOracle"):
            extract_functional(remote, seed=0, stay_in_bounds=False)
        result = extract_functional(LogitDifferenceOracle(remote), seed=0, stay_in_bounds=False)
    x = digits[0]
    z = trained_victim.logits(x)
    # The last layer recovered is the logit differences z_i - z_0: same argmax, same softmax.
    np.testing.assert_allclose(result.network.logits(x), z - z[:, :1], atol=1e-8)
    assert compare_networks(trained_victim, result.network, test_inputs=x)["fidelity_test"] == 1.0


@pytest.mark.parametrize("policy", [
    OutputPolicy(kind="probabilities", decimals=4),
    OutputPolicy(kind="probabilities", noise_sigma=1e-4),
    OutputPolicy(kind="top_k", k=3),
    OutputPolicy(kind="logits", decimals=6),
    OutputPolicy(kind="logits", noise_sigma=1e-8),
], ids=lambda p: p.describe())
def test_rounded_or_noisy_outputs_are_refused_as_insufficient_precision(trained_victim, policy):
    kind = policy.kind.value
    with (
        ServerThread(create_app(trained_victim, policy=policy)) as server,
        RemoteOracle(server.url, model="victim", output_kind=kind) as remote,
        pytest.raises(InsufficientPrecisionError, match="insufficient precision"),
    ):
        oracle = remote if kind == "logits" else LogitDifferenceOracle(remote)
        extract_functional(oracle, seed=0, stay_in_bounds=False)


@pytest.mark.parametrize(("kind", "k"), [("probabilities", 5), ("top_k", 3), ("label", 5)])
def test_probability_top_k_and_label_outputs(trained_victim, kind, k, digits):
    x = digits[0][:300]
    policy = OutputPolicy(kind=kind, k=k)
    with ServerThread(create_app(trained_victim, policy=policy)) as server, \
            RemoteOracle(server.url, model="victim", output_kind=kind, batch_size=64) as remote:
        y = remote(x)
    expected = ModelOracle(trained_victim, output=kind, k=k)(x)
    assert y.dtype == expected.dtype and y.shape == expected.shape
    np.testing.assert_array_equal(y, expected)


class Faults:
    """ASGI middleware failing every third inference request, cycling through fault kinds:
    500, 429 (``Retry-After: 0``), a dropped connection, an answer computed and charged whose
    connection is then dropped, 503, and (once) an answer slower than the client's timeout."""

    KINDS = ("500", "429", "drop", "charge-then-drop", "503", "slow")

    def __init__(self, app, slow: float) -> None:
        self.app, self.slow = app, slow
        self.counter = itertools.count()
        self.seen: list[str] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].endswith("/infer"):
            return await self.app(scope, receive, send)
        i = next(self.counter)
        if i % 3 != 1:
            return await self.app(scope, receive, send)
        kind = self.KINDS[(i // 3) % len(self.KINDS)]
        if kind == "slow" and kind in self.seen:
            kind = "503"  # one timeout is enough (each costs the client's whole timeout)
        self.seen.append(kind)
        if kind == "charge-then-drop":  # the server answers (and charges); the answer is lost

            async def swallow(message):
                pass

            await self.app(scope, receive, swallow)
        if kind in ("drop", "charge-then-drop"):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"1000")]})
            raise ConnectionAbortedError("fault injected: connection dropped")
        if kind == "slow":
            await asyncio.sleep(self.slow)
        status = 503 if kind == "slow" else int(kind)
        headers = [(b"content-type", b"application/json")]
        if kind == "429":
            headers.append((b"retry-after", b"0"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"error": "fault injected"}'})


def test_faults_same_result_and_same_paid_queries(trained_victim, reference):
    ref, queries, _ = reference
    app = create_app(trained_victim, keys=(ApiKey("k", "k"),))
    faulty = Faults(app, slow=0.35)
    with ServerThread(faulty) as server, \
            RemoteOracle(server.url, model="victim", api_key="k", batch_size=256, concurrency=3,
                         timeout=0.3, backoff=0.01, backoff_max=0.1) as oracle:
        result = extract_functional(oracle, seed=0, stay_in_bounds=False)
    assert set(faulty.seen) == set(Faults.KINDS)  # every kind of fault happened
    assert same_network(result.network, ref.network)
    assert oracle.paid == queries == app.state.serving.keyring.used("k")
    assert oracle.retried >= len(faulty.seen)


CHILD = """
import sys
from model_extraction.attacks.functional import extract_functional
from model_extraction.remote import RemoteOracle
oracle = RemoteOracle(sys.argv[1], model="victim", api_key="attacker", log=sys.argv[2],
                      batch_size=64, concurrency=2)
extract_functional(oracle, seed=0, stay_in_bounds=False)
print("finished")
"""


class Slow:
    """ASGI middleware delaying inference requests, so that a kill lands mid-attack."""

    def __init__(self, app, delay: float) -> None:
        self.app, self.delay = app, delay

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].endswith("/infer"):
            await asyncio.sleep(self.delay)
        await self.app(scope, receive, send)


def test_killed_attack_resumes_without_paying_twice_and_replays_offline(
        trained_victim, reference, digits, tmp_path):
    ref, queries, unique = reference
    log, audit_path = tmp_path / "queries.sqlite", tmp_path / "audit.sqlite"
    app = create_app(trained_victim, keys=(ApiKey("attacker", "attacker"),), log_path=audit_path)
    keyring = app.state.serving.keyring
    script = tmp_path / "attack.py"
    script.write_text(CHILD)
    with ServerThread(Slow(app, 0.004)) as server:
        child = subprocess.Popen([sys.executable, str(script), server.url, str(log)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while keyring.used("attacker") < unique // 3 and child.poll() is None:
            assert time.monotonic() < deadline, "the attack did not start"
            time.sleep(0.002)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()
        paid_before = keyring.used("attacker")
        assert 0 < paid_before < unique  # killed mid-attack
        # Same batch size: requests lost in flight get the same ids, and the server's answers.
        with RemoteOracle(server.url, model="victim", api_key="attacker", log=log,
                          batch_size=64, concurrency=2) as oracle:
            result = extract_functional(oracle, seed=0, stay_in_bounds=False)
        assert oracle.cached > 0
        assert keyring.used("attacker") == unique  # nothing paid twice, in flight or not
    # The resumed attack asked the server for the missing rows in other batches than the
    # uninterrupted one, and numpy's matrix product rounds a row differently (by an ulp) in a
    # batch of 3 than in a batch of 64: the same model up to ~1e-12, not bit for bit.
    assert result.queries == ref.queries
    for name in ("weight0", "bias0", "weight1", "bias1"):
        np.testing.assert_allclose(getattr(result.network, name), getattr(ref.network, name),
                                   rtol=1e-8, atol=1e-10)
    assert compare_networks(trained_victim, result.network, test_inputs=digits[0])[
        "fidelity_test"] == 1.0
    with AuditLog(audit_path) as audit:
        charged = audit.charged_inputs("attacker")
    assert len(charged) == unique == len(np.unique(charged, axis=0))

    # Offline replay: the same attack from the log alone, the server gone, the same answers.
    replay = ReplayOracle(log)
    again = extract_functional(replay, seed=0, stay_in_bounds=False)
    assert same_network(again.network, result.network) and replay.queries == queries
    with pytest.raises(NotInLogError, match="not in"):
        replay(np.full((1, trained_victim.input_dim), 0.123))


def test_log_answers_repeated_queries_for_free(random_victim, tmp_path):
    app = create_app(random_victim, keys=(ApiKey("k", "k"),))
    x = np.random.default_rng(0).normal(0, 1, (100, random_victim.input_dim))
    with ServerThread(app) as server:
        with RemoteOracle(server.url, model="victim", api_key="k", log=tmp_path / "q.sqlite",
                          batch_size=30) as first:
            y1 = first(np.concatenate([x, x[:10]]))  # duplicates are paid once
        with RemoteOracle(server.url, model="victim", api_key="k", log=tmp_path / "q.sqlite",
                          batch_size=30) as second:
            y2 = second(x[::-1])
    np.testing.assert_array_equal(y1[:100], random_victim.logits(x))
    np.testing.assert_array_equal(y2, y1[:100][::-1])
    assert (first.paid, first.cached, second.paid, second.cached) == (100, 10, 0, 100)
    assert app.state.serving.keyring.used("k") == 100


def test_client_budget_refuses_before_sending(random_victim):
    app = create_app(random_victim, keys=(ApiKey("k", "k"),))
    with ServerThread(app) as server, \
            RemoteOracle(server.url, model="victim", api_key="k", budget=50) as oracle:
        oracle(np.zeros((40, random_victim.input_dim)))
        with pytest.raises(BudgetExhaustedError, match="40 of 50"):
            oracle(np.ones((11, random_victim.input_dim)))
    assert app.state.serving.keyring.used("k") == 40


def test_as_oracle_accepts_a_url(random_victim):
    with ServerThread(create_app(random_victim, model_name="net")) as server:
        oracle = as_oracle(f"{server.url}/v2/models/net")
        assert isinstance(oracle, RemoteOracle) and oracle.input_dim == random_victim.input_dim
        x = np.random.default_rng(1).normal(0, 1, (5, random_victim.input_dim))
        np.testing.assert_array_equal(oracle(x), random_victim.logits(x))
        oracle.close()


def other_v2_server(victim: ReLUNetwork, answer_datatype: str) -> FastAPI:
    """A minimal third-party v2 server: other tensor names, two outputs."""
    app = FastAPI()
    meta = {"name": "clf", "platform": "other", "inputs": [
        {"name": "x", "datatype": "FP64", "shape": [-1, victim.input_dim]}],
        "outputs": [{"name": "class", "datatype": "INT64", "shape": [-1, 1]},
                    {"name": "probs", "datatype": "FP64", "shape": [-1, victim.num_outputs]}]}

    @app.get("/v2/models/clf")
    async def metadata():
        return meta

    @app.post("/v2/models/clf/infer")
    async def infer(request: Request):
        req = await request.json()
        x = np.asarray(req["inputs"][0]["data"]).reshape(req["inputs"][0]["shape"])
        probs = ModelOracle(victim, output="probabilities")(x)
        outs = {"class": ("INT64", victim.predict(x)[:, None]), "probs": (answer_datatype, probs)}
        wanted = [o["name"] for o in req.get("outputs", [])] or list(outs)
        return {"model_name": "clf", "outputs": [
            {"name": n, "datatype": outs[n][0], "shape": list(outs[n][1].shape),
             "data": outs[n][1].ravel().tolist()} for n in wanted]}

    return app


def test_works_against_another_v2_server_and_checks_datatypes(random_victim):
    x = np.random.default_rng(2).normal(0, 1, (7, random_victim.input_dim))
    with ServerThread(other_v2_server(random_victim, "FP64")) as server:
        with pytest.raises(ValueError, match="choose an output"):
            RemoteOracle(server.url, model="clf")  # no 'logits': it must be told which
        probs = RemoteOracle(server.url, model="clf", output_name="probs")
        label = RemoteOracle(server.url, model="clf", output_name="class")
        assert (probs.output_kind.value, label.output_kind.value) == ("probabilities", "label")
        np.testing.assert_array_equal(probs(x), ModelOracle(random_victim,
                                                            output="probabilities")(x))
        np.testing.assert_array_equal(label(x), ModelOracle(random_victim, output="label")(x))
        with pytest.raises(ValueError, match="not an integer label"):
            RemoteOracle(server.url, model="clf", output_name="probs", output_kind="label")
    with (
        ServerThread(other_v2_server(random_victim, "FP32")) as server,
        RemoteOracle(server.url, model="clf", output_name="probs") as lying,
        pytest.raises(OracleOutputError, match="FP32"),
    ):
        lying(x)


def test_unreachable_or_refusing_server(random_victim):
    with pytest.raises(RemoteOracleError, match="2 attempts"):
        RemoteOracle("http://127.0.0.1:9", model="victim", retries=1, backoff=0.01)
    app = create_app(random_victim, keys=(ApiKey("k", "k"),))
    with (
        ServerThread(app) as server,
        RemoteOracle(server.url, model="victim", api_key="wrong") as oracle,
        pytest.raises(RemoteRefusedError, match="403.*api_key"),
    ):
        oracle(np.zeros((1, random_victim.input_dim)))


def test_extraction_finishes_against_a_rate_limit_at_any_concurrency(trained_victim, reference):
    """All four workers used to sleep exactly Retry-After and retry in lockstep until they ran
    out of attempts; with jitter and a rate that adapts to 429s the attack only gets slower."""
    ref, queries, _ = reference
    app = create_app(trained_victim, keys=(ApiKey("k", "k", rate=20.0, burst=4),))
    with ServerThread(app) as server, \
            RemoteOracle(server.url, model="victim", api_key="k", batch_size=256, concurrency=4,
                         retries=2) as oracle:
        result = extract_functional(oracle, seed=0, stay_in_bounds=False)
    assert same_network(result.network, ref.network)
    assert oracle.paid == queries == app.state.serving.keyring.used("k")
    assert oracle.retried > 2  # rate-limited more often than the retries allowed for errors


def test_close_closes_the_log_it_opened_and_a_broken_log_is_named(random_victim, tmp_path):
    import sqlite3

    with ServerThread(create_app(random_victim)) as server:
        oracle = RemoteOracle(server.url, model="victim", log=tmp_path / "q.sqlite")
        log = oracle.log
        oracle.close()
        with pytest.raises(sqlite3.ProgrammingError):
            log.count()
        shared = QueryLog(tmp_path / "q.sqlite")
        RemoteOracle(server.url, model="victim", log=shared).close()
        assert shared.count() == 0  # a log passed in stays open for its owner
        shared.close()
    broken = tmp_path / "broken.sqlite"
    broken.write_bytes((tmp_path / "q.sqlite").read_bytes()[:100] + b"\0" * 500)
    with pytest.raises(sqlite3.DatabaseError, match="broken.sqlite"):
        QueryLog(broken)
