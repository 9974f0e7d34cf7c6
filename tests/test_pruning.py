"""topotorch.pruning: the pruning steps every BIMT-family recipe shares, against direct computations."""
import pytest
import torch

import topotorch as tt
from topotorch.pruning import Masks, prune_greedy, prune_quantile


def _net(seed=0):
    torch.manual_seed(seed)
    model = tt.MLP([3, 6, 2])
    return model, tt.embed(model)


def test_greedy_pruning_keeps_every_weight_the_budget_needs():
    model, graph = _net()
    x = torch.randn(64, 3)
    with torch.no_grad():
        y = model(x)
    loss = lambda: torch.nn.functional.mse_loss(model(x), y).item()
    before = [w.weight.clone() for w in graph.weights]
    info = prune_greedy(graph, loss, start=0.0, budget=1.0)  # budget 1 × a zero loss: nothing may change the output
    assert info["train_loss_after_prune"] <= 1e-12
    # every weight still there is needed: zeroing any one alone raises the loss (checked directly)
    for w in graph.weights:
        for idx in torch.nonzero(w.weight).tolist():
            old = w.weight.data[tuple(idx)].item()
            w.weight.data[tuple(idx)] = 0.0
            assert loss() > 1e-12
            w.weight.data[tuple(idx)] = old
    removed = sum(int(((b != 0) & (w.weight == 0)).sum()) for b, w in zip(before, graph.weights))
    assert removed == info["pruned_weights"]


def test_quantile_pruning_matches_a_direct_search_and_restores_the_weights():
    model, graph = _net(1)
    x = torch.randn(64, 3)
    with torch.no_grad():
        y = model(x)
    loss = lambda: torch.nn.functional.mse_loss(model(x), y).item() + 0.1
    saved = [w.weight.clone() for w in graph.weights]
    info = prune_quantile(graph, loss, budget=0.5, rounds=12)
    assert all(torch.equal(s, w.weight) for s, w in zip(saved, graph.weights))
    mags = torch.cat([s.abs().flatten() for s in saved]).sort().values
    share = 1 - info["kept_at_budget"]
    cut = mags[min(len(mags) - 1, int(share * len(mags)))]
    with torch.no_grad():
        for w, s in zip(graph.weights, saved):
            w.weight.copy_(s * (s.abs() > cut))
        assert loss() == pytest.approx(info["val_loss_at_budget"]) and loss() <= 1.5 * 0.1 + 1e-9
        for w, s in zip(graph.weights, saved):
            w.weight.copy_(s)
    with pytest.raises(ValueError, match="budget"):
        prune_greedy(graph, loss, 0.0, 0.5)


def test_masks_hold_zeros_through_steps():
    model, graph = _net(2)
    with torch.no_grad():
        model[0].weight[0, :] = 0.0
    masks, opt = Masks(model), torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        model(torch.randn(8, 3)).pow(2).sum().backward()
        masks.before_step(0); opt.step(); masks.after_step(0)
    assert (model[0].weight[0] == 0).all() and (model[0].weight[1] != 0).all()
