import pytest
import torch
from torch import nn

from topotorch.costs import WeightSmoothness, sheet_shape, weight_smoothness


def test_sheet_shape_like_topoloss():
    assert sheet_shape(64) == (8, 8) and sheet_shape(48) == (6, 8) and sheet_shape(13) == (1, 13)
    assert sheet_shape(3072) == (48, 64)


def test_constant_sheet_has_zero_loss_and_noise_does_not():
    w = torch.ones(64, 5)
    assert weight_smoothness(w, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    torch.manual_seed(0)
    assert weight_smoothness(torch.randn(64, 5), 2.0).item() > 0.3


def test_smoothness_gradient_lowers_the_loss():
    torch.manual_seed(1)
    lin = nn.Linear(20, 36)
    ws = WeightSmoothness([lin], factor=3.0)
    before = ws().item()
    opt = torch.optim.SGD(lin.parameters(), lr=1.0)
    for _ in range(20):
        opt.zero_grad(); ws().backward(); opt.step()
    assert ws().item() < before


def test_matches_the_topoloss_package_when_installed():
    topoloss = pytest.importorskip("topoloss")
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(30, 48), nn.Conv2d(4, 36, 3))
    specs = [(model[0], 2.0, 4.0, 1.0), (model[1], 3.0, 3.0, 0.5)]
    ref = topoloss.TopoLoss(losses=[topoloss.LaplacianPyramid.from_layer(model, m, factor_h=fh, factor_w=fw, scale=s)
                                    for m, fh, fw, s in specs]).compute(model)
    assert WeightSmoothness(specs)().item() == pytest.approx(ref.item(), abs=1e-6)


def test_bad_factors():
    with pytest.raises(ValueError, match="exceeds"):
        WeightSmoothness([(nn.Linear(3, 16), 8.0, 8.0, 1.0)])
    with pytest.raises(ValueError, match="no weight"):
        WeightSmoothness([nn.ReLU()])
