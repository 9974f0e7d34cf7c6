import numpy as np
import pytest
import torch
from torch import nn

from topotorch import layout as L
from topotorch.costs import SpatialCorrelationLoss, correlation_matrix, inverse_distance, pair_loss


def numpy_loss(X, coords, kind):
    """The definition, directly: Pearson r between units (0 for a unit without variance), D = 1/(1+d), over
    the lower triangle; float64."""
    X = X - X.mean(0)
    sd = np.sqrt((X ** 2).mean(0))
    Z = np.divide(X, sd, out=np.zeros_like(X), where=sd > 0)
    r = Z.T @ Z / len(X)
    d = np.sqrt(((coords[:, None, :] - coords[None, :, :]) ** 2).sum(-1))
    D = 1 / (1 + d)
    i, j = np.tril_indices(len(coords), -1)
    if kind == "absolute":
        return np.abs(r[i, j] - D[i, j]).mean()
    return 0.5 * (1 - np.corrcoef(r[i, j], D[i, j])[0, 1])


@pytest.mark.parametrize("kind", ["relative", "absolute"])
@pytest.mark.parametrize("seed", range(3))
def test_exact_loss_matches_numpy(kind, seed):
    rng = np.random.default_rng(seed)
    lay = L.grid(6, 7, spacing=1.0).random_permutation(torch.Generator().manual_seed(seed))
    X = rng.normal(size=(200, 42)) + rng.normal(size=(200, 1)) * np.linspace(0, 1, 42)  # some correlation
    mod = nn.Identity()
    sl = SpatialCorrelationLoss({mod: lay}, mode="exact", kind=kind)
    mod(torch.tensor(X, dtype=torch.float32, requires_grad=True))
    assert sl().item() == pytest.approx(numpy_loss(X, lay.unit_coords.numpy(), kind), abs=1e-5)


@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_sampled_loss_matches_numpy_on_the_sampled_windows(kind):
    rng = np.random.default_rng(5)
    lay = L.grid(8, 8, spacing=1.0).random_permutation(torch.Generator().manual_seed(1))
    X = rng.normal(size=(150, 64))
    mod = nn.Identity()
    sl = SpatialCorrelationLoss({mod: lay}, mode="sampled", kind=kind, neighbourhoods=4, radius=2,
                                generator=torch.Generator().manual_seed(7))
    mod(torch.tensor(X, dtype=torch.float32, requires_grad=True))
    got = sl().item()
    wins = sl.sheets[0].sample(4, torch.Generator().manual_seed(7))
    assert wins.shape == (4, 25)  # 5×5 windows of radius 2
    c = lay.unit_coords.numpy()
    for w in wins:  # neighbourhoods are local: every unit within the sup-norm radius of the centre
        span = c[w.numpy()].max(0) - c[w.numpy()].min(0)
        assert (span <= 4).all()
    want = np.mean([numpy_loss(X[:, w.numpy()], c[w.numpy()], kind) for w in wins])
    assert got == pytest.approx(want, abs=1e-5)


def test_zero_variance_units_do_not_produce_nan_and_gradients_flow():
    X = torch.randn(64, 16)
    X[:, 3] = 1.0  # a dead unit
    X.requires_grad_(True)
    r = correlation_matrix(X)
    assert torch.isfinite(r).all() and r[3, 3] == 0
    lay = L.square(16)
    for kind in ("relative", "absolute"):
        loss = pair_loss(r, inverse_distance(lay), kind)
        assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(X.grad).all() and X.grad.abs().sum() > 0


def test_loss_is_low_for_smooth_maps_and_high_for_shuffled():
    lay = L.grid(10, 10, spacing=1.0)
    c = lay.unit_coords.float()
    t = torch.randn(500, 4)
    # Units respond to a spatially smooth mixture of 4 latent signals: nearby units correlate.
    w = torch.stack([torch.exp(-((c - torch.tensor(p)) ** 2).sum(1) / 8) for p in [[2, 2], [7, 2], [2, 7], [7, 7]]])
    X = t @ w + 0.05 * torch.randn(500, 100)
    smooth = pair_loss(correlation_matrix(X), inverse_distance(lay)).item()
    shuffled = pair_loss(correlation_matrix(X[:, torch.randperm(100)]), inverse_distance(lay)).item()
    assert smooth < 0.3 < 0.45 < shuffled


def test_capture_only_with_grad_and_clear_errors():
    mod = nn.Linear(4, 9)
    sl = SpatialCorrelationLoss({mod: L.square(9)})
    with torch.no_grad():
        mod(torch.randn(8, 4))
    with pytest.raises(RuntimeError, match="no activations"):
        sl()
    bad = nn.Linear(4, 5)
    SpatialCorrelationLoss({bad: L.square(9)})
    with pytest.raises(ValueError, match="5 units, layout has 9"):
        bad(torch.randn(3, 4))
    with pytest.raises(ValueError, match="mode"):
        SpatialCorrelationLoss({mod: L.square(9)}, mode="approx")
    sl.remove()
    mod(torch.randn(8, 4))
    assert sl.sheets[0].acts is None


def test_covariance_backward_matches_autograd():
    from topotorch.costs.correlation import covariance
    X = torch.randn(2, 50, 7, dtype=torch.float64) * 3 + 5
    G = torch.randn(2, 7, 7, dtype=torch.float64)
    Xa = X.clone().requires_grad_(True)
    Xc = Xa - Xa.mean(-2, keepdim=True)
    (Xc.transpose(-1, -2) @ Xc / 50 * G).sum().backward()
    Xb = X.clone().float().requires_grad_(True)
    (covariance(Xb) * G.float()).sum().backward()
    assert torch.allclose(Xb.grad.double(), Xa.grad, atol=1e-4)
    from topotorch.costs.kernels import _Covariance
    assert torch.autograd.gradcheck(_Covariance.apply, (X[:, :8, :3].clone().requires_grad_(True),))


@pytest.mark.parametrize("mean", [0.0, 3.0, 1e4])
def test_cpu_covariance_without_a_centred_copy_is_accurate_even_for_large_means(mean):
    """The CPU path computes XᵀX/N − μμᵀ; a unit whose mean dwarfs its spread must fall back to centring."""
    from topotorch.costs.correlation import covariance
    g = torch.Generator().manual_seed(0)
    X64 = torch.randn(500, 12, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2, 12, dtype=torch.float64) + mean
    X64[:, 5] = mean + 1.0  # constant unit: exactly zero variance, correlation 0
    X64 = X64.float().double()  # compare on the float32 inputs: their rounding is not the method's error
    want = np.cov(X64.numpy().T, bias=True)
    got = covariance(X64.float()).double().numpy()
    scale = np.sqrt(np.outer(np.diag(want), np.diag(want))).max()
    assert np.abs(got - want).max() <= 1e-5 * scale
    r = correlation_matrix(X64.float())
    assert r[5].abs().max() == 0 and torch.isfinite(r).all()
    X = X64.float().requires_grad_(True)
    G = torch.randn(12, 12, generator=g)
    (covariance(X) * G).sum().backward()
    Xr = X64.clone().requires_grad_(True)
    Xc = Xr - Xr.mean(0)
    (Xc.T @ Xc / 500 * G.double()).sum().backward()
    # Float32 centring itself rounds the mean to the inputs' ulp (1e-3 at 1e4): tolerance scales with it.
    assert torch.allclose(X.grad.double(), Xr.grad, atol=1e-5 * max(1.0, mean / 10))


@pytest.mark.parametrize("N, n", [(40, 30), (700, 800)])
def test_window_covariance_matches_autograd_and_survives_two_forwards_before_backward(N, n):
    """A second forward before the first backward must not corrupt what the first saved for its backward.

    (40, 30): small sheets gathered together; (700, 800): one sheet at a time, sheet 0's windows overlapping
    (computed from the covariance of their union), sheet 1's spread out (one batched product over windows).
    """
    from topotorch.costs.kernels import _WindowCovariance
    g = torch.Generator().manual_seed(1)
    idx = torch.stack([torch.stack([torch.randperm(8 if s == 0 else n, generator=g)[:6] for _ in range(4)])
                       for s in range(2)])
    Xs = [torch.randn(N, n, generator=g, dtype=torch.float64).requires_grad_(True) for _ in range(2)]
    G = torch.randn(8, 6, 6, generator=g, dtype=torch.float64)

    def reference(Xs):
        out = []
        for s, X in enumerate(Xs):
            for j in range(4):
                A = X[:, idx[s, j]] - X[:, idx[s, j]].mean(0)
                out.append(A.T @ A / N)
        return torch.stack(out)

    want = torch.autograd.grad((reference(Xs) * G).sum(), Xs)
    first = _WindowCovariance.apply(idx, *Xs)
    second = _WindowCovariance.apply(idx, *[X * 2 for X in Xs])
    assert torch.allclose(first, reference(Xs)) and torch.allclose(second, 4 * reference(Xs))
    got = torch.autograd.grad((first * G).sum(), Xs)
    assert all(torch.allclose(a, b) for a, b in zip(got, want))
    if N * n < 10_000:
        assert torch.autograd.gradcheck(lambda *xs: _WindowCovariance.apply(idx, *xs), tuple(Xs))
