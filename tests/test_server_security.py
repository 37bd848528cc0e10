"""The prediction server keeps its promises under attack: one answer per paid row, budgets and
answered ids that survive ``kill -9``, bounded cost before payment, no request stalling others.

Each test attacks a real server (uvicorn on 127.0.0.1; a child process where a restart is part
of the attack) and asserts the mechanism, never a timing.
"""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from test_serving import body  # one request builder for the server tests

from model_extraction.defenses import OutputPolicy
from model_extraction.network import ReLUNetwork
from model_extraction.serving import ApiKey, AuditLog, ServerThread, create_app

D, K = 20, 10
INFER = "/v2/models/victim/infer"


@pytest.fixture(scope="module")
def victim() -> ReLUNetwork:
    return ReLUNetwork.random(D, 16, K, seed=7)


def answer(resp: httpx.Response, name: str) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    t = next(t for t in resp.json()["outputs"] if t["name"] == name)
    return np.asarray(t["data"]).reshape(t["shape"])


# ------------------------------------------------------------ one answer per row
def test_duplicate_outputs_are_refused_and_nothing_is_charged(victim):
    policy = OutputPolicy(kind="logits", noise_sigma=1.0)
    app = create_app(victim, policy=policy, keys=(ApiKey("k", "k", budget=100),))
    x = np.zeros((1, D))
    with ServerThread(app) as server, \
            httpx.Client(base_url=server.url, headers={"X-API-Key": "k"}) as c:
        resp = c.post(INFER, json=body(x, outputs=["logits"] * 2000))
        assert resp.status_code == 400 and "more than once" in resp.json()["error"]
        both = c.post(INFER, json=body(x, outputs=["logits", "label"]))
        # every output of a response derives from the one noisy answer
        np.testing.assert_array_equal(answer(both, "label")[:, 0],
                                      answer(both, "logits").argmax(axis=1))
    assert app.state.serving.keyring.used("k") == 1


@pytest.mark.parametrize("policy", [OutputPolicy(kind="logits", noise_sigma=1.0),
                                    OutputPolicy(kind="top_k", k=2, noise_sigma=0.3)],
                         ids=lambda p: p.describe())
def test_averaging_repeated_queries_gains_nothing(victim, policy):
    app = create_app(victim, policy=policy, keys=(ApiKey("a", "a"), ApiKey("b", "b")))
    row = np.random.default_rng(0).normal(0, 1, (1, D))
    name = policy.kind.value if policy.kind.value == "logits" else "probabilities"
    with ServerThread(app) as server, httpx.Client(base_url=server.url) as c:
        key_a = {"X-API-Key": "a"}
        within = answer(c.post(INFER, json=body(np.repeat(row, 500, axis=0)), headers=key_a),
                        name)
        across = np.concatenate([answer(c.post(INFER, json=body(row), headers=key_a), name)
                                 for _ in range(20)])
        negative_zero = row.copy()
        negative_zero[0, :3] = -0.0
        zero = negative_zero.copy()
        zero[0, :3] = 0.0
        signed = [answer(c.post(INFER, json=body(v), headers=key_a), name)
                  for v in (negative_zero, zero)]
        other_key = answer(c.post(INFER, json=body(row), headers={"X-API-Key": "b"}), name)
    assert np.ptp(within, axis=0).max() == 0 and np.ptp(across, axis=0).max() == 0
    # One row alone and in a batch of 500: BLAS may round the logits differently in the last
    # bit (the noise is the same draw); no spread to average either way.
    np.testing.assert_allclose(within[0], across[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(*signed)  # -0.0 is the same input as 0.0
    assert not np.array_equal(other_key, across[:1])  # the noise is drawn per key
    if policy.kind.value == "top_k":  # the copies reveal k classes, not more
        assert np.count_nonzero(np.any(within > 0, axis=0)) == policy.k
    else:  # and the noise is still there, with its deviation
        z = victim.logits(np.random.default_rng(1).normal(0, 1, (400, D)))
        with ServerThread(create_app(victim, policy=policy)) as server, \
                httpx.Client(base_url=server.url) as c:
            x = np.random.default_rng(1).normal(0, 1, (400, D))
            noisy = answer(c.post(INFER, json=body(x)), "logits")
        assert 0.9 < np.std(noisy - z) < 1.1


# ------------------------------------------------- durable budgets and answered ids
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(victim_path, log, port) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "from model_extraction.cli import app; app()", "serve",
           str(victim_path), "--port", str(port), "--key", "k:1000", "--log", str(log),
           "--noise-sigma", "1.0", "--max-batch", "1000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).is_success:
                return proc
        except httpx.TransportError:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("the server did not start")


def test_kill_9_and_restart_neither_refunds_nor_charges_twice(victim, tmp_path):
    path, log, port = tmp_path / "victim.safetensors", tmp_path / "audit.sqlite", _free_port()
    victim.save(path)
    x = np.random.default_rng(2).normal(0, 1, (900, D))
    url, headers = f"http://127.0.0.1:{port}", {"X-API-Key": "k"}
    proc = _serve(path, log, port)
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
            first = c.post(INFER, json=body(x[:512], rid="r-512"))
            c.post(INFER, json=body(x[512:], rid="r-388")).raise_for_status()
        assert first.json()["parameters"]["budget_remaining"] == 488, first.text
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    proc = _serve(path, log, port)
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
            again = c.post(INFER, json=body(x[:512], rid="r-512"))  # replay: free, same answer
            assert again.json()["parameters"]["charged_rows"] == 0
            np.testing.assert_array_equal(answer(again, "logits"), answer(first, "logits"))
            more = np.random.default_rng(3).normal(0, 1, (101, D))
            refused = c.post(INFER, json=body(more))
            assert refused.status_code == 402 and refused.json()["used"] == 900
            assert c.post(INFER, json=body(more[:100])).status_code == 200
    finally:
        proc.terminate()
        proc.wait()
    with AuditLog(log) as audit:
        charged = [(r.request_id, r.charged) for r in audit.records() if r.charged]
    assert charged == [("r-512", 512), ("r-388", 388), (None, 100)]  # 1,000 rows, once each


# ------------------------------------------------------- bounded cost before payment
def test_unfunded_key_is_refused_before_its_body_is_read(victim, tmp_path):
    app = create_app(victim, keys=(ApiKey("poor", "poor", budget=0),
                                   ApiKey("rich", "rich", budget=10**6)),
                     log_path=tmp_path / "audit.sqlite")
    with ServerThread(app) as server, socket.create_connection(("127.0.0.1", server.port)) as s:
        # Headers announcing 50 MB, and not one byte of body: the answer cannot wait for it.
        s.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nX-API-Key: poor\r\nContent-Type: "
                  f"application/json\r\nContent-Length: {50 * 2**20}\r\n\r\n".encode())
        s.settimeout(10)
        head = s.recv(65536).decode(errors="replace")
        assert head.startswith("HTTP/1.1 402"), head
        with httpx.Client(base_url=server.url) as c:
            long_id = c.post(INFER, json=body(np.zeros((1, D)), rid="x" * 100_000),
                             headers={"X-API-Key": "rich"})
            assert long_id.status_code == 400 and "at most 256" in long_id.json()["error"]
    with AuditLog(tmp_path / "audit.sqlite") as audit:
        records = audit.records()
    assert [r.status for r in records] == [402, 400]
    assert all(r.request_id is None for r in records)  # an unchecked id is never stored
    assert app.state.serving.keyring.used("rich") == 0


def test_huge_finite_input_is_a_400_not_charged(victim):
    app = create_app(victim, keys=(ApiKey("k", "k", budget=10),))
    x = np.zeros((3, D))
    x[1] = 1.7e308
    with ServerThread(app) as server, \
            httpx.Client(base_url=server.url, headers={"X-API-Key": "k"}) as c:
        resp = c.post(INFER, json=body(x))
        assert resp.status_code == 400 and "row 1" in resp.json()["error"]
        assert c.post(INFER, json=body(x[:1])).status_code == 200
    assert app.state.serving.keyring.used("k") == 1


def test_audit_inputs_are_optional_and_bounded(victim, tmp_path):
    x = np.random.default_rng(4).normal(0, 1, (100, D))  # 16,000 bytes per request
    bounded = create_app(victim, log_path=tmp_path / "a.sqlite", audit_input_bytes=40_000)
    none = create_app(victim, log_path=tmp_path / "b.sqlite", store_inputs=False)
    for app in (bounded, none):
        with ServerThread(app) as server, httpx.Client(base_url=server.url) as c:
            for i in range(4):
                c.post(INFER, json=body(x + i)).raise_for_status()
    with AuditLog(tmp_path / "a.sqlite") as a, AuditLog(tmp_path / "b.sqlite") as b:
        np.testing.assert_array_equal(a.charged_inputs("anonymous"), np.concatenate([x + 2,
                                                                                      x + 3]))
        assert a.charged("anonymous") == 400  # the charges stay
        assert b.charged_inputs("anonymous").size == 0 and b.charged("anonymous") == 400


# ------------------------------------------------- no request stalls the others
class Recording:
    """A model that records the thread and the size of every batch it evaluates."""

    def __init__(self, net: ReLUNetwork) -> None:
        self.net, self.input_dim = net, net.input_dim
        self.calls: list[tuple[str, int]] = []

    def logits(self, x):
        self.calls.append((threading.current_thread().name, len(x)))
        return self.net.logits(x)


def test_evaluation_runs_off_the_event_loop_in_bounded_chunks(victim):
    model = Recording(victim)
    app = create_app(model, chunk_rows=100, max_batch=1000, process_parse_bytes=10_000)
    x = np.random.default_rng(5).normal(0, 1, (1000, D))
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=60) as c:
        model.calls.clear()
        y = answer(c.post(INFER, json=body(x)), "logits")  # 400 kB: parsed in a process
        small = answer(c.post(INFER, json=body(x[:3])), "logits")  # parsed in a thread
    np.testing.assert_allclose(y, victim.logits(x), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(small, y[:3], rtol=1e-13, atol=1e-13)  # other batch shape
    assert [n for _, n in model.calls] == [100] * 10 + [3]
    assert "uvicorn" not in {name for name, _ in model.calls}  # the event loop's thread


def test_client_disconnecting_mid_body_is_logged_without_a_traceback(victim, tmp_path, caplog):
    app = create_app(victim, log_path=tmp_path / "audit.sqlite")
    with ServerThread(app) as server, caplog.at_level(logging.ERROR):
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      f"Content-Length: 100000\r\n\r\n{{\"inputs\": [".encode())
            time.sleep(0.2)
        deadline = time.monotonic() + 10
        while not AuditLog(tmp_path / "audit.sqlite").records() and time.monotonic() < deadline:
            time.sleep(0.05)
    with AuditLog(tmp_path / "audit.sqlite") as audit:
        assert [r.status for r in audit.records()] == [499]
    assert not [r for r in caplog.records if r.exc_info]


def test_docs_are_a_choice(victim):
    for docs, status in ((False, 404), (True, 200)):
        with ServerThread(create_app(victim, docs=docs)) as server, \
                httpx.Client(base_url=server.url) as c:
            assert c.get("/openapi.json").status_code == status
            assert c.get("/docs").status_code == status


# ---------------------------------------------------------------- concurrency
def test_copies_of_one_request_in_flight_are_charged_once(victim, tmp_path):
    app = create_app(victim, keys=(ApiKey("k", "k", budget=10_000),),
                     log_path=tmp_path / "audit.sqlite")
    x = np.random.default_rng(6).normal(0, 1, (200, D))
    payload = json.dumps(body(x, rid="same")).encode()
    with ServerThread(app) as server, \
            httpx.Client(base_url=server.url, headers={"X-API-Key": "k"}) as c, \
            ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: c.post(INFER, content=payload), range(16)))
    charged = [a.json()["parameters"]["charged_rows"] for a in answers]
    assert sorted(charged) == [0] * 15 + [200]
    assert len({a.json()["outputs"][0]["data"][0] for a in answers}) == 1
    assert app.state.serving.keyring.used("k") == 200
    with AuditLog(tmp_path / "audit.sqlite") as audit:
        assert audit.charged("k") == 200
