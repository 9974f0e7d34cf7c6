import numpy as np
import pytest
import torch

from topotorch import layout as L
from topotorch.costs import correlation_matrix
from topotorch.relocate import swap_optimize


def _responses(seed=0, side=10, T=400):
    """Units respond to smooth latent maps, but their positions start shuffled."""
    g = L.grid(side, side, spacing=1.0)
    c = g.unit_coords.float()
    centres = torch.tensor([[2.0, 2.0], [7.0, 2.0], [2.0, 7.0], [7.0, 7.0]])
    w = torch.stack([torch.exp(-((c - p) ** 2).sum(1) / 6) for p in centres])
    torch.manual_seed(seed)
    acts = torch.randn(T, 4) @ w + 0.1 * torch.randn(T, side * side)
    return correlation_matrix(acts), g.random_permutation(torch.Generator().manual_seed(seed))


def _cells(lay):
    return sorted(map(tuple, np.round(lay.coords.numpy(), 9).tolist()))


@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_swaps_lower_the_loss_and_keep_a_permutation_of_the_grid(kind):
    r, lay = _responses()
    new, info = swap_optimize(r, lay, windows=40, swaps_per_window=40, radius=3, kind=kind, seed=1)
    assert info["loss_after"] < info["loss_before"] and info["accepted"] > 0
    assert _cells(new) == _cells(lay)  # still exactly the grid's cells: no duplicates, none lost
    assert len(set(map(tuple, new.coords.tolist()))) == lay.n


def test_only_units_inside_one_window_are_swapped():
    r, lay = _responses(1)
    new, info = swap_optimize(r, lay, windows=1, swaps_per_window=200, radius=2, seed=3)
    moved = np.nonzero((new.coords != lay.coords).any(1).numpy())[0]
    assert len(moved) >= 2
    span = lay.coords[moved].max(0).values - lay.coords[moved].min(0).values
    assert (span <= 4).all()  # every swap happened within one window of width 2·radius + 1


def test_fast_and_naive_searches_accept_the_same_swaps():
    r, lay = _responses(2, side=8)
    fast, fi = swap_optimize(r, lay, windows=10, swaps_per_window=20, radius=2, seed=4)
    slow, si = swap_optimize(r, lay, windows=10, swaps_per_window=20, radius=2, seed=4, naive=True)
    assert torch.equal(fast.coords, slow.coords) and fi["accepted"] == si["accepted"]
    assert fi["loss_after"] == pytest.approx(si["loss_after"], abs=1e-9)
