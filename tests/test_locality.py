import gzip
import math

import numpy as np
import pytest
import torch

from conftest import SHARED
from topotorch import layout as L
from topotorch.costs import LocalityLinear, apply_locality_prior, prior_matrix
from topotorch.data import mnist, read_idx
from topotorch.metrics import spatial_variance
from topotorch.models import LeNet

G = L.square(4)  # 2×2 grid in cells: (0,0) (1,0) (0,1) (1,1)


def test_prior_matches_hand_values_on_2x2_grid():
    r2 = math.sqrt(2)
    P = prior_matrix(G, G, "inverse")
    assert torch.allclose(P[0], torch.tensor([1, 1 / 2, 1 / 2, 1 / (1 + r2)], dtype=torch.float64))
    assert torch.allclose(P, P.T)
    Ps = prior_matrix(G, G, "inverse-sqrt")
    assert torch.allclose(Ps[0], torch.tensor([1, 2 ** -0.5, 2 ** -0.5, (1 + r2) ** -0.5], dtype=torch.float64))
    Pq = prior_matrix(G, G, "inverse-square")
    assert torch.allclose(Pq[3], torch.tensor([(1 + r2) ** -2, 1 / 4, 1 / 4, 1], dtype=torch.float64))
    Pl = prior_matrix(G, G, "linear", radius=2.0)
    assert torch.allclose(Pl[1], torch.tensor([0.5, 1, 1 - r2 / 2, 0.5], dtype=torch.float64))
    Pn = prior_matrix(G, G, "inverse", normalize=True)
    assert torch.allclose(Pn.mean(1), torch.ones(4, dtype=torch.float64))
    Pc = prior_matrix(G, G, lambda d: torch.exp(-d))
    assert Pc[0, 3].item() == pytest.approx(math.exp(-r2))


def test_lp_layer_computes_masked_linear_and_control_is_plain():
    torch.manual_seed(0)
    inp, outp = L.square(4), L.grid(1, 3, spacing=1.0)  # different input and output layouts
    lp = LocalityLinear(inp, outp, "inverse")
    W = lp.parametrizations.weight.original
    P = prior_matrix(outp, inp).float()
    x = torch.randn(5, 4)
    assert torch.allclose(lp(x), x @ (W * P).T + lp.bias, atol=1e-6)
    ctrl = LocalityLinear(inp, outp, prior=False)
    assert torch.allclose(ctrl.weight, ctrl.parametrizations.weight.original)
    assert set(lp.state_dict()) == set(ctrl.state_dict())  # identical arms up to P
    x.requires_grad_(True)
    lp(x).sum().backward()
    assert torch.allclose(W.grad, (torch.ones(5, 3).T @ x.detach()) * P, atol=1e-5)


def test_lp_bad_inputs():
    with pytest.raises(ValueError, match="non-square"):
        L.square(48)
    with pytest.raises(ValueError, match="do not match"):
        apply_locality_prior(torch.nn.Linear(4, 5), G, G)
    with pytest.raises(ValueError, match="radius"):
        prior_matrix(G, G, "linear")
    with pytest.raises(ValueError, match="unknown decay"):
        prior_matrix(G, G, "gaussian")
    with pytest.raises(ValueError, match="divisible by 4"):
        LeNet(image_size=10)


def test_spatial_variance_matches_hand_computation():
    c = G.unit_coords
    # Mass 0.5 on (0,0) and (1,0): μ = (0.5, 0); Σ a‖c−μ‖² = 0.25; 1 − Σa² = 0.5 → V = 0.5.
    assert spatial_variance(torch.tensor([1.0, 1.0, 0, 0]), c).item() == pytest.approx(0.5)
    # Uniform on the 2×2 grid: Σ a‖c−μ‖² = 0.5, 1 − Σa² = 0.75 → V = 2/3.
    a = torch.tensor([[2.0, 2, 2, 2], [3.0, 1, 0, 0]])
    v = spatial_variance(a, c)
    assert v[0].item() == pytest.approx(2 / 3)
    # (0.75, 0.25, 0, 0): μ = (0.25, 0); Σ = .75·.0625 + .25·.5625 = .1875; 1 − (.5625 + .0625) = .375 → 0.5.
    assert v[1].item() == pytest.approx(0.5)
    assert torch.isnan(spatial_variance(torch.zeros(4), c))
    with pytest.raises(ValueError, match="non-negative"):
        spatial_variance(torch.tensor([1.0, -1, 0, 0]), c)
    with pytest.raises(ValueError, match="do not fit"):
        spatial_variance(torch.ones(5), c)


def test_read_idx_plain_gz_and_corrupt(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = b"\x00\x00\x08\x03" + b"".join(int(s).to_bytes(4, "big") for s in arr.shape) + arr.tobytes()
    (tmp_path / "a").write_bytes(raw)
    (tmp_path / "a.gz").write_bytes(gzip.compress(raw))
    assert np.array_equal(read_idx(tmp_path / "a"), arr)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr)
    (tmp_path / "b").write_bytes(raw[:-3])
    with pytest.raises(ValueError, match="IDX header"):
        read_idx(tmp_path / "b")
    (tmp_path / "c").write_bytes(b"hello world!")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "c")
    with pytest.raises(FileNotFoundError):
        mnist(tmp_path / "empty", download=False)


@pytest.mark.skipif(not (SHARED / "data" / "mnist-t10k").is_dir(), reason="shared MNIST test set not present")
def test_real_mnist_test_set_loads_and_splits():
    d = mnist(SHARED / "data" / "mnist-t10k", download=False)
    assert d.x_train.shape == (8000, 1, 28, 28) and d.x_test.shape == (2000, 1, 28, 28)
    assert 0.0 <= d.x_train.min() and d.x_train.max() == 1.0
    assert sorted(set(d.y_test.tolist())) == list(range(10))


def test_prior_strength_spans_the_seed_decays_and_zero_is_the_control():
    g = L.grid(4)
    d = torch.cdist(g.unit_coords, g.unit_coords)
    assert torch.equal(prior_matrix(g, g, strength=0.0), torch.ones(16, 16, dtype=torch.float64))
    assert torch.allclose(prior_matrix(g, g, strength=0.5), prior_matrix(g, g, "inverse-sqrt"))
    assert torch.allclose(prior_matrix(g, g, strength=2.0), 1 / (1 + d) ** 2)
    with pytest.raises(ValueError, match="strength"):
        prior_matrix(g, g, strength=-1.0)
    torch.manual_seed(0)
    a = LeNet(8, side=4, strength=0.0)
    torch.manual_seed(0)
    b = LeNet(8, side=4, prior=False)
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(a(x), b(x))   # strength 0: the same network as the control arm
