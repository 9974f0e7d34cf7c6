"""The accelerator path of the spatial correlation loss (gather in the activations' dtype, one batched product,
no host synchronisation) against the direct definition in float64, on CPU (forced) and on CUDA when present."""
import numpy as np
import pytest
import torch
from torch import nn

from topotorch import layout as L
from topotorch.costs import SpatialCorrelationLoss
from test_correlation_loss import numpy_loss as direct  # the definition in float64

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def run(device, dtype, mode, kind, mean=0.0, seed=0, batched=True):
    """Loss (float) and input gradients (float64, CPU) of three 8×8 sheets; and the float64 definition."""
    g = torch.Generator().manual_seed(seed)
    S, N, n, k = 3, 300, 64, 4
    lays = [L.grid(8, 8, spacing=1.0).random_permutation(torch.Generator().manual_seed(seed + i)) for i in range(S)]
    mods = [nn.Identity() for _ in range(S)]
    alpha = {f"s{i}": a for i, a in enumerate((1.0, 0.5, 2.0))}
    sl = SpatialCorrelationLoss([(f"s{i}", mods[i], lays[i]) for i in range(S)], alpha=alpha, mode=mode, kind=kind,
                                neighbourhoods=k, radius=2, generator=torch.Generator().manual_seed(seed + 10))
    sl._batched = batched
    Xs = [(torch.randn(N, 5, generator=g) @ torch.randn(5, n, generator=g) + torch.randn(N, n, generator=g) + mean)
          .to(dtype).to(device).requires_grad_() for _ in range(S)]
    Xs[1].data[:, 7] = 1.0  # a dead unit: correlation 0, no NaN
    for m, X in zip(mods, Xs):
        m(X)
    value = sl()
    value.backward()
    picks = torch.randint(sl.sheets[0].windows.shape[0], (S, k), generator=torch.Generator().manual_seed(seed + 10))
    want = 0.0
    for i, (X, s) in enumerate(zip(Xs, sl.sheets)):
        x = X.detach().double().cpu().numpy()
        c = s.layout.unit_coords.double().numpy()
        if mode == "exact":
            want += alpha[s.name] * direct(x, c, kind)
        else:
            wins = s.windows[picks[i]].numpy()
            want += alpha[s.name] * np.mean([direct(x[:, w], c[w], kind) for w in wins])
    return value.item(), [X.grad.double().cpu() for X in Xs], want


TOL = {torch.float32: 2e-5, torch.float64: 1e-7, torch.bfloat16: 1e-3}  # float64: the distance constants are float32


def check(device, dtype, mode, kind, mean=0.0):
    got, grads, want = run(device, dtype, mode, kind, mean)
    assert np.isfinite(got) and all(torch.isfinite(gr).all() for gr in grads)
    assert got == pytest.approx(want, abs=TOL[dtype]), (got, want)
    # gradients against the CPU float32 path (itself checked against autograd in test_correlation_loss)
    _, ref, _ = run("cpu", dtype, mode, kind, mean, batched=False)
    # relative to the norm; |r − D|'s subgradient flips sign for pairs with r ≈ D at bf16's rounding level,
    # which moves a 64-unit sheet's gradient by a few per cent
    tol = 1e-4 if dtype != torch.bfloat16 else 2e-2 if kind == "relative" else 1e-1
    for a, b in zip(grads, ref):
        assert (a - b).norm() <= tol * b.norm()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("mode", ["exact", "sampled"])
@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_batched_path_matches_the_definition_on_cpu(dtype, mode, kind):
    check("cpu", dtype, mode, kind)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["exact", "sampled"])
def test_batched_path_is_accurate_when_means_dwarf_the_spread(dtype, mode):
    """The centring subtracts the mean rounded to bf16; the remainder is corrected for exactly."""
    check("cpu", dtype, mode, "relative", mean=100.0)


def test_group_covariance_gradients_with_overlapping_windows():
    from topotorch.costs.kernels import _GroupCovariance
    g = torch.Generator().manual_seed(0)
    Xs = [(torch.randn(40, 10, generator=g, dtype=torch.float64) + 3).requires_grad_() for _ in range(2)]
    idx = torch.tensor([[[0, 1, 2], [2, 3, 4]], [[5, 5, 6], [9, 8, 7]]])  # a unit in two windows, one twice
    assert torch.autograd.gradcheck(lambda *x: _GroupCovariance.apply(idx, *x), tuple(Xs))
    assert torch.autograd.gradcheck(lambda *x: _GroupCovariance.apply(None, *x), tuple(Xs))
    C = _GroupCovariance.apply(idx, *Xs)
    assert C.shape == (2, 2, 3, 3)
    for s in range(2):
        assert torch.allclose(_GroupCovariance.apply(None, *Xs)[s], torch.cov(Xs[s].T, correction=0))
        for j in range(2):
            w = idx[s, j]
            assert torch.allclose(C[s, j], torch.cov(Xs[s][:, w].T, correction=0))


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["exact", "sampled"])
def test_cuda_path_matches_the_definition(dtype, mode):
    check("cuda", dtype, mode, "relative")
    check("cuda", dtype, "exact", "relative", mean=100.0)


@cuda
def test_cuda_float32_under_tf32_gathers_instead_of_rounding():
    """With TF32 matrix products allowed, float32 windows are gathered by index, not by a one-hot product."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        got, _, want = run("cuda", torch.float32, "sampled", "relative")
    finally:
        torch.set_float32_matmul_precision(old)
    assert got == pytest.approx(want, abs=1e-3)  # the covariance product itself runs in TF32


@cuda
@pytest.mark.parametrize("mode", ["exact", "sampled"])
def test_cuda_step_never_waits_for_the_device(mode):
    """Loss and backward of a bf16 autocast step issue no synchronising call (after the first step)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 256), nn.GELU(), nn.Linear(256, 256)).cuda()
    sl = SpatialCorrelationLoss({model[2]: L.grid(16, 16, spacing=1.0)}, mode=mode, neighbourhoods=5, radius=4)
    x = torch.randn(4096, 32, device="cuda")
    for step in range(3):
        if step == 2:
            torch.cuda.set_sync_debug_mode("error")
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(x)
            loss = out.float().pow(2).mean() + sl()
            loss.backward()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss).item()


@cuda
@pytest.mark.parametrize("order", ["compile-then-attach", "attach-then-compile"])
def test_cuda_compiled_model_with_the_loss_matches_eager(order):
    from topotorch.gpt import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(64, 128, 2, 2, 64)).cuda()
    x = torch.randint(0, 128, (8, 64), device="cuda")
    sheets = {f"blocks.{i}.mlp": L.grid(8, 8, spacing=1.0) for i in range(2)}

    def step(m, sl):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, task = m(x, x)
        return (task + sl()).item()

    sl = SpatialCorrelationLoss(sheets, alpha=1.0, model=model)
    eager = step(model, sl)
    sl.remove()
    if order == "compile-then-attach":
        cm = torch.compile(model)
        cm(x, x)
        sl = SpatialCorrelationLoss(sheets, alpha=1.0, model=cm)
    else:
        sl = SpatialCorrelationLoss(sheets, alpha=1.0, model=model)
        cm = torch.compile(model)
    assert step(cm, sl) == pytest.approx(eager, rel=2e-2)


@cuda
def test_cuda_batched_swaps_keep_the_invariants():
    from topotorch.costs import correlation_matrix
    from topotorch.swaps import swap_optimize_batched
    lay = L.grid(28, 28, spacing=1.0).random_permutation(torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    acts = (torch.randn(512, 8, generator=g) @ torch.randn(8, 784, generator=g)).cuda()
    new, info = swap_optimize_batched(correlation_matrix(acts), lay, candidates=500_000, radius=4)
    assert info["loss_after"] < info["loss_before"]
    old = {tuple(p) for p in lay.coords.tolist()}
    assert {tuple(p) for p in new.coords.tolist()} == old and len(new.coords) == 784
