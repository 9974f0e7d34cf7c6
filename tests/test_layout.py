import math

import pytest
import torch

from topotorch import layout as L


def test_line_matches_bimt_linspace():
    lay = L.line(4)
    assert torch.allclose(lay.coords[:, 0], torch.tensor([0.125, 0.375, 0.625, 0.875], dtype=torch.float64))
    f = L.line(6, fold=2)
    assert f.m == 3 and f.n == 6
    assert torch.equal(f.unit_coords[:3], f.unit_coords[3:])


def test_grid_ring_square_grid():
    g = L.grid(2, 3)
    assert g.n == 6 and g.dim == 2
    assert torch.allclose(g.coords[1], torch.tensor([0.5, 0.25], dtype=torch.float64))  # row 0, col 1
    r = L.ring(4, radius=0.25)
    assert torch.allclose((r.coords - 0.5).norm(dim=1), torch.full((4,), 0.25, dtype=torch.float64))
    sg = L.square_grid(12)
    assert sg.n == 12 and sg.dim == 2


def test_distance_norms_gap_and_folds():
    a = L.explicit([[0.0, 0.0]])
    b = L.explicit([[3.0, 4.0]])
    assert L.distance(a, b, p=2).item() == pytest.approx(5.0)
    assert L.distance(a, b, p=1).item() == pytest.approx(7.0)
    assert L.distance(a, b, p=math.inf).item() == pytest.approx(4.0)
    assert L.distance(a, b, p=3).item() == pytest.approx((27 + 64) ** (1 / 3))
    assert L.distance(a, b, p=2, gap=12.0).item() == pytest.approx(13.0)
    d = L.distance(L.line(4, fold=2), L.line(3))
    assert d.shape == (4, 3)
    assert torch.equal(d[:2], d[2:])


def test_permute_and_random_permutation_keep_positions():
    lay = L.grid(3, 3)
    p = lay.random_permutation(torch.Generator().manual_seed(0))
    assert sorted(map(tuple, p.coords.tolist())) == sorted(map(tuple, lay.coords.tolist()))
    with pytest.raises(ValueError, match="permutation"):
        lay.permute([0, 0, 1, 2, 3, 4, 5, 6, 7])


def test_save_load_roundtrip(tmp_path):
    lay = L.line(6, fold=2)
    lay.save(tmp_path / "l.json")
    assert L.Layout.load(tmp_path / "l.json") == lay
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable layout"):
        L.Layout.load(tmp_path / "bad.json")


@pytest.mark.parametrize("make,msg", [
    (lambda: L.line(5, fold=2), "does not divide"),
    (lambda: L.line(0), "empty"),
    (lambda: L.Layout(torch.zeros(0, 2)), "empty"),
    (lambda: L.explicit([[0.0, float("nan")]]), "NaN"),
    (lambda: L.explicit([[0.0, 1.0], [0.0, 1.0]]), "duplicate"),
    (lambda: L.Layout([[0.0]], fold=0), "fold"),
    (lambda: L.distance(L.line(2), L.grid(2)), "dimensions"),
])
def test_bad_layouts_raise_named_errors(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()
