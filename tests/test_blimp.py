"""BLiMP minimal pairs on a byte-level LM trained on real text (tiny Shakespeare from ../shared)."""
import json

import pytest
import torch

from topotorch.cli import main
from topotorch.data import blimp
from topotorch.experiments.topolm import load_arm
from topotorch.recipes import run_recipe

from conftest import SHARED

TEXT, PAIRS = SHARED / "data" / "tinyshakespeare.txt", SHARED / "data" / "blimp"
pytestmark = pytest.mark.skipif(not TEXT.is_file() or not PAIRS.is_dir(), reason="needs ../shared/data")


def _direct_logprob(model, sentences):
    """Independent: one forward over newline + all bytes of each sentence (shorter than the window)."""
    out = []
    for s in sentences:
        ids = torch.tensor([[10] + list(s.encode("utf-8"))])
        logits, _ = model(ids[:, :-1])
        out.append(torch.log_softmax(logits.double(), -1)[0, torch.arange(ids.shape[1] - 1), ids[0, 1:]].sum().item())
    return torch.tensor(out)


def test_blimp_accuracy_of_both_arms_matches_an_independent_computation(tmp_path, capsys):
    over = {"quick": True, "data": str(TEXT), "block_size": 96, "steps": 60, "blimp": str(PAIRS)}
    m = run_recipe("topolm", tmp_path, over, progress=False)
    pairs = blimp(str(PAIRS))
    assert sorted(pairs) == sorted(p.stem for p in PAIRS.glob("*.jsonl")) and all(len(v) == 1000 for v in pairs.values())
    for arm in ("topo", "control"):
        acc = m[f"blimp_{arm}"]
        assert set(acc) == set(pairs) | {"mean"} and all(0.0 <= v <= 1.0 for v in acc.values())
        _, model = load_arm(tmp_path, arm)
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
