"""The HTTP server: Open Inference Protocol, output policies, validation, keys, budgets, limits.

Every test talks to a real uvicorn server on 127.0.0.1 (a free port chosen by the OS).
"""

import json
import threading

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from model_extraction.cli import app as cli_app
from model_extraction.defenses import OutputPolicy
from model_extraction.network import ReLUNetwork
from model_extraction.oracle import BudgetExhaustedError, ModelOracle
from model_extraction.remote import RemoteOracle
from model_extraction.serving import ApiKey, AuditLog, ServerThread, create_app

D, K = 20, 5
INFER = "/v2/models/victim/infer"


@pytest.fixture(scope="module")
def victim() -> ReLUNetwork:
    return ReLUNetwork.random(D, 8, K, seed=5)


@pytest.fixture(scope="module")
def guarded(victim, tmp_path_factory):
    """A server with two keys, small limits and an audit log."""
    log = tmp_path_factory.mktemp("audit") / "audit.sqlite"
    app = create_app(
        victim, keys=(ApiKey("alice-secret", "alice", budget=10_000), ApiKey("bob-secret", "bob")),
        max_batch=64, max_request_bytes=200_000, input_range=(-100.0, 100.0), log_path=log,
    )
    with ServerThread(app) as server:
        yield server, app.state.serving, log


def body(x, *, name="input", datatype="FP64", shape=None, outputs=None, rid=None) -> dict:
    x = np.asarray(x)
    req = {"inputs": [{"name": name, "datatype": datatype,
                       "shape": list(x.shape) if shape is None else shape,
                       "data": x.ravel().tolist()}]}
    if outputs is not None:
        req["outputs"] = [{"name": o} for o in outputs]
    if rid is not None:
        req["id"] = rid
    return req


def outputs_of(resp: httpx.Response) -> dict[str, np.ndarray]:
    assert resp.status_code == 200, resp.text
    return {t["name"]: np.asarray(t["data"]).reshape(t["shape"]) for t in resp.json()["outputs"]}


def test_health_and_metadata(guarded):
    server, _, _ = guarded
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/v2/health/live").json() == {"live": True}
        assert c.get("/v2/health/ready").json() == {"ready": True}
        assert c.get("/v2").json()["name"] == "model-extraction"
        meta = c.get("/v2/models/victim").json()
        assert meta["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, D]}]
        assert {t["name"]: (t["datatype"], t["shape"]) for t in meta["outputs"]} == {
            "logits": ("FP64", [-1, K]), "label": ("INT64", [-1, 1])}
        missing = c.get("/v2/models/other")
        assert missing.status_code == 404 and "victim" in missing.json()["error"]


def test_logits_are_exact_float64_over_http(guarded, victim):
    server, _, _ = guarded
    x = np.random.default_rng(0).normal(0, 3, (50, D))
    with httpx.Client(base_url=server.url, headers={"X-API-Key": "bob-secret"}) as c:
        out = outputs_of(c.post(INFER, json=body(x)))
        only_label = outputs_of(c.post(INFER, json=body(x.tolist(), outputs=["label"])))
    assert out["logits"].dtype == np.float64
    np.testing.assert_array_equal(out["logits"], victim.logits(x))  # bit for bit
    np.testing.assert_array_equal(out["label"][:, 0], victim.predict(x))
    assert set(only_label) == {"label"}


@pytest.mark.parametrize("policy", [
    OutputPolicy(kind="probabilities"),
    OutputPolicy(kind="top_k", k=2),
    OutputPolicy(kind="label"),
    OutputPolicy(kind="probabilities", decimals=3),
    OutputPolicy(kind="logits", noise_sigma=0.5),
    OutputPolicy(kind="probabilities", reverse_sigmoid_beta=0.5, reverse_sigmoid_gamma=0.4),
], ids=lambda p: p.describe())
def test_output_policies(victim, policy):
    x = np.random.default_rng(1).normal(0, 3, (40, D))
    with ServerThread(create_app(victim, policy=policy)) as server, \
            httpx.Client(base_url=server.url) as c:
        names = [t["name"] for t in c.get("/v2/models/victim").json()["outputs"]]
        out = outputs_of(c.post(INFER, json=body(x)))[names[0]]
    z = victim.logits(x)
    kind = policy.kind.value
    if not policy.perturbed:  # the same view as the in-process oracle
        np.testing.assert_array_equal(out, ModelOracle(victim, output=kind, k=policy.k)(x))
        if kind == "top_k":
            assert np.all(np.sum(out > 0, axis=1) == 2)
        return
    if policy.decimals is not None:
        np.testing.assert_array_equal(out, np.round(out, policy.decimals))
        assert np.max(np.abs(out - ModelOracle(victim, output=kind)(x))) <= 0.5e-3 + 1e-12
    elif policy.noise_sigma:
        assert 0.3 < np.std(out - z) < 0.7
    else:  # reverse sigmoid bends the probabilities but keeps the label and the sums
        probs = ModelOracle(victim, output="probabilities")(x)
        assert np.max(np.abs(out - probs)) > 1e-3
        np.testing.assert_allclose(out.sum(axis=1), 1.0)
        np.testing.assert_array_equal(out.argmax(axis=1), z.argmax(axis=1))


def test_bad_requests_get_the_right_4xx_and_the_server_keeps_serving(guarded):
    server, state, _ = guarded
    x = np.random.default_rng(2).normal(0, 1, (3, D))
    good = body(x)
    nan_body = json.dumps(good).replace(str(good["inputs"][0]["data"][4]), "NaN", 1)
    cases = [
        ({"content": b'{"inputs": [{"name": '}, 400, "malformed JSON"),
        ({"json": body(x[:, :-1])}, 400, "shape"),
        ({"json": body(x, shape=[3, D + 1])}, 400, "shape"),
        ({"json": body(x, shape=[D, 3])}, 400, "shape"),
        ({"json": body(x, datatype="INT64")}, 400, "datatype"),
        ({"json": body(x, name="pixels")}, 400, "input"),
        ({"json": body(x, outputs=["probabilities"])}, 400, "logits"),
        ({"json": {"inputs": [{**good["inputs"][0], "data": ["a"] * (3 * D)}]}}, 422, "number"),
        ({"json": {"inputs": []}}, 422, "inputs"),
        ({"content": nan_body.encode()}, 400, "NaN"),
        ({"json": body(np.full((2, D), 1e3))}, 400, "[-100, 100]"),
        ({"json": {"inputs": [{**good["inputs"][0], "data": good["inputs"][0]["data"][:-1]}]}},
         400, "values"),
        ({"json": body(np.zeros((65, D)))}, 413, "64 rows"),
        ({"content": b"[" + b"0," * 150_000 + b"0]"}, 413, "bytes"),
    ]
    with httpx.Client(base_url=server.url, headers={"Authorization": "Bearer alice-secret"}) as c:
        used = state.keyring.used("alice")
        for kwargs, status, words in cases:
            resp = c.post(INFER, **kwargs)
            assert resp.status_code == status, (kwargs.keys(), resp.text)
            assert words in resp.json()["error"], resp.text
        assert state.keyring.used("alice") == used  # nothing refused was charged
        resp = c.post(INFER, json=good, headers={"Authorization": ""})
        assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer"
        assert c.post(INFER, json=good, headers={"Authorization": "Bearer nope"}).status_code == 403
        assert c.post("/v2/models/other/infer", json=good).status_code == 404
        assert c.get(INFER).status_code == 405
        assert c.post(INFER, json=good).status_code == 200  # still serving


def test_budget_is_enforced_and_exhaustion_is_a_budget_error(victim):
    app = create_app(victim, keys=(ApiKey("k", budget=100),))
    with ServerThread(app) as server, RemoteOracle(server.url, model="victim",
                                                   api_key="k") as oracle:
        oracle(np.zeros((60, D)))
        with pytest.raises(BudgetExhaustedError, match="60 of 100") as info:
            oracle(np.ones((41, D)))
        assert (info.value.budget, info.value.used, info.value.requested) == (100, 60, 41)
        assert app.state.serving.keyring.used("k") == 60


def test_budget_never_exceeded_by_concurrent_clients(victim, tmp_path):
    budget = 1_000
    log = tmp_path / "audit.sqlite"
    app = create_app(victim, keys=(ApiKey("shared", "shared", budget=budget),), log_path=log)
    answered = []

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with RemoteOracle(server.url, model="victim", api_key="shared", batch_size=7,
                          concurrency=3) as oracle:
            try:
                while True:
                    oracle(rng.normal(0, 1, (int(rng.integers(5, 40)), D)))
            except BudgetExhaustedError:
                answered.append(oracle.paid)

    with ServerThread(app) as server:
        threads = [threading.Thread(target=client, args=(s,)) for s in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        used = app.state.serving.keyring.used("shared")
    assert len(answered) == 6
    assert used <= budget
    assert sum(answered) == used  # every charged row reached a client
    assert used > budget - 7 * 6  # and the budget was really used up
    with AuditLog(log) as audit:
        assert audit.charged("shared") == used
        assert len(audit.charged_inputs("shared")) == used


def test_rate_limit_answers_429_with_retry_after_and_the_client_waits(victim):
    app = create_app(victim, keys=(ApiKey("k", rate=20.0, burst=1),))
    x = np.random.default_rng(3).normal(0, 1, (30, D))
    with ServerThread(app) as server:
        with httpx.Client(base_url=server.url, headers={"X-API-Key": "k"}) as c:
            codes = [c.post(INFER, json=body(x[:2])) for _ in range(2)]
        assert codes[0].status_code == 200
        assert codes[1].status_code == 429
        assert int(codes[1].headers["retry-after"]) >= 1  # whole seconds, rounded up
        assert 0 < codes[1].json()["retry_after"] <= 0.05  # the exact wait
        with RemoteOracle(server.url, model="victim", api_key="k", batch_size=5,
                          concurrency=1) as oracle:
            y = oracle(x)
        # The server evaluates batches of 5 rows, this process one of 30: BLAS rounds the two
        # differently in the last bits (6e-16 seen), so compare at float64 precision.
        np.testing.assert_allclose(y, victim.logits(x), rtol=1e-12, atol=1e-12)
        assert oracle.retried > 0 and oracle.paid == 30


def test_audit_log_records_every_request_per_key(guarded):
    server, _, log = guarded
    x = np.random.default_rng(4).normal(0, 1, (6, D))
    with httpx.Client(base_url=server.url, headers={"X-API-Key": "bob-secret"}) as c:
        c.post(INFER, json=body(x, rid="audit-1"))
        c.post(INFER, json=body(np.zeros((65, D))))
    with AuditLog(log) as audit:
        bob = audit.records("bob")
        assert "bob-secret" not in {r.key for r in audit.records()}  # names, never secrets
    answered = next(r for r in bob if r.request_id == "audit-1")
    assert (answered.status, answered.charged) == (200, 6)
    np.testing.assert_array_equal(answered.inputs, x)
    assert bob[-1].status == 413 and bob[-1].charged == 0


def test_a_retried_request_id_is_not_charged_twice(victim):
    app = create_app(victim, keys=(ApiKey("k", "k", budget=100),))
    x = np.random.default_rng(5).normal(0, 1, (10, D))
    with ServerThread(app) as server, \
            httpx.Client(base_url=server.url, headers={"X-API-Key": "k"}) as c:
        first = c.post(INFER, json=body(x, rid="r1")).json()
        again = c.post(INFER, json=body(x, rid="r1")).json()
        other = c.post(INFER, json=body(x + 1, rid="r1")).json()  # same id, other inputs
    assert first["outputs"] == again["outputs"]
    assert [r["parameters"]["charged_rows"] for r in (first, again, other)] == [10, 0, 10]
    assert app.state.serving.keyring.used("k") == 20


def test_serve_command_dry_run(tmp_path, victim):
    path = tmp_path / "victim.safetensors"
    victim.save(path)
    res = CliRunner().invoke(cli_app, ["serve", str(path), "--output", "top_k", "--k", "3",
                                       "--key", "s3cret:500", "--rate-limit", "10", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "top_k (k=3)" in res.output and "500" in res.output and "s3cret" not in res.output
    bad = CliRunner().invoke(cli_app, ["serve", str(path), "--output", "label", "--decimals",
                                       "2", "--dry-run"])
    assert bad.exit_code == 2 and "label" in bad.output


class Fragile:
    """A model that fails on inputs above 50: the server must answer 500 and carry on."""

    def __init__(self, net: ReLUNetwork) -> None:
        self.net, self.input_dim = net, net.input_dim

    def logits(self, x):
        if np.any(x > 50):
            raise FloatingPointError("overflow in the victim")
        return self.net.logits(x)


def test_a_failing_model_is_a_500_that_is_not_charged(victim, tmp_path):
    app = create_app(Fragile(victim), keys=(ApiKey("k", "k", budget=100),),
                     log_path=tmp_path / "audit.sqlite")
    with ServerThread(app) as server, \
            httpx.Client(base_url=server.url, headers={"X-API-Key": "k"}) as c:
        bad = c.post(INFER, json=body(np.full((4, D), 60.0)))
        good = c.post(INFER, json=body(np.zeros((4, D))))
    assert bad.status_code == 500 and "not charged" in bad.json()["error"]
    assert good.status_code == 200
    assert app.state.serving.keyring.used("k") == 4
    with AuditLog(tmp_path / "audit.sqlite") as audit:
        assert [(r.status, r.charged) for r in audit.records("k")] == [(500, 0), (200, 4)]
