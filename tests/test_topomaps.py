import numpy as np
import pytest
import torch

from topotorch import layout as L
from topotorch import metrics as M


def test_morans_i_hand_values():
    g = L.grid(1, 4, spacing=1.0)  # a 1×4 strip: neighbours are the adjacent cells
    # z = [-1.5, -.5, .5, 1.5]; row-standardised W; zᵀWz = -1.5·(-.5) + (-.5)(-1.5+.5)/2 + .5(-.5+1.5)/2 + 1.5·.5
    z = np.array([-1.5, -0.5, 0.5, 1.5])
    zwz = 0.75 + 0.25 + 0.25 + 0.75
    assert M.morans_i([0, 1, 2, 3], g) == pytest.approx(zwz / (z @ z))
    checker = np.indices((6, 6)).sum(0) % 2  # queen contiguity: a checkerboard is not perfectly negative
    gg = L.grid(6, 6, spacing=1.0)
    assert M.morans_i(checker.ravel(), gg) < -0.1
    assert M.morans_i(np.indices((6, 6))[1].ravel(), gg) > 0.6  # a gradient is strongly positive
    rng = np.random.default_rng(0)
    assert abs(np.mean([M.morans_i(rng.normal(size=36), gg) for _ in range(200)])) < 0.05  # E[I] ≈ −1/(n−1)


def test_morans_i_matches_pysal_formula_on_random_grid():
    rng = np.random.default_rng(1)
    gg = L.grid(5, 5, spacing=1.0)
    x = rng.normal(size=25)
    c = gg.unit_coords.numpy()
    n = 25
    W = np.zeros((n, n))
    for a in range(n):
        for b in range(n):
            if a != b and max(abs(c[a] - c[b])) <= 1:
                W[a, b] = 1
    W /= W.sum(1, keepdims=True)
    z = x - x.mean()
    assert M.morans_i(x, gg) == pytest.approx(n / W.sum() * z @ W @ z / (z @ z))


def test_welch_t_and_fdr():
    from scipy import stats
    rng = np.random.default_rng(2)
    a = rng.normal(size=(40, 5)); b = rng.normal(size=(30, 5)) + np.array([0, 0, 0, 0, 2.0])
    t, p = M.welch_t(a, b)
    t2, _ = stats.ttest_ind(a[:, 4], b[:, 4], equal_var=False)
    assert t[4] == pytest.approx(t2) and p[4] < 1e-6
    adj, sig = M.fdr(p)
    assert sig[4] and sig.sum() >= 1 and (adj >= p - 1e-12).all()
    with pytest.raises(ValueError):
        M.welch_t(a, b[:, :3])


def test_smoothness_and_correlation_vs_distance():
    gg = L.grid(8, 8, spacing=1.0)
    smooth = gg.unit_coords[:, 0].numpy()
    assert M.smoothness_index(smooth, gg) > 0.8
    rng = np.random.default_rng(3)
    assert M.smoothness_index(rng.permutation(smooth), gg) < 0.3
    t = torch.randn(300, 1)
    acts = t * torch.exp(-((gg.unit_coords.float() - 3.5) ** 2).sum(1) / 10) + 0.1 * torch.randn(300, 64)
    cd = M.correlation_vs_distance(acts, gg, bins=6)
    assert len(cd["distance"]) == len(cd["correlation"]) and sum(cd["count"]) == 64 * 63 // 2
