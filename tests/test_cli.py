import json

import pytest
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
    assert report["evaluation"]["fidelity_uniform"] >= 0.999
    assert report["attack"]["self_check"]["passed"]
    assert report["evaluation"]["hidden_extracted"] <= report["evaluation"]["units_crossing_box"]
    assert report["attack"]["queries"] > 0
    assert (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("where", [["--unbounded"], ["--input-range", "-1", "1"]])
def test_extract_command_reports_every_layer_of_a_deep_victim(tmp_path, where):
    from model_extraction.network import ReLUNetwork

    saved = tmp_path / "victim.safetensors"
    ReLUNetwork.random(10, (10, 10), 1, seed=0).save(saved)
    out = tmp_path / "report.json"
    res = CliRunner().invoke(app, ["extract", "--victim", str(saved), *where,
                                   "--no-progress", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "layer 2, bits" in res.output  # measured against the victim's copy
    report = json.loads(out.read_text())
    assert report["attack"]["mode"] == "deep" and report["evaluation"]["fidelity_uniform"] == 1
    assert [layer["units_matched"] for layer in report["evaluation"]["layers"]] == [10, 10]
    inside = where[0] == "--input-range"
    assert report["attack"]["queries_inside_input_range"] is inside
    assert ("inside [-1, 1]^d" in res.output) is inside


def test_reference_inputs_outside_the_input_range_are_one_clear_line(tmp_path):
    from model_extraction.network import ReLUNetwork

    saved = tmp_path / "victim.safetensors"
    ReLUNetwork.random(64, 16, 10, seed=0).save(saved)  # digits' width: its images are the pool
    for bad, said in ((["-0.5", "0.5"], "give --reference 0"), (["-inf", "1"], "finite")):
        res = CliRunner().invoke(app, ["extract", "--victim", str(saved), "--input-range", *bad,
                                       "--no-progress"])
        assert res.exit_code == 2 and said in res.output, res.output
        assert "Traceback" not in res.output


def test_budget_error_exit_code():
    res = CliRunner().invoke(
        app, ["extract", "--hidden", "16", "--epochs", "1", "--budget", "300", "--no-progress"]
    )
    assert res.exit_code == 2
    assert "budget" in res.output


def test_datasets_json(tmp_path, monkeypatch):
    """`datasets --json`: one object per dataset and split with the documented keys."""
    from tiny_dataset_files import write_mnist

    from model_extraction.datasets import checksums, locations
    from model_extraction.datasets.checksums import Digest

    monkeypatch.setenv("MODEL_EXTRACTION_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MODEL_EXTRACTION_DATA", raising=False)
    monkeypatch.setattr(locations, "SYSTEM_DATA_DIRS", ())
    _, _, digests = write_mnist(tmp_path / "mnist", "test", n=7)
    for name, hexdigest in digests.items():
        monkeypatch.setitem(checksums.KNOWN_DIGESTS, ("mnist", name), Digest("sha256", hexdigest))
    res = CliRunner().invoke(app, ["datasets", "--json", "-", "--data-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rows = {(r["name"], r["split"]): r for r in json.loads(res.stdout)}
    for row in rows.values():
        assert {"name", "split", "count", "verified", "source"} <= set(row)
    assert rows[("mnist", "test")]["count"] == 7
    assert rows[("mnist", "test")]["verified"] is True
    assert rows[("mnist", "train")]["verified"] is False
    assert rows[("digits", "train")] == {**rows[("digits", "train")], "count": 1500,
                                          "verified": True}
