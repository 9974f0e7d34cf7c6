import numpy as np
import pytest
import torch

from topotorch import layout as L
from topotorch.costs import correlation_matrix
from topotorch.swaps import swap_optimize


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


@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_batched_swaps_keep_the_invariants_and_match_the_sequential_search(kind):
    from topotorch.costs import inverse_distance, pair_loss
    from topotorch.swaps import swap_optimize_batched
    torch.manual_seed(0)
    n, side = 144, 12
    lay = L.grid(side, side, spacing=1.0).random_permutation(torch.Generator().manual_seed(1))
    acts = torch.randn(400, 6) @ torch.randn(6, n) + 0.5 * torch.randn(400, n)
    r = correlation_matrix(acts).double()
    new, info = swap_optimize_batched(r, lay, candidates=6000, radius=2, kind=kind, seed=0, batch=512)
    # positions stay a permutation of the cells
    assert sorted(map(tuple, new.coords.tolist())) == sorted(map(tuple, lay.coords.tolist()))
    # the reported loss is the loss of the returned layout, and it fell
    assert info["loss_after"] == pytest.approx(float(pair_loss(r, inverse_distance(new).double(), kind)), abs=1e-6)
    assert info["loss_after"] < info["loss_before"] and info["accepted"] > 0 and info["tried"] == 6000
    # at equal candidate count, at least as low as the sequential algorithm (two seeds)
    for s in (0, 1):
        _, seq = swap_optimize(r, lay, windows=30, swaps_per_window=100, radius=2, kind=kind, seed=s)
        _, bat = swap_optimize_batched(r, lay, candidates=3000, radius=2, kind=kind, seed=s, batch=256)
        assert bat["loss_after"] <= seq["loss_after"] + 1e-9


def test_one_batched_round_moves_units_only_within_a_window():
    from topotorch.swaps import swap_optimize_batched
    n, side = 100, 10
    lay = L.grid(side, side, spacing=1.0)
    acts = torch.randn(300, n)
    acts[:, ::2] += torch.randn(300, 1) * 3
    new, info = swap_optimize_batched(correlation_matrix(acts), lay, candidates=2000, radius=1, seed=0, batch=2000)
    moved = (new.coords - lay.coords).abs().amax(1)
    assert info["accepted"] > 0 and float(moved.max()) <= 2.0  # both ends of every swap lie in one 3×3 window
