"""Any prediction API, from Python and from the command line: servers that publish no tensor
metadata (the protocol allows it), a stand-in for MLServer's scikit-learn runtime, and the
``--url`` options of ``extract`` and ``learn``."""

import json

import numpy as np
import pytest
from fastapi import FastAPI, Request
from typer.testing import CliRunner

from model_extraction.attacks.functional import extract_functional
from model_extraction.attacks.learning import LearningExtraction
from model_extraction.cli import app as cli
from model_extraction.defenses import OutputPolicy
from model_extraction.evaluation import compare_networks
from model_extraction.network import ReLUNetwork
from model_extraction.oracle import LogitDifferenceOracle, ModelOracle, OracleOutputError
from model_extraction.remote import RemoteOracle
from model_extraction.serving import ApiKey, ServerThread, create_app

SECRET = "s3cret-token-value"


def sklearn_runtime(victim: ReLUNetwork) -> FastAPI:
    """A stand-in for MLServer's scikit-learn runtime: empty tensor metadata, any input name,
    outputs ``predict`` (INT64 labels, shape [n]) and ``predict_proba`` (FP64)."""
    app = FastAPI()

    @app.get("/v2/models/clf")
    async def metadata():
        return {"name": "clf", "platform": "sklearn", "versions": [], "inputs": [],
                "outputs": []}

    @app.post("/v2/models/clf/infer")
    async def infer(request: Request):
        req = await request.json()
        tensor = req["inputs"][0]  # whatever its name
        x = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
        outs = {"predict": ("INT64", victim.predict(x)),
                "predict_proba": ("FP64", ModelOracle(victim, output="probabilities")(x))}
        wanted = [o["name"] for o in req.get("outputs") or []] or ["predict"]
        return {"model_name": "clf", "outputs": [
            {"name": n, "datatype": outs[n][0], "shape": list(outs[n][1].shape),
             "data": outs[n][1].ravel().tolist()} for n in wanted]}

    return app


@pytest.fixture(scope="module")
def victim(digits):
    from model_extraction.victims import train_victim

    x, y = digits
    return train_victim(x[:1500], y[:1500], 12, epochs=40, seed=1)


def test_user_names_win_over_empty_metadata(victim, digits):
    x = digits[0][1500:1520]
    with ServerThread(sklearn_runtime(victim)) as server:
        url = f"{server.url}/v2/models/clf"
        with pytest.raises(ValueError, match="--input-dim"):
            RemoteOracle(url, output_name="predict_proba")
        proba = RemoteOracle(url, input_name="input-0", output_name="predict_proba",
                             input_dim=64, output_kind="probabilities")
        assert proba.plan["output"]["datatype"] == "checked on the first answer"
        np.testing.assert_allclose(proba(x), ModelOracle(victim, output="probabilities")(x),
                                   rtol=1e-12, atol=0)
        assert proba.output_datatype == "FP64"
        label = RemoteOracle(url, output_name="predict", input_dim=64)
        assert label.output_kind.value == "label"
        np.testing.assert_array_equal(label(x)[:, 0], victim.predict(x))
        wrong = RemoteOracle(url, output_name="predict", input_dim=64, output_kind="logits")
        with pytest.raises(OracleOutputError, match="INT64"):
            wrong(x)
        result = extract_functional(LogitDifferenceOracle(proba), seed=0)
        learned = LearningExtraction(method="supervised", steps=30, arch="mlp",
                                     arch_options={"hidden": 16}).run(
            label, digits[0][:1500].reshape(-1, 1, 8, 8), queries=200, num_classes=10)
    metrics = compare_networks(victim, result.network, test_inputs=digits[0][1500:],
                               up_to_constant=True)
    assert metrics["fidelity_test"] == 1.0 and result.check["passed"]
    assert learned.queries == 200 and label.queries == 20 + 200


def _run(*args, env=None):
    res = CliRunner().invoke(cli, [str(a) for a in args], env=env)
    return res.exit_code, res.output


@pytest.fixture(scope="module")
def saved(victim, tmp_path_factory):
    path = tmp_path_factory.mktemp("victim") / "victim.safetensors"
    victim.save(path)
    return path


def test_extract_url_from_a_server_without_tensor_metadata(victim, saved, tmp_path, digits):
    """The issue's command: probabilities, no metadata, the saved model equals the served one."""
    app = create_app(victim, policy=OutputPolicy(kind="probabilities"), publish_tensors=False,
                     keys=(ApiKey(SECRET, "k"),))
    out = tmp_path / "out.safetensors"
    with ServerThread(app) as server:
        url = f"{server.url}/v2/models/victim"
        code, text = _run("extract", "--url", url, "--input-dim", 64, "--output-kind",
                          "probabilities", "--dry-run", env={"MODEL_EXTRACTION_API_KEY": SECRET})
        assert code == 0 and "'input' FP64 [-1, 64]" in text and SECRET not in text
        assert app.state.serving.keyring.used("k") == 0  # a dry run costs nothing
        code, text = _run("extract", "--url", url, "--input-dim", 64, "--output-kind",
                          "probabilities", "--save-extracted", out, "--json",
                          tmp_path / "out.json", "--no-progress", "--query-log",
                          tmp_path / "q.sqlite", "--api-key", SECRET)
        assert code == 0, text
        paid = app.state.serving.keyring.used("k")
        report = json.loads((tmp_path / "out.json").read_text())
        assert report["oracle"]["paid"] == paid > 0 and SECRET not in text
        code, text = _run("extract", "--url", url, "--input-dim", 64, "--output-kind",
                          "probabilities", "--no-progress", "--query-log",
                          tmp_path / "q.sqlite", "--api-key", SECRET)
        assert code == 0, text
        assert app.state.serving.keyring.used("k") == paid  # the rerun paid nothing
    extracted = ReLUNetwork.load(out)
    metrics = compare_networks(victim, extracted, test_inputs=digits[0][1500:],
                               up_to_constant=True)
    assert metrics["fidelity_test"] == 1.0 and metrics["fidelity_uniform"] == 1.0


@pytest.mark.parametrize("output, decimals", [("label", None), ("probabilities", 2)])
def test_learn_url_with_labels_and_rounded_probabilities(victim, saved, tmp_path, output,
                                                         decimals):
    app = create_app(victim, policy=OutputPolicy(kind=output, decimals=decimals),
                     publish_tensors=False)
    with ServerThread(app) as server:
        code, text = _run("learn", "--url", f"{server.url}/v2/models/victim", "--output",
                          output, "--budget", 500, "--method", "supervised", "--steps", 40,
                          "--victim", saved, "--no-progress", "--json", "-")
    assert code == 0, text
    report = json.loads(text[text.index("{"):])
    assert report["attack"]["queries"] == report["oracle"]["paid"] == 500
    assert report["attack"]["unusable_answers"] == 0
    assert report["attack"]["metrics"]["fidelity"] > 0.5


@pytest.mark.parametrize("args, says", [
    (["extract", "--victim", "missing.safetensors"], "does not exist"),
    (["extract", "--hidden", "0"], "--hidden"),
    (["extract", "--dataset", "foo"], "'foo' is not one of"),
    (["limits", "--dataset", "foo"], "'foo' is not one of"),
    (["extract", "--dataset", "mnist", "--data-dir", "{empty}"], "--data-dir DIR"),
    (["serve", "{victim}", "--port", "99999"], "--port"),
    (["serve", "{victim}", "--port", "-1", "--dry-run"], "--port"),
    (["learn", "--width", "0"], "--width"),
    (["extract", "--input-range", "1", "0"], "LOW < HIGH"),
    (["extract", "--dry-run"], "add --url"),
    (["extract", "--url", "http://127.0.0.1:9/v2/models/x", "--no-progress"], "Is the server"),
    (["learn", "--url", "http://127.0.0.1:9", "--no-progress"], "name the model"),
    (["extract", "--url", "127.0.0.1:9/v2/models/x"], "http://"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, says, saved, tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_EXTRACTION_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MODEL_EXTRACTION_DATA", raising=False)
    monkeypatch.setattr("model_extraction.datasets.locations.SYSTEM_DATA_DIRS", ())
    monkeypatch.setattr("model_extraction.remote.oracle.RemoteOracle.__init__.__kwdefaults__",
                        {**RemoteOracle.__init__.__kwdefaults__, "retries": 0})
    (tmp_path / "empty").mkdir()
    args = [a.format(victim=saved, empty=tmp_path / "empty") for a in args]
    code, text = _run(*args)
    assert code == 2, text
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], text


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(where):
    args = ["extract", "--url", "http://127.0.0.1:9", "--no-progress"]
    args = ["--debug", *args] if where == "before" else [*args, "--debug"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code != 0 and isinstance(res.exception, ValueError)


def test_an_api_key_in_the_environment_does_not_block_local_runs(monkeypatch):
    monkeypatch.setenv("MODEL_EXTRACTION_API_KEY", SECRET)  # as the README's export leaves it
    code, text = _run("extract", "--hidden", 4, "--epochs", 1, "--reference", 0,
                      "--no-progress", "--json", "-")
    assert code == 0, text
    assert SECRET not in text


def test_serve_on_a_busy_port_is_one_line(saved):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, text = _run("serve", saved, "--port", busy.getsockname()[1])
    assert code == 2 and text.strip().count("\n") == 0 and "choose another --port" in text
