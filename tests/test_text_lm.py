"""A byte-level topolm run on real text (tiny Shakespeare from ../shared), trained once: BLiMP minimal pairs and
TopoLM's stimulus protocol, each checked against an independent computation."""
import csv
import json

import numpy as np
from scipy import stats

import pytest
import torch

from topotorch.cli import main
from topotorch.data import blimp
from topotorch.experiments.topolm import load_arm
from topotorch.recipes import run_recipe

from conftest import SHARED

TEXT, PAIRS = SHARED / "data" / "tinyshakespeare.txt", SHARED / "data" / "blimp"
STIM = SHARED / "data" / "stimuli"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not TEXT.is_file() or not PAIRS.is_dir(), reason="needs ../shared/data")]


def _direct_logprob(model, sentences):
    """Independent: one forward over newline + all bytes of each sentence (shorter than the window)."""
    out = []
    for s in sentences:
        ids = torch.tensor([[10] + list(s.encode("utf-8"))])
        logits, _ = model(ids[:, :-1])
        out.append(torch.log_softmax(logits.double(), -1)[0, torch.arange(ids.shape[1] - 1), ids[0, 1:]].sum().item())
    return torch.tensor(out)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("text_lm")
    over = {"quick": True, "data": str(TEXT), "block_size": 96, "steps": 60, "blimp": str(PAIRS), "stimuli": str(STIM)}
    return out, run_recipe("topolm", out, over, progress=False)


def test_blimp_accuracy_of_both_arms_matches_an_independent_computation(text_run, capsys):
    tmp_path, m = text_run
    pairs = blimp(str(PAIRS))
    assert sorted(pairs) == sorted(p.stem for p in PAIRS.glob("*.jsonl")) and all(len(v) == 1000 for v in pairs.values())
    for arm in ("topo", "control"):
        acc = m[f"blimp_{arm}"]
        assert set(acc) == set(pairs) | {"mean"} and all(0.0 <= v <= 1.0 for v in acc.values())
        _, model, _, _ = load_arm(tmp_path, arm)
        model.eval()
        with torch.no_grad():
            for ph in ("anaphor_gender_agreement", "determiner_noun_agreement_1"):
                ps = [p for p in pairs[ph] if max(len(p[0].encode()), len(p[1].encode())) < 96]
                assert len(ps) == len(pairs[ph])  # every sentence fits the window: no windowing to mirror
                good = _direct_logprob(model, [g for g, _ in ps])
                bad = _direct_logprob(model, [b for _, b in ps])
                assert acc[ph] == pytest.approx(float((good > bad).double().mean()), abs=1e-12)
    # the same numbers from the CLI on the finished run
    assert main(["blimp", str(tmp_path), "--source", str(PAIRS)]) == 0
    got = json.loads((tmp_path / "blimp.json").read_text())["accuracy"]
    assert got["topo"] == pytest.approx(m["blimp_topo"]) and got["control"] == pytest.approx(m["blimp_control"])


def test_blimp_errors_are_named(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no nosuch.jsonl"):
        blimp(str(PAIRS), ["nosuch"])
    (tmp_path / "bad.jsonl").write_text('{"sentence_good": "a"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        blimp(str(tmp_path))
    assert main(["blimp", str(tmp_path / "nothing"), "--source", str(PAIRS)]) == 2
    with pytest.raises(ValueError, match="byte-level"):
        run_recipe("topolm", tmp_path / "g", {"quick": True, "steps": 2, "blimp": str(PAIRS)}, progress=False)


def _morans_i(x, coords):
    """Independent Moran's I: queen neighbours on the grid, row-standardised, by explicit loops."""
    n = len(x)
    z = x - x.mean()
    num, s0 = 0.0, 0.0
    for i in range(n):
        nb = [j for j in range(n) if j != i and np.abs(coords[i] - coords[j]).max() <= 1.0 + 1e-9]
        for j in nb:
            num += z[i] * z[j] / len(nb)
            s0 += 1.0 / len(nb)
    return n / s0 * num / (z * z).sum()


@pytest.mark.parametrize("table,text,cond,contrast", [("fedorenko_stimuli.csv", "sentence", "condition", "S-N"),
                                                       ("elli_stimuli.csv", "pair", "class", "noun-verb")])
def test_stimuli_protocol_matches_an_independent_computation(text_run, table, text, cond, contrast, capsys):
    run, _ = text_run
    out = run / f"stim-{contrast}"
    assert main(["stimuli", str(run), "--file", str(STIM / table), "--text", text, "--condition", cond,
                 "--contrast", contrast, "--out", str(out)]) == 0
    res = json.loads((out / "stimuli.json").read_text())
    assert (out / f"tmaps_{contrast}.png").stat().st_size > 0
    a, b = contrast.split("-")
    rows = [r for r in csv.DictReader(open(STIM / table, newline="")) if r[cond] in (a, b)]
    for arm in ("topo", "control"):
        r = res["arms"][arm]
        for key in ("morans_i", "morans_i_smoothed", "morans_i_null", "morans_i_smoothed_null", "significant_units"):
            assert isinstance(r[key], float), key
        _, model, positions, _ = load_arm(run, arm)
        model.eval()
        name = "blocks.1.mlp"
        got = []
        h = model.get_submodule(name).register_forward_hook(lambda mod, i, o: got.append(o[0].mean(0)))
        with torch.no_grad():
            for row in rows:  # each stimulus alone, mean over its tokens
                model(torch.tensor([list(row[text].encode())[:96]]))
        h.remove()
        resp = torch.stack(got).numpy()
        lab = np.array([row[cond] for row in rows])
        t = stats.ttest_ind(resp[lab == a], resp[lab == b], equal_var=False).statistic
        sheet = r["sheets"][name]
        assert np.allclose(sheet["t_map"], t, atol=1e-3)
        coords = positions[name].unit_coords.numpy()
        assert sheet["morans_i"] == pytest.approx(_morans_i(np.asarray(sheet["t_map"]), coords), abs=1e-9)
        assert -1 <= sheet["morans_i_null"] <= 1 and sheet["morans_i_smoothed_null"] > sheet["morans_i_null"]


def test_text_run_writes_its_analysis_without_word_classes(text_run):
    run, m = text_run
    for arm in ("topo", "control"):
        assert -1 <= m[f"corr_r_d_{arm}"] <= 1
        for key in ("localizer", "noun_verb"):
            for suffix in ("", "_null", "_smoothed", "_smoothed_null"):
                assert isinstance(m[f"morans_i_{key}{suffix}_{arm}"], float)
    for f in ("corr_distance.png", "maps_localizer.png", "maps_noun_verb.png", "analysis.json"):
        assert (run / f).stat().st_size > 0, f
    # the reproduce row for text (`reproduce --data`) reads these metrics: its verdict and figures work on this run
    from topotorch.report import data_claims
    row = {c.run_as: c for c in data_claims(SHARED / "data")}["topolm-text"]
    assert isinstance(row.holds(m), bool) and "Moran" in row.measured(m)
    assert set(row.figures(m)) >= {"Moran's I localizer topo", "BLiMP topo"}
