import pytest
import json
import re

from topotorch.cli import main

pytestmark = pytest.mark.slow  # a reproduction test: runs whole recipes


def test_reproduce_reports_every_claim_over_seeds_in_a_self_contained_report(tmp_path, capsys):
    rc = main(["reproduce", "--quick", "--seeds", "2", "--only", "locality-prior,toponets-mlp", "--out", str(tmp_path),
               "--quiet", "--jobs", "1"])
    rep = json.loads((tmp_path / "report.json").read_text())
    rows = rep["rows"]
    assert [r["recipe"] for r in rows] == ["locality-prior", "toponets-mlp"]
    assert "majority" in rep["meta"]["rule"]
    for r in rows:
        assert r["seeds"] == [0, 1] and 0 <= r["held"] <= 2 and r["holds"] == (r["held"] == 2)
        assert [p["seed"] for p in r["per_seed"]] == r["seeds"] and r["held"] == sum(p["holds"] for p in r["per_seed"])
        for f in r["figures"].values():  # mean ± sd of the per-seed metrics written by each run
            assert len(f["values"]) == 2 and abs(f["mean"] - sum(f["values"]) / 2) < 1e-12
        for s in r["seeds"]:
            m = json.loads((tmp_path / r["recipe"] / f"seed-{s}" / "metrics.json").read_text())
            assert m["seed"] == s
    loc = rows[0]
    m0 = json.loads((tmp_path / "locality-prior" / "seed-0" / "metrics.json").read_text())
    assert loc["figures"]["accuracy local"]["values"][0] == m0["accuracy_local"]
    assert rc == (0 if all(r["holds"] for r in rows) else 1)
    md = (tmp_path / "report.md").read_text()
    assert all(f"| {r['held']}/2 |" in md for r in rows)
    html = (tmp_path / "report.html").read_text()
    srcs = re.findall(r'src="([^"]+)"', html)
    assert len(srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in srcs)  # self-contained
    # a row again with two worker processes (its seeds at once): the same runs, so the same row (times aside)
    main(["reproduce", "--quick", "--seeds", "2", "--only", "toponets-mlp", "--out", str(tmp_path / "jobs2"), "--quiet",
          "--jobs", "2"])
    par = json.loads((tmp_path / "jobs2" / "report.json").read_text())["rows"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(par) == strip(rows[1:])


def test_reproduce_rejects_unknown_recipe(tmp_path, capsys):
    assert main(["reproduce", "--out", str(tmp_path), "--only", "nosuch"]) == 2
    assert "no recipe matches" in capsys.readouterr().err


def test_reproduce_data_adds_real_data_rows_that_name_their_data(tmp_path, capsys):
    from conftest import SHARED
    data = SHARED / "data"
    if not (data / "tinyshakespeare.txt").is_file():
        import pytest
        pytest.skip("needs ../shared/data")
    # the topolm-text row's run is checked by tests/test_text_lm.py (its metrics and figures); here its naming
    main(["reproduce", "--quick", "--seeds", "1", "--data", str(data), "--only", "locality-prior-mnist",
          "--sweeps", "--out", str(tmp_path), "--quiet"])
    rep = json.loads((tmp_path / "report.json").read_text())
    rows = {r["recipe"]: r for r in rep["rows"]}
    # the fronts: TDANN's α and TopoLM's α on the text, each setting marked against the 2 % rule
    assert [f["name"] for f in rep["fronts"]] == ["tdann-cnn", "topolm-text"]
    for f in rep["fronts"]:
        ctrl = next(x for x in f["settings"] if x["control"])
        for x in f["settings"]:
            assert x["within_2pct"] == (abs(x["task_mean"] - ctrl["task_mean"]) <= 0.02 * abs(ctrl["task_mean"]))
        assert (tmp_path / f["figure"]).stat().st_size > 0
    assert "## Topography at what cost: fronts" in (tmp_path / "report.md").read_text()
    assert set(rows) == {"locality-prior-mnist"}
    assert rows["locality-prior-mnist"]["data"].startswith("MNIST")
    from topotorch.report import data_claims
    text_row = {c.run_as: c for c in data_claims(data)}["topolm-text"]
    assert text_row.data == "tinyshakespeare.txt + stimuli + BLiMP"
    assert {"blimp", "stimuli", "data"} <= set(text_row.quick) and text_row.quick["quick"] is True
    mn = json.loads((tmp_path / "locality-prior-mnist" / "seed-0" / "metrics.json").read_text())
    assert mn["data"] == "mnist" and len(mn["variance_per_class_local"]) == 10
    assert "| MNIST" in (tmp_path / "report.md").read_text()


def test_reproduce_prints_elapsed_time_and_an_estimate_of_the_rest(tmp_path):
    from topotorch.report import _eta, _previous_run_seconds
    assert _eta(65, {"a": 2, "b": 1}, {}, []) == "elapsed 1:05; time left estimated after the first run"
    # rows timed this run or in the last report use their own time per run; others the mean run so far
    assert _eta(65, {"a": 2, "b": 1}, {"a": 10.0}, [20.0]) == "elapsed 1:05; about 0:40 left"
    assert _eta(600, {"a": 1, "b": 0}, {"a": 125.0, "b": 1.0}, []) == "elapsed 10:00; about 2:05 left"
    # rows not timed yet: the packaged typical time, scaled by how this machine did on the rows done (c took twice
    # its typical time, so b's three runs take 2 × 5 s each), not the mean run so far (20 s)
    assert _eta(0, {"b": 3, "c": 0}, {"c": 20.0}, [20.0], 1, {"b": 5.0, "c": 10.0}, ["c"]) == "elapsed 0:00; about 0:30 left"
    # nothing finished yet: the packaged times as they are, said so; 2 workers share the 3 × 5 + 2 × 10 s
    assert (_eta(0, {"b": 3, "c": 2}, {}, [], 2, {"b": 5.0, "c": 10.0}, [])
            == "elapsed 0:00; about 0:17 left (from the packaged run times until runs finish here)")
    assert _eta(0, {"b": 3, "d": 1}, {}, [], 1, {"b": 5.0}, []) == "elapsed 0:00; time left estimated after the first run"
    (tmp_path / "report.json").write_text(json.dumps({"meta": {"quick": True}, "rows": [
        {"recipe": "a", "seconds": 30.0, "seeds": [0, 1, 2]}]}))
    assert _previous_run_seconds(tmp_path, True) == {"a": 10.0} and _previous_run_seconds(tmp_path, False) == {}
