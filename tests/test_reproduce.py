import json
import re

from topotorch.cli import main


def test_reproduce_quick_writes_a_self_contained_report_and_every_claim_holds(tmp_path, capsys):
    assert main(["reproduce", "--quick", "--out", str(tmp_path), "--quiet"]) == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    assert len(rep["rows"]) == 8 and all(r["holds"] for r in rep["rows"])
    recipes = {r["recipe"] for r in rep["rows"]}
    assert {"independence", "feature-sharing", "compositionality", "locality-prior", "spatial-two-task", "topolm",
            "tdann-cnn"} <= recipes
    md = (tmp_path / "report.md").read_text()
    assert md.count("| ✅ yes |") == 8
    html = (tmp_path / "report.html").read_text()
    srcs = re.findall(r'src="([^"]+)"', html)
    assert len(srcs) == 8 and all(s.startswith("data:image/png;base64,") for s in srcs)  # self-contained
    for r in rep["rows"]:  # each measured value comes from this run's metrics
        assert (tmp_path / r["recipe"] / "metrics.json").is_file()


def test_reproduce_rejects_unknown_recipe(tmp_path, capsys):
    assert main(["reproduce", "--out", str(tmp_path), "--only", "nosuch"]) == 2
    assert "no recipe matches" in capsys.readouterr().err
