"""seRNN: the communicability-weighted cost against SciPy's expm (value) and gradcheck (gradient through the matrix
exponential); small-worldness on graphs whose value is known; the batched networks equal separate ones; the
recipe writes its curves."""
import networkx as nx
import numpy as np
import pytest
import torch
from scipy.linalg import expm
from scipy.spatial.distance import cdist

from topotorch import metrics as M
from topotorch.costs.communicability import communicability_cost, grid3d


def test_cost_equals_scipy_expm_and_passes_gradcheck():
    torch.manual_seed(0)
    W = torch.randn(3, 12, 12, dtype=torch.float64)
    P = grid3d((3, 2, 2))
    got = communicability_cost(W, P, comms_factor=1.5)
    for k in range(3):
        A = np.abs(W[k].numpy())
        S = np.diag(A.sum(1) ** -0.5)
        C = expm(S @ A @ S)
        np.fill_diagonal(C, 0.0)
        assert got[k].item() == pytest.approx((A * C ** 1.5 * cdist(P.numpy(), P.numpy())).sum(), rel=1e-10)
    assert torch.autograd.gradcheck(lambda w: communicability_cost(w, P), (W[:1].clone().requires_grad_(True),))


def test_cost_errors_name_the_problem():
    with pytest.raises(ValueError, match="square"):
        communicability_cost(torch.zeros(4, 5), grid3d((2, 2, 1)))
    with pytest.raises(ValueError, match="do not hold"):
        communicability_cost(torch.zeros(5, 5), grid3d((2, 2, 1)))


def test_small_worldness_on_graphs_with_known_values():
    ring = nx.to_numpy_array(nx.watts_strogatz_graph(100, 6, 0.0, seed=0)) > 0
    r = M.small_worldness(ring)
    assert r["clustering"] == pytest.approx(3 * (6 - 2) / (4 * (6 - 1)))  # a ring lattice: 3(k−2)/(4(k−1))
    assert r["path_length"] == pytest.approx(nx.average_shortest_path_length(nx.watts_strogatz_graph(100, 6, 0.0)))
    rnd = nx.to_numpy_array(nx.gnm_random_graph(100, 300, seed=5)) > 0
    assert abs(M.small_worldness(rnd, seed=100)["sigma"] - 1) < 0.15   # a random graph: σ ≈ 1
    sw = nx.to_numpy_array(nx.watts_strogatz_graph(100, 6, 0.1, seed=0)) > 0
    assert M.small_worldness(sw)["sigma"] > 3  # a small world: clustered, short paths


def test_small_worldness_equals_networkx_to_the_last_bit():
    # scipy's compiled searches replace networkx's Python ones: the same numbers, on connected and split graphs
    rng = np.random.default_rng(0)
    for n, p in ((100, 0.1), (60, 0.03), (40, 0.5), (30, 0.06)):
        A = np.triu(rng.random((n, n)) < p, 1)
        A = A | A.T
        G = nx.from_numpy_array(A.astype(np.int8))
        big = G.subgraph(max(nx.connected_components(G), key=len))
        C, L = M._clustering_and_path_length(A)
        assert C == nx.average_clustering(G)
        assert L == nx.average_shortest_path_length(big)


def test_batched_networks_equal_separate_ones():
    from topotorch.experiments.sernn import BatchedRNN, maze_task
    x, y = maze_task(3, 2, 3)
    both = BatchedRNN(2, 8, 10, 4, [3, 4])
    one = BatchedRNN(1, 8, 10, 4, [4])
    assert torch.equal(both.W[1], one.W[0])
    assert torch.allclose(both(x)[1], one(x)[0], atol=1e-6)
    assert x.shape == (8, 8, 8) and sorted(set(y.tolist())) == [0, 1, 2, 3]


@pytest.mark.slow
def test_sernn_recipe_writes_curves_for_both_regularisers(tmp_path):
    from topotorch.recipes import run_recipe
    m = run_recipe("sernn", tmp_path, {"steps": 30, "strengths": [0.01, 0.3], "networks_per_strength": 1}, progress=False)
    assert m["networks"] == 4
    for reg in ("sernn", "l1"):
        for key in ("accuracy", "modularity_q", "small_worldness", "mixed_selectivity", "energy"):
            assert len(m["curves"][reg][key]) == 2
    assert (tmp_path / "curves.png").stat().st_size > 0 and (tmp_path / "networks.json").is_file()


def test_bad_settings_are_refused_before_anything_runs(tmp_path):
    from topotorch.recipes import run_recipe
    for over, msg in (({"strengths": [-0.1]}, "≥ 0"), ({"scale": -1.0}, "≥ 0"), ({"grid": [5, 5]}, "three positive")):
        with pytest.raises(ValueError, match=msg):
            run_recipe("sernn", tmp_path / "r", over, progress=False)
        assert not (tmp_path / "r" / "model.safetensors").exists()
