"""Language probes on a model that is not ours: a HuggingFace GPT-2 made topographic with ``attach``, saved with
``save_pretrained``, reloaded, and probed from the command line — checked against direct computations through
the HuggingFace model (its own loss for log-probabilities, hooks for responses)."""
import csv
import json
import os

import numpy as np
import pytest
import torch
from scipy import stats

import topotorch as tt
from topotorch.cli import main
from topotorch.probe import LM, find_sheets, saved_positions
from topotorch.probe import language as Lg

from conftest import SHARED

transformers = pytest.importorskip("transformers")
STIM, PAIRS = SHARED / "data" / "stimuli", SHARED / "data" / "blimp"
TEXT = SHARED / "data" / "tinyshakespeare.txt"
SHEETS = ["transformer.h.0.mlp", "transformer.h.1.mlp"]


def _gpt2(seed=0):
    cfg = transformers.GPT2Config(vocab_size=384, n_positions=64, n_embd=36, n_layer=2, n_head=4, bos_token_id=1,
                                  eos_token_id=1)
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(cfg)


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """A topographic GPT-2 and a control, 40 steps on real text (or bytes of this file), saved as HF folders."""
    root = tmp_path_factory.mktemp("hf")
    tok = transformers.ByT5Tokenizer()
    text = TEXT.read_text()[:200_000] if TEXT.is_file() else open(__file__).read() * 20
    data = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    out = {}
    for name, alpha in (("topo", 1.0), ("control", 0.0)):
        model = _gpt2()
        topo = tt.attach(model, SHEETS, example_input=data[None, :8], alpha=alpha) if alpha else None
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(40):
            i = torch.randint(0, len(data) - 33, (8,), generator=g)
            x = torch.stack([data[k:k + 32] for k in i.tolist()])
            loss = model(input_ids=x, labels=x).loss
            (loss + topo() if topo else loss).backward()
            opt.step()
            opt.zero_grad()
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out[name] = (root / name, model, topo)
    return out


def test_save_pretrained_keeps_positions_and_one_line_restores_them(hf_folders):
    folder, model, topo = hf_folders["topo"]
    pos = saved_positions(folder)
    assert sorted(pos) == SHEETS
    for n in SHEETS:
        assert torch.equal(pos[n].unit_coords, topo.positions(n).unit_coords)
    again = transformers.GPT2LMHeadModel.from_pretrained(folder)
    ids = torch.randint(0, 256, (2, 16))
    t2 = tt.attach(again, saved_positions(folder), alpha=1.0, example_input=ids)  # the documented one line
    for n in SHEETS:
        assert torch.equal(t2.positions(n).unit_coords, topo.positions(n).unit_coords)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, model(ids).logits)


def _direct_logprob(model, tok, sentence):
    """Independent: the HF model's own mean cross-entropy over [EOS] + the sentence's bytes."""
    ids = torch.tensor([[1] + tok(sentence, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        return -model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)


@pytest.mark.skipif(not PAIRS.is_dir(), reason="needs ../shared/data")
def test_blimp_log_probabilities_equal_the_hf_models_own_loss(hf_folders, tmp_path, capsys):
    folder, model, _ = hf_folders["topo"]
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    lm = LM(model, tok)
    assert lm.bos == [1] and lm.block_size == 64
    from topotorch.data import blimp
    pairs = {k: v[:40] for k, v in blimp(str(PAIRS), ["anaphor_gender_agreement"]).items()}
    sents = [s for g, b in pairs["anaphor_gender_agreement"] for s in (g, b)]
    got = Lg.sequence_logprob(lm, [lm.encode(s) for s in sents])
    want = [_direct_logprob(model, tok, s) for s in sents]
    assert np.allclose(got.numpy(), want, atol=1e-4)
    model.train()
    acc = Lg.blimp_accuracy(lm, pairs)
    assert model.training  # mode restored
    good, bad = np.array(want[0::2]), np.array(want[1::2])
    assert acc["anaphor_gender_agreement"] == pytest.approx(float((good > bad).mean()))


@pytest.mark.skipif(not STIM.is_dir(), reason="needs ../shared/data")
def test_probe_cli_on_a_saved_hf_model_with_a_control(hf_folders, tmp_path, capsys):
    folder, model, topo = hf_folders["topo"]
    before = {f: (folder / f).stat().st_mtime_ns for f in os.listdir(folder)}
    out = tmp_path / "probe"
    assert main(["probe", str(folder), "--control", str(hf_folders["control"][0]), "--out", str(out),
                 "--stimuli", str(STIM / "elli_stimuli.csv"), "--text", "pair", "--condition", "class",
                 "--contrast", "noun-verb", "--permutations", "99"]) == 0
    assert {f: (folder / f).stat().st_mtime_ns for f in os.listdir(folder)} == before  # files untouched
    doc = json.loads((out / "probe.json").read_text())
    assert doc["models"] == ["model", "control"] and doc["sheets"] == SHEETS
    res = doc["results"]["model"]["stimuli"]["noun-verb"]
    for key in ("morans_i", "morans_i_null", "p_value", "morans_i_smoothed", "morans_i_smoothed_null", "significant_units"):
        assert isinstance(res[key], float), key
    assert (out / "stimuli_noun-verb.png").stat().st_size > 0 and "data:image/png;base64" in (out / "probe.html").read_text()
    # the control has no positions of its own: it is read on the model's
    ctrl = doc["results"]["control"]["stimuli"]["noun-verb"]["sheets"][SHEETS[1]]
    # independent: each stimulus alone through the HF model, the MLP's output averaged over the stimulus's bytes
    tok = transformers.ByT5Tokenizer()
    rows = [r for r in csv.DictReader(open(STIM / "elli_stimuli.csv", newline="")) if r["class"] in ("noun", "verb")]
    for name, r in (("topo", res["sheets"][SHEETS[1]]), ("control", ctrl)):
        m = transformers.GPT2LMHeadModel.from_pretrained(hf_folders[name][0])
        got = []
        h = m.get_submodule(SHEETS[1]).register_forward_hook(lambda mod, i, o: got.append(o[0].mean(0)))
        m.eval()
        with torch.no_grad():
            for row in rows:
                m(torch.tensor([tok(row["pair"], add_special_tokens=False)["input_ids"]]))
        h.remove()
        resp = torch.stack(got).double().numpy()  # t in float64, as the probe computes it
        lab = np.array([row["class"] for row in rows])
        t = stats.ttest_ind(resp[lab == "noun"], resp[lab == "verb"], equal_var=False).statistic
        assert np.allclose(r["t_map"], t, atol=1e-3), name


def test_bad_input_is_one_named_line_and_exit_2(hf_folders, tmp_path, capsys):
    folder = hf_folders["topo"][0]
    table = tmp_path / "t.csv"
    table.write_text("text,cond\nthe dog,noun\nthe cat,noun\nto run,verb\n")
    cases = [
        (["probe", str(tmp_path / "nothing"), "--out", str(tmp_path / "o1")], "no such run directory"),
        (["probe", str(folder), "--out", str(tmp_path / "o2"), "--stimuli", str(table), "--text", "sentence",
          "--condition", "cond", "--contrast", "noun-verb"], "no column 'sentence'"),
        (["probe", str(folder), "--out", str(tmp_path / "o3"), "--stimuli", str(table), "--text", "text",
          "--condition", "cond", "--contrast", "noun-adj"], "no row of condition ['adj']"),
        (["probe", str(folder), "--out", str(tmp_path / "o4"), "--stimuli", str(table), "--text", "text",
          "--condition", "cond", "--contrast", "noun-verb"], "at least two samples"),
        (["probe", str(folder), "--out", str(tmp_path / "o5"), "--gratings"], "is a language model"),
        (["probe", str(folder), "--out", str(tmp_path / "o6"), "--sheets", "nosuch.*", "--stimuli", str(table),
          "--text", "text", "--condition", "cond", "--contrast", "noun-verb"], "no module of the model matches"),
    ]
    empty = tmp_path / "noweights"
    empty.mkdir()
    (empty / "config.json").write_text((folder / "config.json").read_text())
    cases.append((["probe", str(empty), "--out", str(tmp_path / "o7"), "--blimp", str(tmp_path)], "without weights"))
    for argv, msg in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, (argv, err)
        assert not (tmp_path / argv[3].split("/")[-1]).exists() or argv[3].endswith("o7") is False
    for i in range(1, 8):
        assert not (tmp_path / f"o{i}").exists()  # nothing written on a refused call


def test_a_tokenizer_that_returns_nothing_is_named():
    model = _gpt2()
    lm = LM(model, lambda text: [] if text == "" else [1, 2, 3])
    with pytest.raises(ValueError, match="no tokens for the stimulus ''"):
        lm.encode("")


def test_probe_of_a_model_without_positions_names_the_fix(tmp_path, capsys):
    model = _gpt2()
    model.save_pretrained(tmp_path / "plain")
    transformers.ByT5Tokenizer().save_pretrained(tmp_path / "plain")
    assert main(["probe", str(tmp_path / "plain"), "--out", str(tmp_path / "o"), "--blimp", str(PAIRS)]) == 2
    assert "--sheets PATTERN" in capsys.readouterr().err
    with pytest.raises(ValueError, match="example_input"):
        find_sheets(model, ["transformer.h.0.mlp"])
    sheets = find_sheets(model, ["transformer.h.*.mlp"], example_input=torch.zeros(1, 4, dtype=torch.long))
    assert [s.name for s in sheets] == SHEETS and all(s.layout.n == 36 for s in sheets)
    assert not any("topo_positions" in m._buffers for m in model.modules())  # the model is not changed
