"""All-TNN's pieces: the locally connected layer against a per-location loop, and its smoothness loss against an
independent NumPy computation (value) and gradcheck (gradient)."""
import numpy as np
import pytest
import torch

from topotorch.costs import CosineSmoothness, cosine_smoothness
from topotorch.locally_connected import LocallyConnected2d, hypercolumn_positions


@pytest.mark.parametrize("stride,padding,bias", [(1, 0, True), (2, 1, True), (1, 2, False)])
def test_locally_connected_equals_a_per_location_loop(stride, padding, bias):
    torch.manual_seed(0)
    lc = LocallyConnected2d(3, 6, (11, 9), (3, 2), stride=stride, padding=padding, bias=bias).double()
    x = torch.randn(5, 3, 11, 9, dtype=torch.float64)
    y = lc(x)
    xp = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    Ho, Wo = lc.output_size
    assert y.shape == (5, 6, Ho, Wo)
    for i in range(Ho):
        for j in range(Wo):
            patch = xp[:, :, i * stride:i * stride + 3, j * stride:j * stride + 2].reshape(5, -1)
            want = patch @ lc.weight[i * Wo + j].T + (lc.bias[:, i, j] if bias else 0)
            assert torch.allclose(y[:, :, i, j], want, atol=1e-6)


def test_locally_connected_errors_name_the_problem():
    lc = LocallyConnected2d(1, 4, (8, 8), 3)
    with pytest.raises(ValueError, match="expects input"):
        lc(torch.zeros(2, 1, 9, 8))
    with pytest.raises(ValueError, match="larger than the padded input"):
        LocallyConnected2d(1, 4, (4, 4), 7, padding=1)
    pos = lc.topo_positions  # 4 channels as a 2×2 hypercolumn at each of the 6×6 locations: a full 12×12 grid
    assert sorted(map(tuple, pos.long().tolist())) == [(x, y) for x in range(12) for y in range(12)]
    assert torch.equal(pos, hypercolumn_positions(4, 6, 6))


def _numpy_loss(vectors, grid, neighbours, circular):
    """Independent: explicit loops over cells and their right/lower (and diagonal) neighbours."""
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    h, w = grid.shape
    dirs = [(1, 0), (0, 1)] + ([(1, 1), (1, -1)] if neighbours == 8 else [])
    means = []
    for dy, dx in dirs:
        sims = []
        for i in range(h):
            for j in range(w):
                a, b = i + dy, j + dx
                if not circular and not (0 <= a < h and 0 <= b < w):
                    continue
                sims.append(v[grid[i, j]] @ v[grid[a % h, b % w]])
        means.append(np.mean(sims))
    return (1 - np.mean(means)) / 2


@pytest.mark.parametrize("neighbours,circular", [(4, False), (4, True), (8, False), (8, True)])
def test_cosine_smoothness_equals_numpy_and_passes_gradcheck(neighbours, circular):
    rs = np.random.RandomState(0)
    vec = rs.randn(20, 7)
    grid = rs.permutation(20).reshape(4, 5)
    got = cosine_smoothness(torch.tensor(vec), torch.tensor(grid), neighbours, circular)
    assert got.item() == pytest.approx(_numpy_loss(vec, grid, neighbours, circular), abs=1e-12)
    v = torch.tensor(vec, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: cosine_smoothness(t, torch.tensor(grid), neighbours, circular), (v,))


def test_cosine_smoothness_follows_the_layers_positions_and_is_zero_on_a_smooth_sheet():
    lc = LocallyConnected2d(1, 4, (6, 6), 3, bias=False)
    with torch.no_grad():
        lc.weight.copy_(torch.randn(1, 1, 9).expand_as(lc.weight))  # every unit the same kernel
    assert CosineSmoothness([lc])().item() == pytest.approx(0.0, abs=1e-6)
    lin = torch.nn.Linear(5, 12)
    cs = CosineSmoothness([(lin, 2.0)], neighbours=8)
    v = cs()
    v.backward()
    assert lin.weight.grad is not None and cs.last[0] * 2.0 == pytest.approx(v.item())
    with pytest.raises(ValueError, match="no weight"):
        CosineSmoothness([torch.nn.ReLU()])


@pytest.mark.slow
def test_all_tnn_recipe_writes_maps_and_figures_for_three_arms(tmp_path):
    from topotorch.recipes import run_recipe
    m = run_recipe("all-tnn", tmp_path, {"steps": 20, "channels": [9, 9], "permutations": 19}, progress=False)
    for arm in ("alltnn", "lc", "cnn"):
        for key in ("accuracy", "orientation_local", "orientation_smoothness", "category_morans_i", "params",
                    "wiring_ratio"):
            assert np.isfinite(m[f"{key}_{arm}"]), (key, arm)
    assert m["params_alltnn"] == m["params_lc"] > m["params_cnn"]  # untied kernels: one per location
    # the loss is what made the All-TNN arm's kernels smooth: its value is far below the unconstrained arm's
    assert m["kernel_smoothness_alltnn"]["layer1"] < m["kernel_smoothness_lc"]["layer1"]
    for f in ("orientation_maps.png", "category_maps.png", "probe.json", "alltnn.safetensors"):
        assert (tmp_path / f).stat().st_size > 0, f
