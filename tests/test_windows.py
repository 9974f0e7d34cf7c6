"""Sup-norm windows found through an O(n) index (topotorch.windows) equal the brute-force (n × n) comparison; the
sampled loss, attach and the pre-optimisation work at TDANN's sheet size (200,704 units) without an (n × n) matrix."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

from topotorch import layout as L
from topotorch.costs.correlation import SpatialCorrelationLoss, correlation_matrix, pair_loss, inverse_distance
from topotorch.swaps import swap_optimize_windows
from topotorch.topography import attach, is_attached, retinotopic, window_radius
from topotorch.windows import Windows


def brute(c, radius):
    return L.within(c, c, radius)


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), radius=st.sampled_from([0.3, 1.0, 1.5, 2.0, 5.0]),
       shuffle=st.booleans(), seed=st.integers(0, 100))
def test_lattice_windows_equal_brute_force(h, w, radius, shuffle, seed):
    lay = L.grid(h, w, spacing=1.0)
    if shuffle:
        lay = lay.random_permutation(torch.Generator().manual_seed(seed))
    c = lay.unit_coords
    win, inside = Windows(c, radius), brute(c, radius)
    for u in range(lay.n):
        assert torch.equal(win.members(u), torch.nonzero(inside[u]).flatten())
    assert win.regular
    # the full windows: the largest, members ordered by their offset from the centre (x-major)
    sizes = inside.sum(1)
    centres = torch.nonzero(sizes == sizes.max()).flatten()
    assert torch.equal(win.centres, centres)
    table = win.table(torch.arange(win.count))
    for row, u in zip(table, centres):
        assert sorted(row.tolist()) == torch.nonzero(inside[u]).flatten().tolist()
        off = c[row] - c[u]
        key = off[:, 0] * 1e6 + off[:, 1]
        assert (key[1:] > key[:-1]).all()


@settings(max_examples=15, deadline=None)
@given(channels=st.integers(1, 12), side=st.integers(1, 7), radius=st.floats(0.2, 8.0), seed=st.integers(0, 50))
def test_retinotopic_windows_equal_brute_force(channels, side, radius, seed):
    c = retinotopic(channels, side, side, seed=seed).unit_coords
    win, inside = Windows(c, radius), brute(c, radius)
    assert not win.regular or channels == 1
    for u in range(len(c)):
        assert torch.equal(win.members(u), torch.nonzero(inside[u]).flatten())


def test_window_radius_holds_about_500_units():
    for C, H in ((64, 16), (128, 8), (512, 2), (64, 56)):
        lay = retinotopic(C, H, H)
        win = Windows(lay.unit_coords, window_radius(lay))
        sizes = [len(win.members(u)) for u in torch.randint(lay.n, (200,), generator=torch.Generator().manual_seed(0))]
        assert 250 <= np.mean(sizes) <= 560 and max(sizes) <= 800, (C, H, np.mean(sizes))


def test_irregular_sampled_loss_is_the_mean_window_loss():
    """The sampled loss on a retinotopic sheet: mean over windows around random units of the loss of the window's
    units, computed here from the brute-force windows."""
    lay = retinotopic(8, 6, 6, seed=2)
    X = torch.randn(64, lay.n, generator=torch.Generator().manual_seed(1))
    mod = nn.Identity()
    sl = SpatialCorrelationLoss({mod: lay}, mode="sampled", neighbourhoods=3, radius=3.0,
                                generator=torch.Generator().manual_seed(5))
    mod(X.requires_grad_())
    got = sl().item()
    centres = torch.randint(lay.n, (3,), generator=torch.Generator().manual_seed(5))
    inside = brute(lay.unit_coords, 3.0)
    want = np.mean([float(pair_loss(correlation_matrix(X.detach()[:, w].double()),
                                    L.proximity(L.distance(L.Layout(lay.unit_coords[w]), L.Layout(lay.unit_coords[w])))))
                    for w in (torch.nonzero(inside[c]).flatten() for c in centres)])
    assert got == pytest.approx(want, abs=2e-6)


def test_tdann_sheet_size_attaches_and_trains_without_an_n_by_n_matrix():
    """A 64 × 56 × 56 = 200,704-unit sheet (TDANN's first ResNet-18 sheet at 224×224): an (n × n) float32 matrix
    would take 150 GB. Sampled attach, a training step and window-by-window pre-optimisation all run; the exact
    loss is refused by name and leaves the model as it was."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 64, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 2))
    x = torch.rand(4, 3, 56, 56)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="mode='sampled'"):
        attach(model, ["0"], units="locations", example_input=x[:2], mode="exact")
    assert not is_attached(model) and set(model.state_dict()) == set(before)
    topo = attach(model, ["0"], units="locations", example_input=x[:2], mode="sampled")
    sheet = topo.correlation.sheets[0]
    assert sheet.layout.n == 200_704 and sheet.D is None and topo.correlation.k == 1
    loss = F.cross_entropy(model(x), torch.tensor([0, 1, 0, 1])) + topo()
    loss.backward()
    assert torch.isfinite(loss) and model[0].weight.grad.abs().sum() > 0
    pos = model[0].topo_positions.clone()
    info = topo.optimize_positions(x, windows=2, swaps=20)["0"]
    assert info["scope"] == "windows" and 250 < info["window_units"] < 800 and info["accepted"] > 0
    new = model[0].topo_positions
    assert torch.equal(torch.sort(new.view(-1)).values, torch.sort(pos.view(-1)).values)  # a permutation
    moved = (new != pos).any(1)
    assert 0 < moved.sum() <= 80  # two windows of 20 swaps
    assert ((new - pos).abs().amax(1) <= 2 * sheet.radius + 1e-4).all()  # every swap inside one window


@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_window_swaps_lower_the_window_loss_and_keep_a_permutation(kind):
    lay = retinotopic(16, 8, 8, seed=0)
    g = torch.Generator().manual_seed(0)
    c = lay.unit_coords.float()
    # responses that follow a smooth latent map of the sheet, positions shuffled among units
    latent = torch.stack([torch.exp(-((c - p) ** 2).sum(1) / 200) for p in torch.rand(6, 2, generator=g) * 32])
    X = torch.randn(300, 6, generator=g) @ latent + 0.1 * torch.randn(300, lay.n, generator=g)
    shuffled = lay.random_permutation(torch.Generator().manual_seed(1))
    new, info = swap_optimize_windows(X, shuffled, windows=60, swaps_per_window=60, radius=4.0, kind=kind, seed=2)
    assert info["window_loss_after"] < info["window_loss_before"] and info["accepted"] > 0
    assert sorted(map(tuple, new.coords.tolist())) == sorted(map(tuple, shuffled.coords.tolist()))
    if kind == "absolute":  # |r − D| can rise on pairs leaving a window; only the windows' own loss must fall
        return
    assert info["loss_after"] < info["loss_before"]
    # the whole sheet's loss falls too (computed exactly here, where the sheet is small)
    r = correlation_matrix(X.double())
    full = lambda lay: float(pair_loss(r, inverse_distance(lay).double(), kind))
    assert full(new) < full(shuffled)
