import numpy as np
import pytest
import torch
from torch import nn

import topotorch as tt
from topotorch import metrics as M


def _two_module_model():
    """4 → 4 → 2 with x0,x2 → h0,h1 → y0 and x1,x3 → h2,h3 → y1 (block structure)."""
    model = nn.Sequential(nn.Linear(4, 4), nn.SiLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0, 1, 0], [0.5, 0, -1, 0], [0, 1, 0, 1], [0, 2, 0, 0.001]]))
        model[0].bias.zero_()
        model[2].weight.copy_(torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, -1]]))
        model[2].bias.zero_()
    return model, tt.embed(model)


def test_threshold_counts_and_reverts():
    model, g = _two_module_model()
    before = [p.clone() for p in model.parameters()]
    snap = M.threshold(model, 0.01)
    assert snap.total == 16 + 4 + 8 + 2
    assert snap.kept == 7 + 4  # the 0.001 weight and all zeros are dropped
    assert model[0].weight[3, 3] == 0
    snap.revert()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError):
        M.threshold(model, -1)


def test_dependencies_and_modules_follow_permutations():
    model, g = _two_module_model()
    assert M.dependencies(g, 0.01) == [[0, 2], [1, 3]]
    assert M.modules(g, 0.01) == [{"inputs": [0, 2], "outputs": [0]}, {"inputs": [1, 3], "outputs": [1]}]
    assert M.dependencies(g, 0.0) == [[0, 2], [1, 3]]
    g.permute(0, torch.tensor([3, 1, 0, 2]))
    g.permute(2, torch.tensor([1, 0]))
    assert M.dependencies(g, 0.01) == [[0, 2], [1, 3]]
    assert M.modules(g, 0.01) == [{"inputs": [0, 2], "outputs": [0]}, {"inputs": [1, 3], "outputs": [1]}]


def test_module_extents_and_overlap():
    model, g = _two_module_model()
    ext = M.module_extents(g, 0.01)
    assert ext[0][1] == [0.125, 0.375] and ext[1][1] == [0.625, 0.875]
    assert ext[0][0] == [0.125, 0.625]  # inputs x0, x2 interleave with x1, x3
    assert M.extents_overlap(ext)
    g.permute(0, torch.tensor([0, 2, 1, 3]))  # x0, x2 to the left half
    ext = M.module_extents(g, 0.01)
    assert ext[0][0] == [0.125, 0.375]
    assert not M.extents_overlap(ext)
    g.permute(1, torch.tensor([0, 2, 1, 3]))  # interleave the hidden units
    assert M.extents_overlap(M.module_extents(g, 0.01))


def test_modularity_q_matches_hand_value():
    # Two disjoint edges of weight 1: Q = Σ_c [L_c/m − (d_c/2m)²] = 2·(1/2 − 1/4) = 0.5.
    A = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=float)
    assert M.modularity_q(A, np.array([0, 0, 1, 1])) == pytest.approx(0.5)
    assert M.modularity_q(A, np.array([0, 0, 0, 0])) == pytest.approx(0.0)
    # Two triangles joined by one edge, split at the bridge: Q = 5/14.
    T = np.zeros((6, 6))
    for i, j in [(0, 1), (1, 2), (0, 2), (3, 4), (4, 5), (3, 5), (2, 3)]:
        T[i, j] = T[j, i] = 1
    assert M.modularity_q(T, np.array([0, 0, 0, 1, 1, 1])) == pytest.approx(5 / 14)


def test_modularity_of_graph_finds_the_split():
    model, g = _two_module_model()
    q, labels = M.modularity(g, 0.01)
    assert q > 0.4
    with torch.no_grad():  # bridge the modules: a single component, still split by the eigenvector step
        model[2].weight[0, 2] = 0.05
    q2, _ = M.modularity(g, 0.01)
    assert 0.3 < q2 < q


def test_wiring_length_hand_value():
    model = nn.Sequential(nn.Linear(1, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0], [0.0]]))
    g = tt.embed(model)
    # input at 0.5, outputs at 0.25 and 0.75; one kept connection of length sqrt(0.25² + 0.1²).
    assert M.wiring_length(g, 0.0, gap=0.1) == pytest.approx((0.25 ** 2 + 0.01) ** 0.5)


def test_louvain_partition_scores_at_least_the_eigenvector_one_and_matches_networkx():
    import networkx as nx
    torch.manual_seed(3)
    model = tt.MLP([6, 12, 12, 4])
    g = tt.embed(model)
    with torch.no_grad():
        for lin in (model[0], model[2], model[4]):
            lin.weight.mul_(torch.rand_like(lin.weight) < 0.35)
    q_l, lab = M.modularity(g, 1e-3, "louvain", seed=0)
    q_e, _ = M.modularity(g, 1e-3, "eigenvector")
    assert q_l >= q_e - 1e-9
    A, _ = M._adjacency(g, 1e-3)
    A = A.toarray()
    act = A.sum(1) > 0
    comms = [set(np.nonzero(lab[act] == c)[0]) for c in np.unique(lab[act])]
    assert q_l == pytest.approx(nx.community.modularity(nx.from_numpy_array(A[np.ix_(act, act)]), comms, weight="weight"))
