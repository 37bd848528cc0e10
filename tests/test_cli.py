import json

from typer.testing import CliRunner

from model_extraction.cli import app


def test_extract_command_on_embedded_digits(tmp_path):
    out = tmp_path / "report.json"
    res = CliRunner().invoke(
        app, ["extract", "--hidden", "16", "--epochs", "3", "--no-progress", "--json", str(out),
              "--save-extracted", str(tmp_path / "x.safetensors")],
    )
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["evaluation"]["fidelity_test"] == 1.0
    assert report["evaluation"]["hidden_extracted"] == 16
    assert report["attack"]["queries"] > 0
    assert (tmp_path / "x.safetensors").exists()


def test_budget_error_exit_code():
    res = CliRunner().invoke(
        app, ["extract", "--hidden", "16", "--epochs", "1", "--budget", "300", "--no-progress"]
    )
    assert res.exit_code == 2
    assert "budget" in res.output
